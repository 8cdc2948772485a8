//! IPAM over the mesh: the parts of agreeing on one address ring that need
//! the mesh's view. (The ring itself is `ipam-crdt`; the agent that gossips
//! it and routes space requests is designed in `docs/control-plane.md`.)

use ipam_crdt::PeerName;

use super::names::PeerRef;
use super::topology::Topology;

/// Where resolving `--ipalloc-init seed=NAME,...` stands.
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use]
pub enum Resolution {
    /// Every name is known: create the ring with these seeds, in this order.
    Ready(Vec<PeerName>),
    /// Some nicknames are not known yet; wait for gossip.
    Waiting {
        /// The nicknames not yet seen.
        unknown: Vec<String>,
    },
    /// A nickname belongs to more than one router: the operator must use peer names.
    Ambiguous {
        /// The nickname.
        nickname: String,
        /// The routers that carry it.
        routers: Vec<PeerName>,
    },
}

/// Resolves a seed list against the mesh's view.
///
/// Peer names stand for themselves. A nickname resolves once exactly one
/// known router carries it. Every router resolving the same list gets the
/// same seeds in the same order, so each may create the ring (creation is
/// deterministic) and all create the same one.
pub fn resolve_seeds(seeds: &[PeerRef], topo: &Topology) -> Resolution {
    let mut out = Vec::with_capacity(seeds.len());
    let mut unknown = Vec::new();
    for s in seeds {
        match s {
            PeerRef::Name(n) => out.push(*n),
            PeerRef::Nickname(nick) => {
                let routers: Vec<PeerName> = topo
                    .entries()
                    .filter(|e| e.nickname == nick.as_str())
                    .map(|e| e.name)
                    .collect();
                match routers.as_slice() {
                    [] => unknown.push(nick.as_str().to_owned()),
                    [one] => out.push(*one),
                    _ => {
                        return Resolution::Ambiguous {
                            nickname: nick.as_str().to_owned(),
                            routers,
                        };
                    }
                }
            }
        }
    }
    if unknown.is_empty() {
        Resolution::Ready(out)
    } else {
        Resolution::Waiting { unknown }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::core::topology::PeerEntry;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn view(nicks: &[(u64, &str)]) -> Topology {
        let mut t = Topology::new(p(nicks[0].0), nicks[0].1.into(), vec![]);
        let others = nicks[1..].iter().map(|(n, nick)| PeerEntry {
            name: p(*n),
            nickname: (*nick).into(),
            version: 1,
            endpoints: vec![],
            neighbours: BTreeSet::new(),
            ipam: crate::core::topology::IpamInit::default(),
            data: None,
        });
        let _ = t.merge(others);
        t
    }

    fn refs(s: &[&str]) -> Vec<PeerRef> {
        s.iter().map(|x| x.parse().unwrap()).collect()
    }

    #[test]
    fn nicknames_resolve_in_list_order() {
        let t = view(&[(1, "a"), (2, "b"), (3, "c")]);
        assert_eq!(
            resolve_seeds(&refs(&["c", "a"]), &t),
            Resolution::Ready(vec![p(3), p(1)])
        );
    }

    #[test]
    fn peer_names_stand_for_themselves() {
        let t = view(&[(1, "a")]);
        let name = p(0x3f2a_9c1e_0b7d_44e1);
        assert_eq!(
            resolve_seeds(&refs(&["3f:2a:9c:1e:0b:7d:44:e1", "a"]), &t),
            Resolution::Ready(vec![name, p(1)])
        );
    }

    #[test]
    fn unknown_nicknames_wait_and_duplicates_are_ambiguous() {
        let t = view(&[(1, "a"), (2, "b")]);
        assert_eq!(
            resolve_seeds(&refs(&["a", "z"]), &t),
            Resolution::Waiting {
                unknown: vec!["z".into()]
            }
        );
        let t = view(&[(1, "a"), (2, "b"), (3, "b")]);
        assert_eq!(
            resolve_seeds(&refs(&["a", "b"]), &t),
            Resolution::Ambiguous {
                nickname: "b".into(),
                routers: vec![p(2), p(3)]
            }
        );
    }
}
