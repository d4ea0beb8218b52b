//! Where hosts are: the path state a given host sees (uniform access, as in a vSphere Metro
//! Storage Cluster).
//!
//! Model: a mirrored volume has two sites, and both serve it (a follower forwards writes to
//! the leader), so "optimised" is a preference, not the only usable path. Without a host
//! list the preference is the volume's leader, for every host: the path state the volume
//! publishes ([`PathState`], `PathCell`). The optional host list of the configuration
//! (`[[host]] name site`: an iSCSI initiator name or an NVMe host NQN, and the site it is at)
//! puts a host at one site; such a host is then told that its own site's ports are optimised
//! and the other site's non-optimised, whichever site leads. The list is resolved once, at
//! start, into [`HostSites`] (names relative to this site: [`Site::Here`] or [`Site::Peer`]);
//! a front end looks its host up once, at login or connect, and keeps the answer, so the I/O
//! path takes no lock and allocates nothing.
//!
//! [`host_view`] is the one mapping, used by both front ends for both port groups (this
//! site's, and the other site's as this site reports it):
//! - inaccessible and transitioning stay what they are, for every host (a fenced, resyncing
//!   or waiting site serves no one; a changing one is changing for everyone);
//! - otherwise, for a listed host: optimised where the host is, non-optimised elsewhere,
//!   except when the host's own site's group is inaccessible (fenced, resyncing, down): then
//!   the group still serving is optimised for it too, so a host at the failed site keeps an
//!   optimised path (the survivor) rather than only a non-optimised one;
//! - for an unlisted host (or no list): the published state (today's rule: the leader's port
//!   optimised, the follower's non-optimised).
//!
//! Invariants:
//! - The mapping never makes a path usable or unusable: the view is inaccessible or
//!   transitioning exactly when the published state is, so the I/O checks (which only look
//!   at those two) answer the same for every host.
//! - Both sites give a host the same answer for the same group when they agree on the
//!   published states: the mapping depends on the group's site and the host's site only, not
//!   on which site reports it.
//! - A volume that is not mirrored has one site and one group: the host list does not apply
//!   ([`host_views`] returns the published state).

use super::volume::PathState;
use std::collections::HashMap;

/// One of a mirrored volume's two sites, as this site names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// This site.
    Here,
    /// The other site.
    Peer,
}

/// The host list, resolved: host name (iSCSI initiator name or NVMe host NQN) to its site.
/// Built once before the reactors start, read-only afterwards; looked up at login/connect.
#[derive(Clone, Debug, Default)]
pub struct HostSites {
    hosts: HashMap<String, Site>,
    /// The sites' names (this site's, the peer's), for reports.
    names: [String; 2],
}

impl HostSites {
    /// A list from (name, site) pairs (the configuration has checked names are unique).
    pub fn new(hosts: impl IntoIterator<Item = (String, Site)>) -> Self {
        Self {
            hosts: hosts.into_iter().collect(),
            names: Default::default(),
        }
    }

    /// With the sites' names (`mirror.site`, `mirror.peer_site`), for [`Self::name_of`].
    pub fn named(mut self, here: &str, peer: &str) -> Self {
        self.names = [here.to_string(), peer.to_string()];
        self
    }

    /// The configured name of `site` (empty when the list was built without names).
    pub fn name_of(&self, site: Site) -> &str {
        match site {
            Site::Here => &self.names[0],
            Site::Peer => &self.names[1],
        }
    }

    /// Where host `name` is (`None`: not listed). Names are compared exactly.
    pub fn site_of(&self, name: &str) -> Option<Site> {
        self.hosts.get(name).copied()
    }

    /// Where the host `name` given as bytes (an NVMe host NQN) is.
    pub fn site_of_bytes(&self, name: &[u8]) -> Option<Site> {
        std::str::from_utf8(name).ok().and_then(|n| self.site_of(n))
    }

    /// Listed hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// No host is listed.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// The state a host at `host` (`None`: not listed) sees for the port group of site `port`
/// of a mirrored volume whose published state there is `state`, the other site's group being
/// published as `other`.
pub fn host_view(state: PathState, port: Site, host: Option<Site>, other: PathState) -> PathState {
    match (state, host) {
        (PathState::Inaccessible | PathState::Transitioning, _) | (_, None) => state,
        (PathState::Optimized | PathState::NonOptimized, Some(h)) => {
            if h == port || other == PathState::Inaccessible {
                PathState::Optimized
            } else {
                PathState::NonOptimized
            }
        }
    }
}

/// Both groups of a volume as a host at `host` sees them, from this site: `path` is this
/// site's published state, `peer` the other site's as this site knows it (`None`: the
/// volume is not mirrored, one group, the list does not apply).
pub fn host_views(
    path: PathState,
    peer: Option<PathState>,
    host: Option<Site>,
) -> (PathState, Option<PathState>) {
    match peer {
        None => (path, None),
        Some(p) => (
            host_view(path, Site::Here, host, p),
            Some(host_view(p, Site::Peer, host, path)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathState::*;

    const STATES: [PathState; 4] = [Optimized, NonOptimized, Inaccessible, Transitioning];
    const HOSTS: [Option<Site>; 3] = [None, Some(Site::Here), Some(Site::Peer)];
    const PORTS: [Site; 2] = [Site::Here, Site::Peer];

    /// The rule, written out as a table over every input (4 states x 2 ports x 3 hosts x 4
    /// states of the other group).
    #[test]
    fn host_view_over_every_input() {
        let expect = |s: PathState, port: Site, host: Option<Site>, o: PathState| -> PathState {
            match (s, port, host) {
                (Inaccessible, _, _) => Inaccessible,
                (Transitioning, _, _) => Transitioning,
                (Optimized, _, None) => Optimized,
                (NonOptimized, _, None) => NonOptimized,
                // The host's own site serves no one: the serving group is its best path.
                (_, _, Some(_)) if o == Inaccessible => Optimized,
                (_, Site::Here, Some(Site::Here)) => Optimized,
                (_, Site::Peer, Some(Site::Peer)) => Optimized,
                (_, Site::Here, Some(Site::Peer)) => NonOptimized,
                (_, Site::Peer, Some(Site::Here)) => NonOptimized,
            }
        };
        let mut n = 0;
        for s in STATES {
            for port in PORTS {
                for host in HOSTS {
                    for o in STATES {
                        assert_eq!(
                            host_view(s, port, host, o),
                            expect(s, port, host, o),
                            "{s:?} {port:?} {host:?} other {o:?}"
                        );
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, 96);
        // Spot checks in words: a host at the follower sees the follower optimised.
        assert_eq!(
            host_view(NonOptimized, Site::Here, Some(Site::Here), Optimized),
            Optimized
        );
        assert_eq!(
            host_view(Optimized, Site::Here, Some(Site::Peer), NonOptimized),
            NonOptimized
        );
        assert_eq!(
            host_view(Inaccessible, Site::Here, Some(Site::Here), Optimized),
            Inaccessible
        );
        // A host at a fenced site: the survivor is optimised for it.
        assert_eq!(
            host_view(Optimized, Site::Here, Some(Site::Peer), Inaccessible),
            Optimized
        );
    }

    /// A listed host always has an optimised group while either group serves.
    #[test]
    fn a_listed_host_has_an_optimised_group_while_one_serves() {
        let usable = |s: PathState| matches!(s, Optimized | NonOptimized);
        for a in STATES {
            for b in STATES {
                for host in [Site::Here, Site::Peer] {
                    let (here, peer) = host_views(a, Some(b), Some(host));
                    let peer = peer.unwrap();
                    if (usable(a) && b != Transitioning) || (usable(b) && a != Transitioning) {
                        assert!(
                            here == Optimized || peer == Optimized,
                            "{a:?} {b:?} at {host:?}: {here:?} {peer:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_view_is_usable_exactly_when_the_published_state_is() {
        let usable = |s: PathState| matches!(s, Optimized | NonOptimized);
        for s in STATES {
            for port in PORTS {
                for host in HOSTS {
                    for o in STATES {
                        let v = host_view(s, port, host, o);
                        assert_eq!(usable(v), usable(s));
                        if !usable(s) {
                            assert_eq!(v, s);
                        }
                    }
                }
            }
        }
    }

    /// Site A reports group A from its own state and group B from B's state as it knows it;
    /// site B the reverse. When both know the same states, a host hears the same from both.
    #[test]
    fn both_sites_report_the_same_groups_to_a_host() {
        let flip = |h: Option<Site>| {
            h.map(|s| match s {
                Site::Here => Site::Peer,
                Site::Peer => Site::Here,
            })
        };
        for a in STATES {
            for b in STATES {
                // `host` is relative to site A.
                for host in HOSTS {
                    let (a_at_a, b_at_a) = host_views(a, Some(b), host);
                    let (b_at_b, a_at_b) = host_views(b, Some(a), flip(host));
                    assert_eq!(a_at_a, a_at_b.unwrap(), "{a:?} {b:?} {host:?}");
                    assert_eq!(b_at_a.unwrap(), b_at_b, "{a:?} {b:?} {host:?}");
                }
            }
        }
    }

    #[test]
    fn a_listed_host_with_both_sites_up_has_exactly_one_optimised_group() {
        for (a, b) in [(Optimized, NonOptimized), (NonOptimized, Optimized)] {
            for host in [Site::Here, Site::Peer] {
                let (here, peer) = host_views(a, Some(b), Some(host));
                let opt = [here, peer.unwrap()]
                    .iter()
                    .filter(|s| **s == Optimized)
                    .count();
                assert_eq!(opt, 1);
                assert_eq!(here == Optimized, host == Site::Here);
            }
        }
    }

    #[test]
    fn a_volume_without_a_peer_ignores_the_list() {
        for s in STATES {
            for host in HOSTS {
                assert_eq!(host_views(s, None, host), (s, None));
            }
        }
    }

    #[test]
    fn lookups_are_exact() {
        let h = HostSites::new([
            ("iqn.1998-01.com.vmware:esx1".to_string(), Site::Here),
            ("nqn.2014-08.org.nvmexpress:uuid:1".to_string(), Site::Peer),
        ]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.site_of("iqn.1998-01.com.vmware:esx1"), Some(Site::Here));
        assert_eq!(h.site_of("iqn.1998-01.com.vmware:esx2"), None);
        assert_eq!(
            h.site_of_bytes(b"nqn.2014-08.org.nvmexpress:uuid:1"),
            Some(Site::Peer)
        );
        assert_eq!(h.site_of_bytes(&[0xFF, 0xFE]), None);
        assert_eq!(h.name_of(Site::Here), "");
        let h = h.named("b", "a");
        assert_eq!((h.name_of(Site::Here), h.name_of(Site::Peer)), ("b", "a"));
        assert!(HostSites::default().is_empty());
    }
}
