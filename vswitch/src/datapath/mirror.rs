//! Port mirroring, as Hyper-V does it: every frame a source port sends or
//! receives is copied to each destination port of the same network (never
//! another network's). The copy of a frame the source sent is the frame as
//! it sent it; of a frame it received, the frame as it was delivered to it.
//!
//! Floods reach every vNIC of the network, destinations included, so only
//! unicast (forwarded and switch-made replies) needs copies. A destination
//! never gets a copy of a frame it sent itself or already receives. The
//! kernel fast path forwards nothing of a source port (the control plane
//! marks it slow and its flows are not offloaded), so every frame of it
//! crosses this datapath.
//!
//! Costs one `is_empty` test per frame while no port is a source.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::pipeline::{NetId, PortId};

pub use crate::api::PortMirroring;

#[derive(Default)]
pub(super) struct Mirrors {
    sources: HashSet<PortId>,
    /// Each network's destination ports, in the order they were set.
    destinations: HashMap<NetId, Vec<PortId>>,
}

impl Mirrors {
    pub fn new() -> Mirrors {
        Mirrors {
            sources: HashSet::new(),
            destinations: HashMap::new(),
        }
    }

    /// Gives `port` (of network `net`) its role, replacing any other.
    pub fn set(&mut self, port: PortId, net: NetId, role: PortMirroring) {
        self.remove(port);
        match role {
            PortMirroring::None => {}
            PortMirroring::Source => {
                self.sources.insert(port);
            }
            PortMirroring::Destination => self.destinations.entry(net).or_default().push(port),
        }
    }

    /// Forgets `port`, whatever its role.
    pub fn remove(&mut self, port: PortId) {
        self.sources.remove(&port);
        self.destinations.retain(|_, ports| {
            ports.retain(|p| *p != port);
            !ports.is_empty()
        });
    }

    #[inline]
    pub fn is_source(&self, port: PortId) -> bool {
        !self.sources.is_empty() && self.sources.contains(&port)
    }

    /// Whether a frame from `in_port` to `out` is copied (either is a
    /// source).
    #[inline]
    pub fn involves(&self, in_port: PortId, out: PortId) -> bool {
        !self.sources.is_empty() && (self.sources.contains(&in_port) || self.sources.contains(&out))
    }

    /// Where copies of a frame between `in_port` and `out` on `net` go:
    /// the network's destinations but those two.
    pub fn targets(
        &self,
        net: NetId,
        in_port: PortId,
        out: PortId,
    ) -> impl Iterator<Item = PortId> + '_ {
        self.destinations
            .get(&net)
            .map_or(&[][..], |d| &d[..])
            .iter()
            .copied()
            .filter(move |p| *p != in_port && *p != out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_replace_each_other_and_stay_in_their_network() {
        let mut m = Mirrors::new();
        assert!(!m.involves(1, 2));
        m.set(1, 10, PortMirroring::Source);
        m.set(2, 10, PortMirroring::Destination);
        m.set(3, 10, PortMirroring::Destination);
        m.set(4, 11, PortMirroring::Destination);
        assert!(m.involves(1, 5) && m.involves(5, 1) && !m.involves(2, 3));
        assert_eq!(m.targets(10, 1, 5).collect::<Vec<_>>(), [2, 3]);
        // Neither the sender nor the receiver gets a copy of its own frame.
        assert_eq!(m.targets(10, 2, 1).collect::<Vec<_>>(), [3]);
        assert_eq!(m.targets(11, 1, 5).collect::<Vec<_>>(), [4]);
        m.set(2, 10, PortMirroring::Source);
        assert_eq!(m.targets(10, 1, 5).collect::<Vec<_>>(), [3]);
        assert!(m.is_source(2));
        m.set(1, 10, PortMirroring::None);
        m.remove(2);
        assert!(!m.involves(1, 2));
        m.remove(3);
        assert_eq!(m.targets(10, 1, 5).count(), 0);
        assert!(!m.destinations.contains_key(&10));
    }
}
