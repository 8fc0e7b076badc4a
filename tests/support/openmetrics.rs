//! A small, strict OpenMetrics 1.0 text checker (promtool's `check metrics` only reads the older
//! Prometheus text format). It checks what a scraper relies on: the `# EOF` terminator,
//! descriptors before samples, one contiguous block per family, sample names that fit the
//! family's type, label syntax and escaping, numbers, and histogram consistency.

// Each test binary uses a different part of this file.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};

type Labels = Vec<(String, String)>;

/// Family name → type, in exposition order (sorted here for lookups).
pub type Families = BTreeMap<String, String>;

/// A parsed sample: name, labels, value.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

pub struct Exposition {
    pub families: Families,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Every sample name a query may use (`x_total`, `x_bucket`, …).
    pub fn sample_names(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        for (name, kind) in &self.families {
            for suffix in allowed_suffixes(kind) {
                out.insert(format!("{name}{suffix}"));
            }
        }
        out
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels.len() == s.labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
    }
}

const TYPES: [&str; 8] = [
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "stateset",
    "info",
    "summary",
    "unknown",
];

fn allowed_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_sum", "_count", "_created"],
        "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
        "summary" => &["", "_sum", "_count", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => s.parse().ok(),
        _ => None,
    }
}

/// Parses `{a="x",b="y"} rest` → labels and the text after the closing brace.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("expected `{`")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without `=`")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name `{name}`"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label value")),
                },
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label `{name}` repeated"));
        }
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected `,` or `}` after a label".into());
        }
    }
}

/// Checks `text`; the error names the line.
pub fn check(text: &str) -> Result<Exposition, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the exposition must end with `# EOF` and a newline")?;
    let mut families: Families = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    let mut seen_samples = HashSet::new();
    let mut current: Option<String> = None;
    let mut has_samples: HashSet<String> = HashSet::new();
    let mut units: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();

    for (i, line) in body.split_terminator('\n').enumerate() {
        let n = i + 1;
        let err = |m: String| format!("line {n}: {m}: `{line}`");
        if line.is_empty() {
            return Err(err("empty line".into()));
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (Some(kw), Some(name)) = (parts.next(), parts.next()) else {
                return Err(err("truncated descriptor".into()));
            };
            let arg = parts.next().unwrap_or("");
            if !valid_name(name) {
                return Err(err(format!("bad metric family name `{name}`")));
            }
            if current.as_deref() != Some(name) {
                if families.contains_key(name) || helps.contains(name) {
                    return Err(err(format!("family `{name}` is split into two blocks")));
                }
                current = Some(name.to_string());
            } else if has_samples.contains(name) {
                return Err(err("descriptor after the family's samples".into()));
            }
            match kw {
                "TYPE" => {
                    if !TYPES.contains(&arg) {
                        return Err(err(format!("unknown type `{arg}`")));
                    }
                    if families.insert(name.to_string(), arg.to_string()).is_some() {
                        return Err(err("second TYPE".into()));
                    }
                    order.push(name.to_string());
                }
                "HELP" => {
                    if !helps.insert(name.to_string()) {
                        return Err(err("second HELP".into()));
                    }
                }
                "UNIT" => {
                    if !name.ends_with(&format!("_{arg}")) || arg.is_empty() {
                        return Err(err(format!("family name does not end in its unit `{arg}`")));
                    }
                    units.insert(name.to_string(), arg.to_string());
                }
                _ => return Err(err(format!("unknown descriptor `{kw}`"))),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(err("comment lines are not OpenMetrics".into()));
        }

        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("expected one space before the value".into()))?
            .split(' ');
        let value_text = fields.next().unwrap_or("");
        let value = parse_number(value_text)
            .ok_or_else(|| err(format!("`{value_text}` is not a number")))?;
        if let Some(ts) = fields.next()
            && parse_number(ts).is_none()
        {
            return Err(err(format!("`{ts}` is not a timestamp")));
        }
        if fields.next().is_some() {
            return Err(err("trailing text (exemplars are not expected here)".into()));
        }

        let family = current
            .clone()
            .ok_or_else(|| err("sample before any TYPE".into()))?;
        let kind = families
            .get(&family)
            .ok_or_else(|| err(format!("family `{family}` has no TYPE")))?;
        let suffix = name
            .strip_prefix(family.as_str())
            .ok_or_else(|| err(format!("sample outside its family `{family}`")))?;
        if !allowed_suffixes(kind).contains(&suffix) {
            return Err(err(format!(
                "`{name}` does not fit a {kind} named `{family}`"
            )));
        }
        if kind == "counter" && suffix == "_total" && (value < 0.0 || value.is_nan()) {
            return Err(err("counter below zero".into()));
        }
        if suffix == "_bucket" && !labels.iter().any(|(k, _)| k == "le") {
            return Err(err("bucket without `le`".into()));
        }
        let mut key_labels = labels.clone();
        key_labels.sort();
        if !seen_samples.insert((name.to_string(), key_labels)) {
            return Err(err("duplicate sample".into()));
        }
        has_samples.insert(family);
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for name in helps.iter().chain(units.keys()) {
        if !families.contains_key(name) {
            return Err(format!("family `{name}` has HELP or UNIT but no TYPE"));
        }
    }
    let exposition = Exposition { families, samples };
    check_histograms(&exposition)?;
    Ok(exposition)
}

/// Buckets cumulative, `le` increasing, a `+Inf` bucket equal to `_count`.
fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (family, kind) in &e.families {
        if kind != "histogram" {
            continue;
        }
        // Group by the labels other than `le`.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<Labels, f64> = BTreeMap::new();
        for s in &e.samples {
            let mut others: Vec<_> = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            others.sort();
            if s.name == format!("{family}_bucket") {
                let le = s.labels.iter().find(|(k, _)| k == "le").unwrap();
                let bound = parse_number(&le.1)
                    .ok_or_else(|| format!("{family}: le=\"{}\" is not a number", le.1))?;
                series.entry(others).or_default().push((bound, s.value));
            } else if s.name == format!("{family}_count") {
                counts.insert(others, s.value);
            }
        }
        for (labels, buckets) in &series {
            for w in buckets.windows(2) {
                if w[1].0 <= w[0].0 {
                    return Err(format!("{family}{labels:?}: le bounds not increasing"));
                }
                if w[1].1 < w[0].1 {
                    return Err(format!("{family}{labels:?}: buckets not cumulative"));
                }
            }
            let last = buckets.last().unwrap();
            if last.0 != f64::INFINITY {
                return Err(format!("{family}{labels:?}: no +Inf bucket"));
            }
            if counts.get(labels) != Some(&last.1) {
                return Err(format!(
                    "{family}{labels:?}: _count differs from the +Inf bucket"
                ));
            }
        }
    }
    Ok(())
}

/// Metric names used in a PromQL expression: identifiers outside strings, label matchers and
/// ranges that are not functions, keywords or grouping labels. Good enough for the dashboards and
/// rules we ship.
pub fn metric_names_in(expr: &str) -> Vec<String> {
    // Blank out strings, `{…}` and `[…]` so only selectors, functions and operators remain.
    let mut clean = String::with_capacity(expr.len());
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for c in expr.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            clean.push(' ');
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => {
                clean.push(c);
                continue;
            }
            _ => {}
        }
        clean.push(' ');
    }
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut i = 0;
    let chars: Vec<char> = clean.chars().collect();
    while i < chars.len() {
        let c = chars[i];
        if !(c.is_ascii_alphabetic() || c == '_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && word_char(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let prev = start.checked_sub(1).map(|p| chars[p]);
        if matches!(prev, Some(p) if p.is_ascii_digit() || p == '.' || p == '$') {
            continue;
        }
        let next = chars[i..].iter().find(|c| !c.is_whitespace());
        let after: String = chars[i..]
            .iter()
            .collect::<String>()
            .trim_start()
            .to_string();
        // `sum by (x) (…)`: an aggregation whose grouping comes first.
        let aggregation = ["by", "without"].iter().any(|w| {
            after
                .strip_prefix(w)
                .is_some_and(|r| r.trim_start().starts_with('('))
        });
        let before: String = chars[..start].iter().collect();
        if next == Some(&'(')
            || aggregation
            || GROUPING.contains(&word.as_str())
            || OPERATORS.contains(&word.as_str())
            || in_grouping_list(&before)
        {
            continue;
        }
        out.push(word);
    }
    out
}

/// Does `before` end inside a `by (…)` / `without (…)` / `on (…)` list?
fn in_grouping_list(before: &str) -> bool {
    let Some(open) = before.rfind('(') else {
        return false;
    };
    if before[open..].contains(')') {
        return false;
    }
    let head = before[..open].trim_end();
    GROUPING.iter().any(|w| head.ends_with(w))
}

/// PromQL's grouping and matching modifiers, each followed by a list of labels.
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// PromQL's keyword operators.
const OPERATORS: [&str; 4] = ["and", "or", "unless", "bool"];
