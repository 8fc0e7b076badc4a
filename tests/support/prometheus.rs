//! A real Prometheus server for tests: listens on 127.0.0.1 only, keeps its data in a temporary
//! directory, scrapes one target every second, and is killed when the guard is dropped.

#![allow(dead_code)]

use super::host::free_port;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any single wait (start, a series reaching a value) may take.
const WAIT: Duration = Duration::from_secs(60);

pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` as job `job`; `None` never: a missing binary fails
    /// the test (scripts/install-deps.sh installs it).
    pub async fn start(target: SocketAddr, job: &str) -> Option<Prometheus> {
        Self::start_many(&[target], job).await
    }

    /// Starts Prometheus scraping every one of `targets` as job `job`.
    pub async fn start_many(targets: &[SocketAddr], job: &str) -> Option<Prometheus> {
        let target = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let bin = which("prometheus").unwrap_or_else(|| {
            panic!("the `prometheus` binary is not installed: run scripts/install-deps.sh")
        });
        // The port is free when chosen but could be taken before Prometheus binds it: retry.
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let config = format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{target}]\n"
            );
            std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let child = Command::new(&bin)
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start prometheus");
            let mut p = Prometheus { child, addr, dir };
            if p.wait_ready().await {
                return Some(p);
            }
            last_log = p.log();
        }
        panic!("prometheus did not become ready:\n{last_log}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Some((200, _)) = get(self.addr, "/-/ready").await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// The values of an instant query (one per series).
    pub async fn query(&self, promql: &str) -> Result<Vec<f64>, String> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = get(self.addr, &path)
            .await
            .ok_or("no answer from prometheus")?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        let result = v["data"]["result"].as_array().ok_or(body.clone())?;
        result
            .iter()
            .map(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| format!("no value in {s}"))
            })
            .collect()
    }

    /// Polls `promql` until it returns exactly one series whose value satisfies `ok`.
    pub async fn wait_for(&self, promql: &str, ok: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = Err(String::new());
        while tokio::time::Instant::now() < deadline {
            last = self.query(promql).await;
            if let Ok(v) = &last
                && v.len() == 1
                && ok(v[0])
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "`{promql}` never reached the expected value; last answer {last:?}\nprometheus log:\n{}",
            self.log()
        );
    }

    /// The raw metadata API answer for one metric family.
    pub async fn metadata(&self, family: &str) -> String {
        let path = format!("/api/v1/metadata?metric={}", encode(family));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((200, body)) = get(self.addr, &path).await
                && body.contains("\"type\"")
            {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no metadata for {family}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET: (status, body), `None` when the server is not answering.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}
