//! `scored topology check` on the shipped examples and on broken files: every broken file in
//! tests/topology/bad/ names the position and message it must produce on its first line
//! (`# expect: LINE:COL: text`), and the real binary must print exactly that, exit non-zero, and
//! never panic.

use proptest::prelude::*;
use scored::topology::Topology;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scored() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scored"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_examples_pass() {
    let dir = root().join("topology");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "expected the three shipped examples, found {files:?}"
    );
    let out = scored()
        .arg("topology")
        .arg("check")
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hosts     2560 in 128 racks"), "{stdout}");
    assert!(stdout.contains("hosts     4 in 3 racks"), "{stdout}");
    assert_eq!(stdout.matches(": ok").count(), files.len());
}

#[test]
fn broken_files_give_their_position_and_message() {
    let dir = root().join("tests/topology/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "at least ten broken files, found {}",
        files.len()
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| {
                panic!(
                    "{}: first line must be `# expect: LINE:COL: text`",
                    f.display()
                )
            })
            .trim();
        let out = scored()
            .arg("topology")
            .arg("check")
            .arg(&f)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", f.display());
        assert!(!stderr.contains("panicked"), "{}: {stderr}", f.display());
        // `LINE:COL: text`: the position exactly, the text as part of the message.
        let mut parts = expect.splitn(3, ':');
        let (line, col, text) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap().trim(),
        );
        let at = format!("{}:{line}:{col}: ", f.display());
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&at) && l.contains(text)),
            "{}:\n  want a line starting with `{at}` containing `{text}`\n  got: {stderr}",
            f.display()
        );
    }
}

#[test]
fn missing_file_is_reported_not_panicked() {
    let out = scored()
        .args(["topology", "check", "/nonexistent/topo.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("/nonexistent/topo.toml: cannot read file"),
        "{stderr}"
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = scored().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

#[test]
fn keygen_prints_a_peer_id_the_topology_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("host.key");
    let out = scored()
        .arg("keygen")
        .arg("--out")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let peer = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let text = format!(
        "[levels]\nweights = [1]\n[[host]]\nname = \"a\"\npath = [\"tor\"]\naddress = \"127.0.0.1\"\npeer_id = \"{peer}\"\n"
    );
    let t = Topology::parse(Path::new("k.toml"), &text).unwrap();
    assert_eq!(t.hosts()[0].peer_id.unwrap().to_string(), peer);
    // A second keygen without --force refuses to replace the key.
    let again = scored()
        .arg("keygen")
        .arg("--out")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// Random edits of a valid file give a topology or positioned errors, never a panic.
    #[test]
    fn mutated_files_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)) {
        let mut bytes = include_bytes!("../topology/testbed.toml").to_vec();
        for (at, b, kind) in edits {
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = b,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, b),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Err(errs) = Topology::parse(Path::new("m.toml"), &text) {
            for e in &errs.0 {
                prop_assert!(e.line >= 1 && e.col >= 1, "{}", e);
            }
        }
    }
}
