//! How a VM's own words put it in groups: its libvirt name where the rules file lists it, and
//! the `<scored:group …/>` tags of its domain metadata.
//!
//! Only the host a VM runs on knows its name and its metadata, so both are resolved there and
//! become plain group ids; other hosts learn of them as that host reports its VMs. Pure: no I/O,
//! and a tag that cannot be honoured is an error returned to the caller (the daemon logs it),
//! never a panic.

use super::{GroupId, GroupKind, GroupSource, Rules, scope_name, scope_of};
use crate::hypervisor::GroupTag;
use crate::topology::{Topology, valid_name};
use scored_proto::VmId;

/// A metadata group tag scored cannot honour as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// Not a group name scored accepts (1-64 characters of letters, digits, `-`, `_`, `.`).
    #[error(
        "metadata group name `{name}` must be 1-64 characters of letters, digits, `-`, `_` or `.`"
    )]
    BadName { name: String },
    /// The rules file does not declare it and the tag lacks a kind or a scope.
    #[error(
        "metadata group `{name}` is not in the rules file and its metadata lacks a kind or a scope: give both (kind='anti-affinity' scope='host', say) or declare the group in the rules file"
    )]
    Undeclared { name: String },
    /// The scope is neither `host` nor a level name of the topology.
    #[error("metadata group `{name}` has scope `{scope}`, which is not a level of the topology")]
    UnknownScope { name: String, scope: String },
    /// The group exists with another kind or scope; the VM joins it as declared.
    #[error(
        "metadata group `{name}` says {said}, but {by} declares it {declared}: the {rule} applies"
    )]
    Disagrees {
        group: GroupId,
        name: String,
        /// What the tag says and what holds, as `anti-affinity at scope host`.
        said: String,
        declared: String,
        /// `the rules file` or `another VM's metadata`.
        by: &'static str,
        /// `rules file's` or `first declaration`.
        rule: &'static str,
    },
}

impl Rules {
    /// The groups the rules file lists the VM of libvirt name `name` in.
    pub fn groups_named(&self, name: &str) -> &[GroupId] {
        self.of_name.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Makes each VM (id, libvirt name) a member by id of the groups and exclusions the rules
    /// file names it in, so [`Rules::check_for`] finds them. A host binds its own VMs; a binding
    /// stays (an id keeps its name while the VM exists, and a stale one names no running VM).
    /// Returns how many memberships are new.
    pub fn bind_names<'n>(&mut self, vms: impl IntoIterator<Item = (VmId, &'n str)>) -> usize {
        let mut added = 0;
        for (vm, name) in vms {
            for g in self.of_name.get(name).cloned().unwrap_or_default() {
                let before = self.groups[g.0 as usize].members.len();
                self.add_member(g, vm);
                added += self.groups[g.0 as usize].members.len() - before;
            }
            if let Some(ex) = self.name_exclusions.get(name) {
                let list = self.vm_exclusions.entry(vm).or_default();
                for e in ex {
                    if !list.contains(e) {
                        list.push(*e);
                        added += 1;
                    }
                }
            }
        }
        added
    }

    /// The groups a VM's metadata tags put it in, and the tags that cannot be honoured as
    /// written. A group the rules file declares keeps the file's kind and scope (a tag that says
    /// otherwise still joins it, with an error to log); another group needs kind and scope in
    /// the tag and is created by the first tag naming it (a later tag that disagrees joins it as
    /// first declared, with an error). The ids are passed to [`Rules::check_for`] as `extra`.
    pub fn intern_tags(
        &mut self,
        topo: &Topology,
        tags: &[GroupTag],
    ) -> (Vec<GroupId>, Vec<TagError>) {
        let mut groups = Vec::with_capacity(tags.len());
        let mut errors = Vec::new();
        for t in tags {
            match self.intern_tag(topo, t) {
                Ok(g) => groups.push(g),
                Err(e) => {
                    if let TagError::Disagrees { group, .. } = e {
                        groups.push(group);
                    }
                    errors.push(e);
                }
            }
        }
        groups.sort_unstable();
        groups.dedup();
        (groups, errors)
    }

    fn intern_tag(&mut self, topo: &Topology, t: &GroupTag) -> Result<GroupId, TagError> {
        let name = t.name.clone();
        if !valid_name(&name) {
            return Err(TagError::BadName { name });
        }
        let scope = match &t.scope {
            Some(s) => Some(scope_of(topo, s).ok_or_else(|| TagError::UnknownScope {
                name: name.clone(),
                scope: s.clone(),
            })?),
            None => None,
        };
        let existing = self.group_by_name(&name);
        let from_file = existing.filter(|g| self.group(*g).source == GroupSource::RulesFile);
        let (kind, scope) = match (from_file, t.kind, scope) {
            (Some(g), None, None) => return Ok(g),
            (_, Some(k), Some(s)) => (k, s),
            (Some(g), k, s) => {
                // A partial tag on a file group: whatever it gives must agree.
                let d = self.group(g);
                (k.unwrap_or(d.kind), s.unwrap_or(d.scope))
            }
            (None, _, _) => return Err(TagError::Undeclared { name }),
        };
        let Some(g) = existing else {
            let g = self
                .group_named(&name, kind, scope)
                .expect("a new name cannot clash");
            self.groups[g.0 as usize].source = GroupSource::Metadata;
            return Ok(g);
        };
        let d = self.group(g);
        if d.kind == kind && d.scope == scope {
            return Ok(g);
        }
        let words = |k: GroupKind, s| format!("{} at scope {}", k.name(), scope_name(topo, s));
        let by_file = d.source == GroupSource::RulesFile;
        Err(TagError::Disagrees {
            group: g,
            name,
            said: words(kind, scope),
            declared: words(d.kind, d.scope),
            by: if by_file {
                "the rules file"
            } else {
                "another VM's metadata"
            },
            rule: if by_file {
                "rules file's"
            } else {
                "first declaration"
            },
        })
    }
}
