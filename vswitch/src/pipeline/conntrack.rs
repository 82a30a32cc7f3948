//! Connection tracking, shared by stateful ACLs and NAT.
//!
//! A connection is known by the tuple of its first packet (its *original*
//! direction); a packet is looked up under its own tuple and under the
//! reversed one, so a reply finds the connection its request opened. TCP
//! follows the handshake, data and the closing exchanges loosely, as
//! Linux's conntrack does without window tracking: what matters here is
//! when a connection is established (replies allowed), when it closes (its
//! entry expires sooner), and that a reset ends it. UDP is a connection
//! once a reply is seen; ICMP echo by identifier; ICMP errors are
//! *related* to the connection whose packet they quote.
//!
//! Time is passed in (`now`), so expiry is tested without sleeping. The
//! table is bounded globally and per port: past a limit a *new* connection
//! is refused (and counted by the caller), while established ones keep
//! going. Expired entries are reaped lazily, on lookup and by `expire`.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::fdb::{keyed_hash, KeyedHash};
use std::time::{Duration, Instant};

/// IP protocol numbers the tracker understands.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// A connection's addresses and ports as one packet carries them. For ICMP
/// echo, `src_port` holds the identifier and `dst_port` is 0. `zone` is
/// the network: networks share nothing, so the same addresses on two
/// networks are two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub zone: u32,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Tuple {
    /// The tuple of a packet going the other way.
    pub fn reversed(&self) -> Tuple {
        let echo = matches!(self.proto, ICMP | ICMPV6);
        Tuple {
            zone: self.zone,
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            // An echo reply carries the request's identifier.
            src_port: if echo { self.src_port } else { self.dst_port },
            dst_port: if echo { self.dst_port } else { self.src_port },
        }
    }
}

/// The TCP flags the tracker reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// What one packet says, as the tracker needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Tcp(TcpFlags),
    Udp,
    /// ICMP or ICMPv6 echo request (`true`) or reply.
    Echo {
        request: bool,
    },
    /// An ICMP error quoting a packet of `quoted` (the quoted packet's own
    /// tuple, as it went out).
    IcmpError {
        quoted: Tuple,
    },
    /// Any other protocol: tracked by addresses alone.
    Other,
}

impl Segment {
    /// Whether a packet like this may start a connection: a plain SYN, an
    /// echo request, any datagram; not an ICMP error, which only relates.
    pub fn starts(self) -> bool {
        match self {
            Segment::Tcp(f) => f.syn && !f.ack && !f.rst,
            Segment::Echo { request } => request,
            Segment::IcmpError { .. } => false,
            Segment::Udp | Segment::Other => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// A SYN was seen, no answer yet.
    SynSent,
    /// The SYN was answered with SYN-ACK.
    SynReceived,
    Established,
    /// One side sent FIN.
    Closing,
    /// Both sides sent FIN.
    TimeWait,
    /// A reset ended it.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Tcp(TcpState),
    /// UDP, echo or other: `replied` once the other side answered.
    Datagram {
        replied: bool,
    },
}

/// Which way a packet goes in its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Original,
    Reply,
}

/// The tracker's answer for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// The first packet of a connection, now tracked.
    New,
    /// A packet of a tracked connection, in the direction given.
    Established(Dir),
    /// An ICMP error about a tracked connection.
    Related,
    /// Not a connection start and not part of one (a TCP segment without
    /// SYN for an unknown flow, an ICMP error about nothing tracked).
    Invalid,
    /// A new connection refused: a limit is reached.
    Full,
}

/// How long an idle entry lives, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub tcp_time_wait: Duration,
    pub tcp_closed: Duration,
    pub datagram_unreplied: Duration,
    pub datagram_replied: Duration,
}

impl Default for Timeouts {
    /// Linux's defaults, but a day (not five) for an idle established TCP
    /// connection: a lab's table should not fill with abandoned flows.
    fn default() -> Timeouts {
        let s = Duration::from_secs;
        Timeouts {
            tcp_syn: s(120),
            tcp_established: s(86_400),
            tcp_closing: s(120),
            tcp_time_wait: s(120),
            tcp_closed: s(10),
            datagram_unreplied: s(30),
            datagram_replied: s(120),
        }
    }
}

/// Limits on tracked connections; past one, new connections are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub global: usize,
    pub per_port: usize,
}

impl Default for Limits {
    /// 256 Ki connections in all (about 30 MiB), 32 Ki per port: one busy
    /// endpoint cannot take the whole table.
    fn default() -> Limits {
        Limits {
            global: 262_144,
            per_port: 32_768,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// The tuple of the first packet.
    original: Tuple,
    /// The tuple its replies carry: the original reversed, or, for a
    /// translated connection, as the translation makes them.
    reply: Tuple,
    /// The NAT port (or echo id) the connection holds, given back when it
    /// goes.
    nat_port: Option<u16>,
    state: State,
    /// The port whose limit the entry counts against.
    port: u32,
    last_seen: Instant,
    packets: [u64; 2],
}

/// A tracked connection, for `flows dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub original: Tuple,
    /// Differs from `original.reversed()` for a translated connection.
    pub reply: Tuple,
    pub state: State,
    pub port: u32,
    pub idle: Duration,
    /// Packets in the original and the reply direction.
    pub packets: [u64; 2],
}

/// The connection table. Tuples come off the wire, so the maps are keyed
/// with a per-table seed, as the FDB is ([`crate::fdb::KeyedHash`]).
#[derive(Debug)]
pub struct Conntrack {
    /// By original tuple.
    entries: HashMap<Tuple, Entry, KeyedHash>,
    /// Reply tuple to original tuple.
    replies: HashMap<Tuple, Tuple, KeyedHash>,
    per_port: HashMap<u32, usize>,
    /// NAT ports of removed connections, for their allocator: (zone,
    /// protocol, port).
    freed: Vec<(u32, u8, u16)>,
    limits: Limits,
    timeouts: Timeouts,
    /// When a full table was last swept for expired entries: at most once
    /// a second, so a flood of new connections at the limit costs a lookup
    /// each, not a scan each.
    last_sweep: Option<Instant>,
}

/// How often a full table may be swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl Default for Conntrack {
    fn default() -> Conntrack {
        Conntrack::new(Limits::default(), Timeouts::default())
    }
}

impl Conntrack {
    pub fn new(limits: Limits, timeouts: Timeouts) -> Conntrack {
        Conntrack {
            entries: HashMap::with_hasher(keyed_hash()),
            replies: HashMap::with_hasher(keyed_hash()),
            per_port: HashMap::new(),
            freed: Vec::new(),
            limits,
            timeouts,
            last_sweep: None,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Tracks one packet of `tuple` entering through `port`.
    pub fn track(&mut self, tuple: Tuple, seg: Segment, port: u32, now: Instant) -> Track {
        self.track_translated(tuple, seg, port, now, None)
    }

    /// As [`Conntrack::track`]; a new connection is translated: its
    /// replies carry `reply.0`, and it holds NAT port `reply.1`.
    pub fn track_translated(
        &mut self,
        tuple: Tuple,
        seg: Segment,
        port: u32,
        now: Instant,
        reply: Option<(Tuple, Option<u16>)>,
    ) -> Track {
        if let Segment::IcmpError { quoted } = seg {
            return match self.find(&quoted, now) {
                Some(_) => Track::Related,
                None => Track::Invalid,
            };
        }
        if let Some((key, dir)) = self.find(&tuple, now) {
            let entry = self.entries.get_mut(&key).expect("found above");
            entry.last_seen = now;
            entry.packets[dir as usize] += 1;
            entry.state = advance(entry.state, seg, dir);
            return Track::Established(dir);
        }
        // Mid-stream or stray TCP, an echo reply: no state to join.
        if !seg.starts() {
            return Track::Invalid;
        }
        let state = match seg {
            Segment::Tcp(_) => State::Tcp(TcpState::SynSent),
            _ => State::Datagram { replied: false },
        };
        let used = self.per_port.get(&port).copied().unwrap_or(0);
        if self.entries.len() >= self.limits.global || used >= self.limits.per_port {
            let due = self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_INTERVAL);
            if due {
                self.last_sweep = Some(now);
                self.expire(now);
            }
            let used = self.per_port.get(&port).copied().unwrap_or(0);
            if self.entries.len() >= self.limits.global || used >= self.limits.per_port {
                return Track::Full;
            }
        }
        let (reply, nat_port) = reply.unwrap_or((tuple.reversed(), None));
        self.entries.insert(
            tuple,
            Entry {
                original: tuple,
                reply,
                nat_port,
                state,
                port,
                last_seen: now,
                packets: [1, 0],
            },
        );
        self.replies.insert(reply, tuple);
        *self.per_port.entry(port).or_insert(0) += 1;
        Track::New
    }

    /// Tracks a packet only if it belongs to a live connection (or is an
    /// ICMP error about one): a packet a policy blocked may still be a
    /// reply, but must not start a connection. `None` if it belongs to
    /// nothing tracked.
    pub fn track_existing(&mut self, tuple: Tuple, seg: Segment, now: Instant) -> Option<Track> {
        if let Segment::IcmpError { quoted } = seg {
            return self.find(&quoted, now).map(|_| Track::Related);
        }
        let (key, dir) = self.find(&tuple, now)?;
        let entry = self.entries.get_mut(&key).expect("found above");
        entry.last_seen = now;
        entry.packets[dir as usize] += 1;
        entry.state = advance(entry.state, seg, dir);
        Some(Track::Established(dir))
    }

    /// Counts `packets` the kernel forwarded for an offloaded flow in the
    /// connection `tuple` belongs to (either way), as if they had passed
    /// here: the connection stays alive while they flow. True while the
    /// connection may stay offloaded: TCP established, or a datagram flow
    /// the other side answered.
    pub fn refresh(&mut self, tuple: &Tuple, packets: u64, now: Instant) -> bool {
        let Some((key, dir)) = self.find(tuple, now) else {
            return false;
        };
        let entry = self.entries.get_mut(&key).expect("found above");
        if packets > 0 {
            entry.last_seen = now;
            entry.packets[dir as usize] += packets;
        }
        matches!(
            entry.state,
            State::Tcp(TcpState::Established) | State::Datagram { replied: true }
        )
    }

    /// What [`Conntrack::track`] would answer, changing nothing (for
    /// `trace`); with the state of the connection found.
    pub fn peek(
        &self,
        tuple: &Tuple,
        seg: Segment,
        port: u32,
        now: Instant,
    ) -> (Track, Option<State>) {
        let live = |t: &Tuple| -> Option<(&Entry, Dir)> {
            let (e, dir) = match self.entries.get(t) {
                Some(e) => (e, Dir::Original),
                None => (&self.entries[self.replies.get(t)?], Dir::Reply),
            };
            (now.saturating_duration_since(e.last_seen) < self.timeout(e.state)).then_some((e, dir))
        };
        if let Segment::IcmpError { quoted } = seg {
            return match live(&quoted) {
                Some((e, _)) => (Track::Related, Some(e.state)),
                None => (Track::Invalid, None),
            };
        }
        if let Some((e, dir)) = live(tuple) {
            return (Track::Established(dir), Some(e.state));
        }
        if !seg.starts() {
            return (Track::Invalid, None);
        }
        let used = self.per_port.get(&port).copied().unwrap_or(0);
        if self.entries.len() >= self.limits.global || used >= self.limits.per_port {
            return (Track::Full, None);
        }
        (Track::New, None)
    }

    /// The original tuple of the live connection `tuple` belongs to, and
    /// the direction; an expired one is removed.
    fn find(&mut self, tuple: &Tuple, now: Instant) -> Option<(Tuple, Dir)> {
        let (key, dir) = if self.entries.contains_key(tuple) {
            (*tuple, Dir::Original)
        } else {
            (*self.replies.get(tuple)?, Dir::Reply)
        };
        let entry = &self.entries[&key];
        if now.saturating_duration_since(entry.last_seen) >= self.timeout(entry.state) {
            self.remove(&key);
            return None;
        }
        Some((key, dir))
    }

    fn timeout(&self, state: State) -> Duration {
        let t = &self.timeouts;
        match state {
            State::Tcp(TcpState::SynSent | TcpState::SynReceived) => t.tcp_syn,
            State::Tcp(TcpState::Established) => t.tcp_established,
            State::Tcp(TcpState::Closing) => t.tcp_closing,
            State::Tcp(TcpState::TimeWait) => t.tcp_time_wait,
            State::Tcp(TcpState::Closed) => t.tcp_closed,
            State::Datagram { replied: false } => t.datagram_unreplied,
            State::Datagram { replied: true } => t.datagram_replied,
        }
    }

    fn remove(&mut self, key: &Tuple) {
        if let Some(e) = self.entries.remove(key) {
            self.replies.remove(&e.reply);
            if let Some(port) = e.nat_port {
                self.freed.push((e.original.zone, e.original.proto, port));
            }
            if let Some(n) = self.per_port.get_mut(&e.port) {
                *n -= 1;
                if *n == 0 {
                    self.per_port.remove(&e.port);
                }
            }
        }
    }

    /// Removes every expired entry; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let dead: Vec<Tuple> = self
            .entries
            .values()
            .filter(|e| now.saturating_duration_since(e.last_seen) >= self.timeout(e.state))
            .map(|e| e.original)
            .collect();
        for key in &dead {
            self.remove(key);
        }
        dead.len()
    }

    /// Forgets a port's connections (the port is gone).
    pub fn forget_port(&mut self, port: u32) -> usize {
        let theirs: Vec<Tuple> = self
            .entries
            .values()
            .filter(|e| e.port == port)
            .map(|e| e.original)
            .collect();
        for key in &theirs {
            self.remove(key);
        }
        theirs.len()
    }

    /// The connection `tuple` belongs to, live or not: its original and
    /// reply tuples, and which of them `tuple` is.
    pub fn conn(&self, tuple: &Tuple) -> Option<(Tuple, Tuple, Dir)> {
        if let Some(e) = self.entries.get(tuple) {
            return Some((e.original, e.reply, Dir::Original));
        }
        let e = &self.entries[self.replies.get(tuple)?];
        Some((e.original, e.reply, Dir::Reply))
    }

    /// Whether a connection's replies already carry `reply`.
    pub fn reply_taken(&self, reply: &Tuple) -> bool {
        self.replies.contains_key(reply) || self.entries.contains_key(reply)
    }

    /// Removes the closed and time-wait translated connections of `zone`
    /// and `proto` (their ports are wanted for new ones); how many.
    pub fn reclaim_closed(&mut self, zone: u32, proto: u8) -> usize {
        let done: Vec<Tuple> = self
            .entries
            .values()
            .filter(|e| {
                e.original.zone == zone
                    && e.original.proto == proto
                    && e.nat_port.is_some()
                    && matches!(e.state, State::Tcp(TcpState::TimeWait | TcpState::Closed))
            })
            .map(|e| e.original)
            .collect();
        for key in &done {
            self.remove(key);
        }
        done.len()
    }

    /// NAT ports given back since the last call: (zone, protocol, port).
    pub fn take_freed(&mut self) -> Vec<(u32, u8, u16)> {
        std::mem::take(&mut self.freed)
    }

    /// Every live connection.
    pub fn dump(&self, now: Instant) -> Vec<ConnInfo> {
        self.entries
            .values()
            .map(|e| ConnInfo {
                original: e.original,
                reply: e.reply,
                state: e.state,
                port: e.port,
                idle: now.saturating_duration_since(e.last_seen),
                packets: e.packets,
            })
            .collect()
    }
}

/// The state after one more packet of the connection.
fn advance(state: State, seg: Segment, dir: Dir) -> State {
    match (state, seg) {
        (State::Tcp(s), Segment::Tcp(f)) => State::Tcp(if f.rst {
            TcpState::Closed
        } else {
            match (s, dir) {
                (TcpState::SynSent, Dir::Reply) if f.syn && f.ack => TcpState::SynReceived,
                (TcpState::SynReceived, Dir::Original) if f.ack && !f.syn => {
                    if f.fin {
                        TcpState::Closing
                    } else {
                        TcpState::Established
                    }
                }
                (TcpState::Established, _) if f.fin => TcpState::Closing,
                (TcpState::Closing, _) if f.fin => TcpState::TimeWait,
                // A new SYN after the close reopens the tuple.
                (TcpState::TimeWait | TcpState::Closed, Dir::Original) if f.syn && !f.ack => {
                    TcpState::SynSent
                }
                (s, _) => s,
            }
        }),
        (State::Datagram { replied }, _) => State::Datagram {
            replied: replied || dir == Dir::Reply,
        },
        (s, _) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_tuple() -> Tuple {
        Tuple {
            zone: 1,
            proto: TCP,
            src: "10.0.0.2".parse().unwrap(),
            dst: "10.0.0.3".parse().unwrap(),
            src_port: 40000,
            dst_port: 80,
        }
    }

    fn flags(syn: bool, ack: bool, fin: bool, rst: bool) -> Segment {
        Segment::Tcp(TcpFlags { syn, ack, fin, rst })
    }

    fn state(ct: &Conntrack, t: &Tuple, now: Instant) -> State {
        ct.dump(now)
            .into_iter()
            .find(|c| c.original == *t)
            .expect("tracked")
            .state
    }

    #[test]
    fn tcp_handshake_data_and_close() {
        let now = Instant::now();
        let mut ct = Conntrack::default();
        let t = tcp_tuple();
        let r = t.reversed();
        assert_eq!(
            ct.track(t, flags(true, false, false, false), 1, now),
            Track::New
        );
        assert_eq!(state(&ct, &t, now), State::Tcp(TcpState::SynSent));
        assert_eq!(
            ct.track(r, flags(true, true, false, false), 2, now),
            Track::Established(Dir::Reply)
        );
        assert_eq!(state(&ct, &t, now), State::Tcp(TcpState::SynReceived));
        ct.track(t, flags(false, true, false, false), 1, now);
        assert_eq!(state(&ct, &t, now), State::Tcp(TcpState::Established));
        ct.track(t, flags(false, true, true, false), 1, now);
        assert_eq!(state(&ct, &t, now), State::Tcp(TcpState::Closing));
        ct.track(r, flags(false, true, true, false), 2, now);
        assert_eq!(state(&ct, &t, now), State::Tcp(TcpState::TimeWait));
        // Time-wait expires after its timeout, not the established one.
        let later = now + Timeouts::default().tcp_time_wait;
        assert_eq!(ct.expire(later), 1);
        assert!(ct.is_empty());
    }

    #[test]
    fn reset_closes_and_stray_segments_are_invalid() {
        let now = Instant::now();
        let mut ct = Conntrack::default();
        let t = tcp_tuple();
        // No SYN: nothing to join.
        assert_eq!(
            ct.track(t, flags(false, true, false, false), 1, now),
            Track::Invalid
        );
        ct.track(t, flags(true, false, false, false), 1, now);
        ct.track(t.reversed(), flags(false, false, false, true), 2, now);
        assert_eq!(state(&ct, &t, now), State::Tcp(TcpState::Closed));
        let t = now + Timeouts::default().tcp_closed;
        assert_eq!(ct.expire(t), 1);
    }

    #[test]
    fn udp_and_echo_by_identifier() {
        let now = Instant::now();
        let mut ct = Conntrack::default();
        let u = Tuple {
            proto: UDP,
            dst_port: 53,
            ..tcp_tuple()
        };
        assert_eq!(ct.track(u, Segment::Udp, 1, now), Track::New);
        assert_eq!(state(&ct, &u, now), State::Datagram { replied: false });
        assert_eq!(
            ct.track(u.reversed(), Segment::Udp, 2, now),
            Track::Established(Dir::Reply)
        );
        assert_eq!(state(&ct, &u, now), State::Datagram { replied: true });
        // An unanswered datagram lives 30 s, an answered one 120 s.
        assert_eq!(ct.expire(now + Duration::from_secs(60)), 0);

        let echo = Tuple {
            proto: ICMP,
            src_port: 7,
            dst_port: 0,
            ..tcp_tuple()
        };
        assert_eq!(
            ct.track(echo, Segment::Echo { request: true }, 1, now),
            Track::New
        );
        let reply = echo.reversed();
        assert_eq!(reply.src_port, 7, "an echo reply carries the request's id");
        assert_eq!(
            ct.track(reply, Segment::Echo { request: false }, 2, now),
            Track::Established(Dir::Reply)
        );
        // A reply with another identifier is no one's.
        let other = Tuple {
            src_port: 8,
            ..reply
        };
        assert_eq!(
            ct.track(other, Segment::Echo { request: false }, 2, now),
            Track::Invalid
        );
    }

    #[test]
    fn icmp_errors_are_related_to_what_they_quote() {
        let now = Instant::now();
        let mut ct = Conntrack::default();
        let u = Tuple {
            proto: UDP,
            ..tcp_tuple()
        };
        ct.track(u, Segment::Udp, 1, now);
        let err_tuple = Tuple {
            zone: 1,
            proto: ICMP,
            src: u.dst,
            dst: u.src,
            src_port: 0,
            dst_port: 0,
        };
        assert_eq!(
            ct.track(err_tuple, Segment::IcmpError { quoted: u }, 2, now),
            Track::Related
        );
        let unknown = Tuple { dst_port: 9, ..u };
        assert_eq!(
            ct.track(err_tuple, Segment::IcmpError { quoted: unknown }, 2, now),
            Track::Invalid
        );
    }

    #[test]
    fn limits_refuse_new_connections_and_keep_old_ones() {
        let now = Instant::now();
        let mut ct = Conntrack::new(
            Limits {
                global: 10,
                per_port: 3,
            },
            Timeouts::default(),
        );
        let nth = |i: u16| Tuple {
            proto: UDP,
            src_port: 1000 + i,
            ..tcp_tuple()
        };
        for i in 0..3 {
            assert_eq!(ct.track(nth(i), Segment::Udp, 1, now), Track::New);
        }
        assert_eq!(ct.track(nth(3), Segment::Udp, 1, now), Track::Full);
        // Established ones keep going, and other ports have room.
        assert_eq!(
            ct.track(nth(0), Segment::Udp, 1, now),
            Track::Established(Dir::Original)
        );
        assert_eq!(ct.track(nth(4), Segment::Udp, 2, now), Track::New);
        // Once an entry expires its slot is free again.
        let later = now + Timeouts::default().datagram_unreplied;
        assert_eq!(ct.track(nth(5), Segment::Udp, 1, later), Track::New);
        assert_eq!(ct.forget_port(1), 1);
        assert!(ct.is_empty());
    }

    #[test]
    fn an_expired_connection_is_new_again() {
        let now = Instant::now();
        let mut ct = Conntrack::default();
        let u = Tuple {
            proto: UDP,
            ..tcp_tuple()
        };
        ct.track(u, Segment::Udp, 1, now);
        let later = now + Timeouts::default().datagram_unreplied;
        // The reply comes too late: the entry is gone, so it is not one.
        assert_eq!(ct.track(u.reversed(), Segment::Udp, 2, later), Track::New);
        assert_eq!(ct.len(), 1);
    }
}
