//! `scored rules check` on broken rules files: every file in tests/rules/bad/ names the position
//! and message it must produce on its first line (`# expect: LINE:COL: text`), checked against
//! the testbed topology; the real binary must print exactly that, exit 1, and never panic.

use proptest::prelude::*;
use scored::topology::Topology;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_scored"))
        .args(["rules", "check"])
        .arg(file)
        .arg("--topology")
        .arg(root().join("topology/testbed.toml"))
        .output()
        .unwrap()
}

#[test]
fn broken_files_give_their_position_and_message() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/rules/bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "ten broken files, found {}", files.len());
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
        let out = check(&f);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", f.display());
        assert!(!stderr.contains("panicked"), "{}: {stderr}", f.display());
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
fn a_missing_file_is_named_and_fails_the_check() {
    let out = check(Path::new("/nonexistent/rules.toml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "/nonexistent/rules.toml: no such file (the daemon runs with no placement rules"
        ),
        "{stderr}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Random edits of the example file give rules or positioned errors, never a panic.
    #[test]
    fn mutated_files_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)) {
        let topo = Topology::parse(
            Path::new("testbed.toml"),
            include_str!("../topology/testbed.toml"),
        ).unwrap();
        let mut bytes = include_bytes!("../dist/rules.toml").to_vec();
        for (at, b, kind) in edits {
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = b,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, b),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Err(errs) = scored::rules::file::parse(Path::new("m.toml"), &text, &topo) {
            for e in &errs.0 {
                prop_assert!(e.line >= 1 && e.col >= 1, "{}", e);
            }
        }
    }
}
