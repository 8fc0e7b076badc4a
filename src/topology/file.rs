//! The topology file format (TOML) and its validation.
//!
//! Every value that can be wrong is read as `toml::Spanned` so that each error names the file,
//! line and column of the offending text. Validation collects all errors it can find, in file
//! order, rather than stopping at the first: an operator fixing a 2,560-host file wants one pass.

use super::error::{TopologyCause, TopologyError, TopologyErrors, UriTemplateError};
use super::networks::VmNetwork;
use super::tree::{Host, HostId, Switch, SwitchId, Topology};
use super::weights::LinkWeights;
use crate::diagnostics::{line_col, syntax_message};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    levels: Spanned<RawLevels>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default, rename = "host")]
    hosts: Vec<Spanned<RawHost>>,
    #[serde(default)]
    vm_networks: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLevels {
    weights: Spanned<Vec<Spanned<f64>>>,
    names: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    max_vms: Option<Spanned<u32>>,
    memory_mib: Option<Spanned<u64>>,
    reserve_memory_mib: Option<Spanned<u64>>,
    p2p_port: Option<Spanned<u16>>,
    libvirt_uri: Option<Spanned<String>>,
    migration_uri: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: Spanned<String>,
    path: Spanned<Vec<Spanned<String>>>,
    address: Option<Spanned<String>>,
    p2p_port: Option<Spanned<u16>>,
    peer_id: Option<Spanned<String>>,
    libvirt_uri: Option<Spanned<String>>,
    migration_uri: Option<Spanned<String>>,
    max_vms: Option<Spanned<u32>>,
    memory_mib: Option<Spanned<u64>>,
    reserve_memory_mib: Option<Spanned<u64>>,
}

/// Defaults when neither the host nor `[defaults]` says otherwise.
pub const DEFAULT_MAX_VMS: u32 = 16;
pub const DEFAULT_MEMORY_MIB: u64 = 16 * 1024;
pub const DEFAULT_RESERVE_MEMORY_MIB: u64 = 1024;
pub const DEFAULT_P2P_PORT: u16 = 7070;
pub const DEFAULT_LIBVIRT_URI: &str = "qemu+tcp://{address}/system";
pub const DEFAULT_MIGRATION_URI: &str = "tcp://{address}";

struct Errors<'a> {
    file: &'a Path,
    text: &'a str,
    list: Vec<(usize, TopologyError)>,
}

impl Errors<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.push(span, message.into(), None);
    }

    /// A problem that a typed error underneath explains.
    fn caused(&mut self, span: Range<usize>, message: String, cause: impl Into<TopologyCause>) {
        self.push(span, message, Some(cause.into()));
    }

    fn push(&mut self, span: Range<usize>, message: String, cause: Option<TopologyCause>) {
        let (line, col) = line_col(self.text, span.start);
        self.list.push((
            span.start,
            TopologyError {
                file: self.file.to_path_buf(),
                line,
                col,
                message,
                cause,
            },
        ));
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }
}

/// A host or switch name: 1–64 characters of `[A-Za-z0-9._-]`.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn expand_uri(
    template: &str,
    name: &str,
    address: Option<IpAddr>,
) -> Result<Option<String>, UriTemplateError> {
    let mut out = String::new();
    let mut rest = template;
    let mut needs_address = false;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            return Err(UriTemplateError::Unclosed {
                template: template.to_string(),
            });
        };
        match &rest[start + 1..start + len] {
            "name" => out.push_str(name),
            "address" => {
                needs_address = true;
                match address {
                    Some(IpAddr::V6(a)) => out.push_str(&format!("[{a}]")),
                    Some(a) => out.push_str(&a.to_string()),
                    None => {}
                }
            }
            other => {
                return Err(UriTemplateError::UnknownPlaceholder {
                    placeholder: other.to_string(),
                    template: template.to_string(),
                });
            }
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    if needs_address && address.is_none() {
        return Ok(None);
    }
    Ok(Some(out))
}

pub(super) fn parse(file: &Path, text: &str) -> Result<Topology, TopologyErrors> {
    let raw: RawFile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let (line, col) = match e.span() {
                Some(s) => line_col(text, s.start),
                None => (1, 1),
            };
            return Err(TopologyErrors::single(TopologyError {
                file: file.to_path_buf(),
                line,
                col,
                message: syntax_message(e.message()),
                cause: Some(e.into()),
            }));
        }
    };
    let mut errs = Errors {
        file,
        text,
        list: Vec::new(),
    };

    // Levels and weights.
    let weights_span = raw.levels.get_ref().weights.span();
    let weights: Vec<f64> = raw
        .levels
        .get_ref()
        .weights
        .get_ref()
        .iter()
        .map(|w| *w.get_ref())
        .collect();
    if weights.is_empty() {
        errs.at(
            weights_span.clone(),
            "`weights` needs at least one link weight (c_1 for the rack level)",
        );
    }
    for (i, w) in raw.levels.get_ref().weights.get_ref().iter().enumerate() {
        let v = *w.get_ref();
        if !v.is_finite() || v <= 0.0 {
            errs.at(
                w.span(),
                format!(
                    "link weight c_{} = {v} must be a positive finite number",
                    i + 1
                ),
            );
        } else if i > 0 {
            let prev = weights[i - 1];
            if prev.is_finite() && prev > 0.0 && v <= prev {
                errs.at(
                    w.span(),
                    format!(
                        "link weights must increase up the tree: c_{} = {v} is not greater than c_{} = {prev}",
                        i + 1,
                        i
                    ),
                );
            }
        }
    }

    // Defaults.
    let d = &raw.defaults;
    let def_max_vms = d
        .max_vms
        .as_ref()
        .map(|v| *v.get_ref())
        .unwrap_or(DEFAULT_MAX_VMS);
    let def_memory = d
        .memory_mib
        .as_ref()
        .map(|v| *v.get_ref())
        .unwrap_or(DEFAULT_MEMORY_MIB);
    let def_reserve = d
        .reserve_memory_mib
        .as_ref()
        .map(|v| *v.get_ref())
        .unwrap_or(DEFAULT_RESERVE_MEMORY_MIB);
    let def_port = d
        .p2p_port
        .as_ref()
        .map(|v| *v.get_ref())
        .unwrap_or(DEFAULT_P2P_PORT);
    let def_libvirt = d
        .libvirt_uri
        .clone()
        .unwrap_or_else(|| Spanned::new(0..0, DEFAULT_LIBVIRT_URI.to_string()));
    let def_migration = d
        .migration_uri
        .clone()
        .unwrap_or_else(|| Spanned::new(0..0, DEFAULT_MIGRATION_URI.to_string()));
    if let Some(v) = &d.max_vms
        && *v.get_ref() == 0
    {
        errs.at(v.span(), "`max_vms` must be at least 1");
    }

    // Hosts and the switch tree they imply.
    if raw.hosts.is_empty() {
        errs.at(
            raw.levels.span(),
            "the file lists no hypervisors: add at least one [[host]] table",
        );
    }
    let mut switches: Vec<Switch> = Vec::new();
    let mut switch_ids: HashMap<String, (SwitchId, Range<usize>)> = HashMap::new();
    let mut host_names: HashMap<String, Range<usize>> = HashMap::new();
    let mut peers: HashMap<libp2p::PeerId, Range<usize>> = HashMap::new();
    let mut endpoints: HashMap<(IpAddr, u16), Range<usize>> = HashMap::new();
    let mut depth: Option<(usize, String, Range<usize>)> = None;
    let mut hosts: Vec<Host> = Vec::new();
    let mut paths: Vec<u32> = Vec::new();

    for h in &raw.hosts {
        let rh = h.get_ref();
        let name = rh.name.get_ref().clone();
        if !valid_name(&name) {
            errs.at(
                rh.name.span(),
                format!(
                    "host name `{name}` must be 1-64 characters of letters, digits, `-`, `_` or `.`"
                ),
            );
        }
        if let Some(first) = host_names.get(&name) {
            let line = errs.line_of(first);
            errs.at(
                rh.name.span(),
                format!("duplicate host name `{name}` (first defined on line {line})"),
            );
        } else {
            host_names.insert(name.clone(), rh.name.span());
        }

        // Path.
        let path = rh.path.get_ref();
        if path.is_empty() {
            errs.at(
                rh.path.span(),
                format!("host `{name}` has an empty path: list its switches from the top of the tree down to its rack"),
            );
        }
        match &depth {
            None if !path.is_empty() => depth = Some((path.len(), name.clone(), rh.path.span())),
            Some((d, first, first_span)) if !path.is_empty() && *d != path.len() => {
                let line = errs.line_of(first_span);
                errs.at(
                    rh.path.span(),
                    format!(
                        "host `{name}` sits {} switches deep but `{first}` (line {line}) sits {d}: all hosts must be at the same depth",
                        path.len()
                    ),
                );
            }
            _ => {}
        }
        let mut ids = Vec::with_capacity(path.len());
        let mut parent: Option<SwitchId> = None;
        for (level, sw) in path.iter().enumerate() {
            let sname = sw.get_ref();
            if !valid_name(sname) {
                errs.at(
                    sw.span(),
                    format!("switch name `{sname}` must be 1-64 characters of letters, digits, `-`, `_` or `.`"),
                );
            }
            let id = match switch_ids.get(sname) {
                Some((id, first_span)) => {
                    let s = &switches[id.0 as usize];
                    if s.depth != level || s.parent != parent {
                        let line = errs.line_of(first_span);
                        let where_now = parent
                            .map(|p| format!("under `{}`", switches[p.0 as usize].name))
                            .unwrap_or_else(|| "at the top".into());
                        let where_then = s
                            .parent
                            .map(|p| format!("under `{}`", switches[p.0 as usize].name))
                            .unwrap_or_else(|| "at the top".into());
                        errs.at(
                            sw.span(),
                            format!(
                                "switch `{sname}` is placed {where_now} here but {where_then} on line {line}: a switch has one place in the tree"
                            ),
                        );
                    }
                    *id
                }
                None => {
                    let id = SwitchId(switches.len() as u32);
                    switches.push(Switch {
                        name: sname.clone(),
                        depth: level,
                        parent,
                    });
                    switch_ids.insert(sname.clone(), (id, sw.span()));
                    id
                }
            };
            ids.push(id);
            parent = Some(id);
        }

        // Address and identity.
        let address = rh
            .address
            .as_ref()
            .and_then(|a| match a.get_ref().parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(e) => {
                    errs.caused(
                        a.span(),
                        format!("`{}` is not an IPv4 or IPv6 address", a.get_ref()),
                        e,
                    );
                    None
                }
            });
        let port = rh
            .p2p_port
            .as_ref()
            .map(|p| *p.get_ref())
            .unwrap_or(def_port);
        if let Some(ip) = address {
            let span = rh.address.as_ref().map(|a| a.span()).unwrap_or(h.span());
            if let Some(first) = endpoints.get(&(ip, port)) {
                let line = errs.line_of(first);
                errs.at(
                    span,
                    format!("address {ip} port {port} is already used by the host on line {line}"),
                );
            } else {
                endpoints.insert((ip, port), span);
            }
        }
        let peer_id =
            rh.peer_id
                .as_ref()
                .and_then(|p| match p.get_ref().parse::<libp2p::PeerId>() {
                    Ok(id) => {
                        if let Some(first) = peers.get(&id) {
                            let line = errs.line_of(first);
                            errs.at(
                            p.span(),
                            format!(
                                "peer_id {id} is already the identity of the host on line {line}"
                            ),
                        );
                        } else {
                            peers.insert(id, p.span());
                        }
                        Some(id)
                    }
                    Err(e) => {
                        errs.caused(
                            p.span(),
                            format!(
                                "`{}` is not a libp2p PeerId ({e}); `scored keygen` prints one",
                                p.get_ref()
                            ),
                            e,
                        );
                        None
                    }
                });

        let uri = |own: &Option<Spanned<String>>, def: &Spanned<String>, errs: &mut Errors| {
            let t = own.as_ref().unwrap_or(def);
            match expand_uri(t.get_ref(), &name, address) {
                Ok(u) => u,
                Err(e) => {
                    // A bad default is reported once, at the default.
                    if own.is_some() || !errs.list.iter().any(|(o, _)| *o == t.span().start) {
                        errs.caused(t.span(), e.to_string(), e);
                    }
                    None
                }
            }
        };
        let libvirt_uri = uri(&rh.libvirt_uri, &def_libvirt, &mut errs);
        let migration_uri = uri(&rh.migration_uri, &def_migration, &mut errs);

        let max_vms = rh
            .max_vms
            .as_ref()
            .map(|v| *v.get_ref())
            .unwrap_or(def_max_vms);
        if let Some(v) = &rh.max_vms
            && *v.get_ref() == 0
        {
            errs.at(v.span(), "`max_vms` must be at least 1");
        }
        let memory_mib = rh
            .memory_mib
            .as_ref()
            .map(|v| *v.get_ref())
            .unwrap_or(def_memory);
        let reserve_memory_mib = rh
            .reserve_memory_mib
            .as_ref()
            .map(|v| *v.get_ref())
            .unwrap_or(def_reserve);
        if reserve_memory_mib >= memory_mib {
            let span = rh
                .reserve_memory_mib
                .as_ref()
                .map(|v| v.span())
                .or(rh.memory_mib.as_ref().map(|v| v.span()))
                .unwrap_or(h.span());
            errs.at(
                span,
                format!("host `{name}` keeps {reserve_memory_mib} MiB free out of {memory_mib} MiB: nothing is left for guests"),
            );
        }

        if ids.len() == depth.as_ref().map(|d| d.0).unwrap_or(ids.len()) {
            paths.extend(ids.iter().map(|s| s.0));
        }
        hosts.push(Host {
            id: HostId(hosts.len() as u32),
            name,
            path: ids,
            address,
            p2p_port: port,
            peer_id,
            libvirt_uri,
            migration_uri,
            max_vms,
            memory_mib,
            reserve_memory_mib,
        });
    }

    // A switch used as a host name is almost always a mistake in a path.
    for h in &raw.hosts {
        for sw in h.get_ref().path.get_ref() {
            if host_names.contains_key(sw.get_ref()) {
                errs.at(
                    sw.span(),
                    format!(
                        "`{}` is a host, not a switch: paths name switches only",
                        sw.get_ref()
                    ),
                );
            }
        }
    }

    // The number of levels the tree has must match the weights given.
    let depth = depth.map(|d| d.0).unwrap_or(0);
    let roots = switches.iter().filter(|s| s.parent.is_none()).count();
    let levels = if roots > 1 { depth + 1 } else { depth };
    if depth > 0 && !weights.is_empty() && levels != weights.len() {
        let why = if roots > 1 {
            format!(
                "{depth} tiers of switches under {roots} top-level switches, which meet at an implicit top: {levels} levels"
            )
        } else {
            format!("{depth} tiers of switches under one top switch: {levels} levels")
        };
        errs.at(
            weights_span.clone(),
            format!(
                "the tree has {why}, but {} link weights are given (one per level, rack first)",
                weights.len()
            ),
        );
    }
    let level_names = match &raw.levels.get_ref().names {
        Some(n) => {
            if n.get_ref().len() != weights.len() {
                errs.at(
                    n.span(),
                    format!(
                        "{} level names for {} link weights: give one name per weight",
                        n.get_ref().len(),
                        weights.len()
                    ),
                );
            }
            n.get_ref().clone()
        }
        None => default_level_names(weights.len()),
    };

    let vm_networks: Vec<VmNetwork> = raw
        .vm_networks
        .iter()
        .filter_map(|n| match n.get_ref().parse() {
            Ok(net) => Some(net),
            Err(message) => {
                errs.at(n.span(), message);
                None
            }
        })
        .collect();

    if !errs.list.is_empty() {
        errs.list.sort_by_key(|(o, _)| *o);
        return Err(TopologyErrors(
            errs.list.into_iter().map(|(_, e)| e).collect(),
        ));
    }
    let weights = LinkWeights::new(&weights).expect("validated above");
    let by_name = hosts.iter().map(|h| (h.name.clone(), h.id)).collect();
    let by_peer = hosts
        .iter()
        .filter_map(|h| h.peer_id.map(|p| (p, h.id)))
        .collect();
    Ok(Topology {
        source: file.to_path_buf(),
        level_names,
        weights,
        switches,
        hosts,
        paths,
        depth,
        by_name,
        vm_networks,
        by_peer,
    })
}

fn default_level_names(n: usize) -> Vec<String> {
    let base = ["rack", "aggregation", "core"];
    (0..n)
        .map(|i| {
            if n <= 3 {
                base[i].to_string()
            } else if i == 0 {
                "rack".into()
            } else if i == n - 1 {
                "core".into()
            } else {
                format!("aggregation-{i}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_keep_their_cause() {
        let text = "[levels]\nweights = [1]\n[[host]]\nname = \"a\"\npath = [\"t\"]\naddress = \"10.0.0\"\npeer_id = \"nope\"\nlibvirt_uri = \"qemu://{adress}/system\"\n";
        let errs = parse(Path::new("m.toml"), text).unwrap_err();
        let causes: Vec<_> = errs.0.iter().map(|e| e.cause.as_ref()).collect();
        assert!(
            matches!(causes[0], Some(TopologyCause::Address(_))),
            "{errs}"
        );
        assert!(
            matches!(causes[1], Some(TopologyCause::PeerId(_))),
            "{errs}"
        );
        assert!(
            matches!(causes[2], Some(TopologyCause::UriTemplate(_))),
            "{errs}"
        );
        let missing = Topology::load(Path::new("/nonexistent/t.toml")).unwrap_err();
        match &missing.first().cause {
            Some(TopologyCause::Read(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn uri_templates() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            expand_uri("qemu+tcp://{address}/system", "h", Some(a))
                .unwrap()
                .unwrap(),
            "qemu+tcp://10.0.0.1/system"
        );
        assert_eq!(
            expand_uri("tcp://{address}", "h", Some(v6))
                .unwrap()
                .unwrap(),
            "tcp://[fd00::1]"
        );
        assert_eq!(expand_uri("tcp://{address}", "h", None).unwrap(), None);
        assert!(expand_uri("tcp://{adress}", "h", Some(a)).is_err());
    }
}
