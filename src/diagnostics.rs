//! How scored points at a place in a file it read: byte offset → `line:col`, the
//! `file:line:col: message` prefix, serde/toml messages in the file's vocabulary, and an error
//! list written one line per error. The topology file and the daemon configuration both use it.
//!
//! Also how a long list of names is cut for a person to read ([`first_of`]).
//!
//! This module formats positions and lists only: it knows no file format, reads no file and
//! decides nothing about what is an error.

use std::fmt;
use std::path::Path;

/// The first `shown` of `names`, comma-separated, and how many more there are: `a, b … and 3
/// more`. For messages whose lists grow with the data centre (hosts not answering, groups).
pub fn first_of(names: &[impl AsRef<str>], shown: usize) -> String {
    let mut s = names[..names.len().min(shown)]
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > shown {
        s.push_str(&format!(" … and {} more", names.len() - shown));
    }
    s
}

/// 1-based line and character column of a byte offset in `text` (an offset past the end is the
/// end).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

/// Writes `file:line:col` — or only `file` when `line` is 0, for a problem with no position
/// (the file cannot be read).
pub fn write_position(
    f: &mut fmt::Formatter<'_>,
    file: &Path,
    line: usize,
    col: usize,
) -> fmt::Result {
    if line == 0 {
        write!(f, "{}", file.display())
    } else {
        write!(f, "{}:{line}:{col}", file.display())
    }
}

/// Writes each error on a line of its own (a file's error list, as `topology check` and
/// `config check` print it).
pub fn write_lines<E: fmt::Display>(f: &mut fmt::Formatter<'_>, errors: &[E]) -> fmt::Result {
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            writeln!(f)?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}

/// Rewrites serde/toml messages into the file's vocabulary (keys and tables, not fields).
pub fn syntax_message(msg: &str) -> String {
    let msg = msg.trim();
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        return format!("required key `{field}` is missing from this table");
    }
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let mut parts = rest.splitn(2, '`');
        let field = parts.next().unwrap_or("");
        let expected = parts
            .next()
            .and_then(|s| s.split_once("expected "))
            .map(|(_, e)| e.replace('`', "").replace("one of ", ""))
            .unwrap_or_default();
        return format!("unknown key `{field}` (allowed here: {expected})");
    }
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let t = "ab\ncdé\nfg";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 7), (2, 4));
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 9), (3, 2));
    }

    #[test]
    fn serde_words_become_file_words() {
        assert_eq!(
            syntax_message("missing field `weights`"),
            "required key `weights` is missing from this table"
        );
        assert_eq!(
            syntax_message("unknown field `path`, expected `enabled` or `listen`\n"),
            "unknown key `path` (allowed here: enabled or listen)"
        );
    }
}
