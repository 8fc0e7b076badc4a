//! systemd's service notification protocol (sd_notify(3)): READY, RELOADING, STOPPING, STATUS,
//! WATCHDOG and EXTEND_TIMEOUT messages as datagrams on `$NOTIFY_SOCKET` (a path, or an abstract
//! name written with a leading `@`). Without the variable every call is a no-op, so the daemon
//! runs the same outside systemd.
//!
//! The messages are the `sd-notify` crate's [`NotifyState`]s. Its sender is not used: it opens
//! a blocking socket per message (a full queue would stall the event loop that feeds the
//! watchdog), takes `@name` for a file path, and reads the environment at every call. So this
//! module keeps the socket: opened once from the variables, non-blocking, abstract names
//! understood; and it checks `WATCHDOG_USEC` rather than ignoring a value it cannot read.
//!
//! This module only sends messages. The daemon decides when: READY once the swarm is up and the
//! hypervisor answered, WATCHDOG from its own event loop (never from a separate timer task, or a
//! stuck loop would still look alive), STOPPING when SIGTERM arrives.

pub use sd_notify::NotifyState;
use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "NOTIFY_SOCKET={value:?}: neither an absolute path nor an abstract socket name (@name)"
    )]
    NotASocket { value: String },
    #[error("NOTIFY_SOCKET={value:?}: {source}")]
    Socket {
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds")]
    Watchdog(String),
    #[error("reading the monotonic clock for RELOADING: {0}")]
    Clock(#[source] io::Error),
    #[error("sending {what:?} to the systemd notify socket {socket}: {source}")]
    Send {
        what: String,
        socket: String,
        #[source]
        source: io::Error,
    },
}

/// The connection to the service manager, or nothing when not run by systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    shown: String,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::from_vars(
            socket.as_deref(),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    /// Builds a notifier from the variables' values (`None` = unset) and this process's id.
    pub fn from_vars(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Result<Notifier, NotifyError> {
        let target = match notify_socket {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) => Some(Target::open(v)?),
        };
        // The watchdog belongs to the process systemd named, not to a child that inherited it.
        let ours = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(own_pid));
        let watchdog = match watchdog_usec {
            Some(u) if ours => match u.trim().parse::<u64>() {
                Ok(n) if n > 0 => Some(Duration::from_micros(n)),
                _ => return Err(NotifyError::Watchdog(u.to_string())),
            },
            _ => None,
        };
        Ok(Notifier { target, watchdog })
    }

    /// Whether a service manager is listening.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send [`NotifyState::Watchdog`]: half the watchdog timeout, as
    /// sd_watchdog_enabled(3) advises; `None` when no watchdog is set for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
            .filter(|_| self.target.is_some())
            .map(|t| t / 2)
    }

    /// Sends one message with every state given, one assignment per line.
    pub fn notify(&self, states: &[NotifyState]) -> Result<(), NotifyError> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        // A newline inside a value (a multi-line status) would start a new assignment.
        let msg = states
            .iter()
            .map(|s| s.to_string().replace(['\n', '\r'], " "))
            .collect::<Vec<_>>()
            .join("\n");
        t.socket
            .send_to_addr(msg.as_bytes(), &t.addr)
            .map(|_| ())
            .map_err(|source| NotifyError::Send {
                what: msg,
                socket: t.shown.clone(),
                source,
            })
    }

    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&[NotifyState::Ready, NotifyState::Status(status)])
    }

    /// RELOADING with the monotonic time systemd ≥ 253 wants (`Type=notify-reload`).
    pub fn reloading(&self) -> Result<(), NotifyError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let now = NotifyState::monotonic_usec_now().map_err(NotifyError::Clock)?;
        self.notify(&[NotifyState::Reloading, now])
    }

    pub fn stopping(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&[NotifyState::Stopping, NotifyState::Status(status)])
    }

    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify(&[NotifyState::Watchdog])
    }

    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&[NotifyState::Status(status)])
    }
}

impl Target {
    fn open(value: &OsStr) -> Result<Target, NotifyError> {
        let shown = value.to_string_lossy().into_owned();
        let bad = |source: io::Error| NotifyError::Socket {
            value: shown.clone(),
            source,
        };
        let bytes = value.as_bytes();
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(value)).map_err(bad)?,
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(bad)?,
            _ => return Err(NotifyError::NotASocket { value: shown }),
        };
        let socket = UnixDatagram::unbound().map_err(bad)?;
        // A full socket queue must not stall the daemon's event loop: the message is dropped
        // and reported instead.
        socket.set_nonblocking(true).map_err(bad)?;
        Ok(Target {
            socket,
            addr,
            shown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    /// A fake service manager: the receiving end of a notify socket.
    struct Manager {
        socket: UnixDatagram,
        env: OsString,
        _dir: Option<tempfile::TempDir>,
    }

    impl Manager {
        fn at_path() -> Manager {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            Manager {
                socket,
                env: path.into_os_string(),
                _dir: Some(dir),
            }
        }

        fn abstract_name() -> Manager {
            let name = format!(
                "scored-test-notify-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            );
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let socket = UnixDatagram::bind_addr(&addr).unwrap();
            Manager {
                socket,
                env: OsString::from(format!("@{name}")),
                _dir: None,
            }
        }

        fn recv(&self) -> String {
            self.socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).expect("a notify message");
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    #[test]
    fn without_notify_socket_nothing_is_sent() {
        let n = Notifier::from_vars(None, Some("30000000"), None, 1).unwrap();
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready("up").unwrap();
        n.watchdog().unwrap();
        n.stopping("bye").unwrap();
        assert!(!Notifier::disabled().is_enabled());
        assert!(
            !Notifier::from_vars(Some(OsStr::new("")), None, None, 1)
                .unwrap()
                .is_enabled()
        );
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let m = Manager::at_path();
        let n = Notifier::from_vars(Some(&m.env), None, None, 1).unwrap();
        assert!(n.is_enabled());
        n.ready("token ring of 8 hosts\nup").unwrap();
        assert_eq!(m.recv(), "READY=1\nSTATUS=token ring of 8 hosts up");
        n.watchdog().unwrap();
        assert_eq!(m.recv(), "WATCHDOG=1");
        n.notify(&[NotifyState::ExtendTimeoutUsec(90_000_000)])
            .unwrap();
        assert_eq!(m.recv(), "EXTEND_TIMEOUT_USEC=90000000");
        n.stopping("handing the token on").unwrap();
        assert_eq!(m.recv(), "STOPPING=1\nSTATUS=handing the token on");
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        let m = Manager::abstract_name();
        let n = Notifier::from_vars(Some(&m.env), None, None, 1).unwrap();
        n.reloading().unwrap();
        let msg = m.recv();
        let mut lines = msg.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .expect("MONOTONIC_USEC");
        assert!(usec > 0);
        n.ready("reloaded").unwrap();
        assert_eq!(m.recv(), "READY=1\nSTATUS=reloaded");
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process_only() {
        let m = Manager::at_path();
        let n = Notifier::from_vars(Some(&m.env), Some("20000000"), None, 7).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(10)));
        let n = Notifier::from_vars(Some(&m.env), Some("20000000"), Some("7"), 7).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(10)));
        let n = Notifier::from_vars(Some(&m.env), Some("20000000"), Some("8"), 7).unwrap();
        assert_eq!(n.watchdog_interval(), None);
        assert!(matches!(
            Notifier::from_vars(Some(&m.env), Some("soon"), None, 7),
            Err(NotifyError::Watchdog(_))
        ));
        assert!(Notifier::from_vars(Some(&m.env), Some("0"), None, 7).is_err());
    }

    #[test]
    fn bad_sockets_are_reported() {
        let e = Notifier::from_vars(Some(OsStr::new("relative/sock")), None, None, 1).unwrap_err();
        assert!(e.to_string().contains("relative/sock"), "{e}");
        // Nobody listens there: sending fails and names the socket.
        let n = Notifier::from_vars(
            Some(OsStr::new("/nonexistent/scored-notify")),
            None,
            None,
            1,
        )
        .unwrap();
        let e = n.ready("x").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/scored-notify"), "{e}");
    }

    /// The real environment path: this test re-runs itself as a child process with
    /// NOTIFY_SOCKET and WATCHDOG_* set, as systemd would start the daemon.
    #[test]
    fn from_env_in_a_child_process() {
        if std::env::var_os("SCORED_NOTIFY_CHILD").is_some() {
            let n = Notifier::from_env().unwrap();
            let interval = n.watchdog_interval().unwrap();
            n.ready(&format!("watchdog every {}ms", interval.as_millis()))
                .unwrap();
            n.watchdog().unwrap();
            n.stopping("done").unwrap();
            return;
        }
        let m = Manager::abstract_name();
        let exe = std::env::current_exe().unwrap();
        struct Reaped(std::process::Child);
        impl Drop for Reaped {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = std::process::Command::new(exe)
            .args([
                "--exact",
                "notify::tests::from_env_in_a_child_process",
                "--test-threads=1",
            ])
            .env("SCORED_NOTIFY_CHILD", "1")
            .env("NOTIFY_SOCKET", &m.env)
            .env("WATCHDOG_USEC", "3000000")
            .env_remove("WATCHDOG_PID")
            .stdout(std::process::Stdio::null())
            .spawn()
            .map(Reaped)
            .unwrap();
        let first = m.recv();
        let second = m.recv();
        let third = m.recv();
        let status = child.0.wait().unwrap();
        assert!(status.success());
        assert_eq!(first, "READY=1\nSTATUS=watchdog every 1500ms");
        assert_eq!(second, "WATCHDOG=1");
        assert_eq!(third, "STOPPING=1\nSTATUS=done");
    }
}
