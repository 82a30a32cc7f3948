//! A minimal synchronous rtnetlink client: the handful of link, address and
//! route operations the switch needs, over a `NETLINK_ROUTE` socket, and the
//! lookups nat mode asks of the host's own tables (route to a destination,
//! IPv4 neighbour entries, an interface's IPv4 addresses).
//!
//! Messages are built and read with `netlink-packet-route`; the socket is a
//! plain blocking `netlink_sys::Socket`. What this module owns is the
//! transaction ([`Netlink::transact`]): one request, its replies, and the ack
//! that ends them, which is the one place kernel refusals are turned into
//! errors.
//!
//! A [`Netlink`] acts in the namespace of the thread that opened it, so open
//! it inside [`super::Netns::run`] to configure a container's links. Every
//! request asks for an acknowledgement and waits for it; a kernel refusal
//! comes back as [`NetlinkError::Kernel`] with the errno, the operation, and
//! the kernel's extended-ack message when it gave one. Each call is one
//! blocking round trip to the kernel: fine on a flow's first packet, not per
//! packet.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use netlink_packet_core::{
    parse_string, parse_u32, DecodeError, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NlasIterator, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeader, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    self, InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkExtentMask, LinkFlags,
    LinkHeader, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourHeader,
    NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use thiserror::Error;

use crate::ifname::{IfName, InvalidIfName};

/// `sizeof(struct nlmsghdr)`: what a capped error echoes of the request.
const NLMSG_HDRLEN: usize = 16;
/// `NLMSGERR_ATTR_MSG` from `<linux/netlink.h>`: the extended-ack text.
const NLMSGERR_ATTR_MSG: u16 = 1;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("{call} (netlink socket): {source}")]
    Sys {
        call: &'static str,
        source: io::Error,
    },
    #[error("{op} {target}: {source}{}", ext_ack(.message))]
    Kernel {
        op: &'static str,
        target: String,
        source: io::Error,
        /// The kernel's extended-ack text, e.g. "MTU greater than device maximum".
        message: Option<String>,
    },
    /// A reply that decoded but lacks what the operation needs (a route
    /// without an output link, an ack without the object asked for).
    #[error("{op} {target}: malformed reply: {what}")]
    Malformed {
        op: &'static str,
        target: String,
        what: &'static str,
    },
    /// A reply the message decoder (`netlink-packet-route`) could not read.
    #[error("{op} {target}: undecodable reply: {source}")]
    Decode {
        op: &'static str,
        target: String,
        source: DecodeError,
    },
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        name: String,
        reason: crate::ifname::IfNameError,
    },
    #[error("prefix length {prefix_len} is too long for {addr}")]
    InvalidPrefix { addr: IpAddr, prefix_len: u8 },
    #[error("no link named {0}")]
    NoSuchLink(String),
    /// The kernel answered with something this client cannot represent.
    #[error("{op} {target}: {what}")]
    Unsupported {
        op: &'static str,
        target: String,
        what: &'static str,
    },
}

fn ext_ack(message: &Option<String>) -> String {
    match message {
        Some(m) => format!(" ({m})"),
        None => String::new(),
    }
}

impl NetlinkError {
    /// The errno of a kernel refusal or failed syscall.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Sys { source, .. } | NetlinkError::Kernel { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// A link as `RTM_GETLINK` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// All zeros when the link has no 6-byte hardware address.
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// All `IFF_*` flags, e.g. `IFF_LOWER_UP`.
    pub flags: u32,
    /// `IFLA_INFO_KIND`: "veth", "tun" (TAP devices too), "dummy", ...;
    /// `None` for links without a driver kind such as physical NICs and `lo`.
    pub kind: Option<String>,
    /// Receive queues (`IFLA_NUM_RX_QUEUES`); 1 if the kernel did not say.
    pub rx_queues: u32,
}

/// Changes applied to one link in one `RTM_NEWLINK` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub up: Option<bool>,
    /// New name; with `netns_fd`, the name the link takes in the target.
    pub name: Option<String>,
    /// Moves the link to the namespace open at this descriptor. The kernel
    /// applies the move before the other changes, and a moved link is down
    /// until set up again (here or later, from inside the target).
    pub netns_fd: Option<RawFd>,
}

/// Where the kernel would send a packet to one IPv4 destination, as
/// `ip route get` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    /// Output link. A local address routes out of `lo` (index 1), so a
    /// caller that forwards out of one link compares this with its index.
    pub oif: u32,
    /// The next hop; `None` when the destination is on-link and is itself
    /// the address to resolve.
    pub gateway: Option<Ipv4Addr>,
    /// The source address the kernel would pick.
    pub prefsrc: Option<Ipv4Addr>,
}

/// Neighbour entry states (`NUD_*`), as bits of [`Neighbour::state`].
pub mod nud {
    pub const NONE: u16 = 0x00;
    pub const INCOMPLETE: u16 = 0x01;
    pub const REACHABLE: u16 = 0x02;
    pub const STALE: u16 = 0x04;
    pub const DELAY: u16 = 0x08;
    pub const PROBE: u16 = 0x10;
    pub const FAILED: u16 = 0x20;
    pub const NOARP: u16 = 0x40;
    pub const PERMANENT: u16 = 0x80;
    /// The states in which the kernel itself sends to the cached address
    /// (its `NUD_VALID`).
    pub const VALID: u16 = REACHABLE | STALE | DELAY | PROBE | PERMANENT | NOARP;
}

/// An IPv4 neighbour (ARP) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// The link-layer address; the kernel reports one only in a
    /// [`nud::VALID`] state, and only 6-byte ones are kept.
    pub mac: Option<[u8; 6]>,
    /// [`nud`] bits.
    pub state: u16,
}

impl Neighbour {
    /// True when frames may be sent to [`Neighbour::mac`] now. STALE, DELAY
    /// and PROBE count: the kernel sends to the cached address in them while
    /// it re-confirms it.
    pub fn usable(&self) -> bool {
        self.mac.is_some() && self.state & nud::VALID != 0
    }
}

/// A neighbour reply, with the flags that say who owns the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NeighEntry {
    neighbour: Neighbour,
    /// `ndm_flags`.
    flags: NeighbourFlags,
    /// `NDA_FLAGS_EXT`, empty when absent.
    flags_ext: NeighbourExtFlags,
}

impl NeighEntry {
    /// True for entries that are not the kernel's to resolve: static ones
    /// (`PERMANENT`, `NOARP`) and ones another agent learned or manages. An
    /// `NTF_USE` update is administrative: the kernel drops `PERMANENT` from
    /// the state and clears the externally-learned, managed and validated
    /// flags the request does not repeat, so these must not get one.
    fn leave_alone(&self) -> bool {
        self.neighbour.state & (nud::PERMANENT | nud::NOARP) != 0
            || self.flags.contains(NeighbourFlags::ExtLearned)
            || self
                .flags_ext
                .intersects(NeighbourExtFlags::Managed | NeighbourExtFlags::ExtValidated)
    }
}

/// A `NETLINK_ROUTE` socket bound to the namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    pub fn open() -> Result<Netlink, NetlinkError> {
        let sys = |call| move |source| NetlinkError::Sys { call, source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(sys("socket"))?;
        socket.bind_auto().map_err(sys("bind"))?;
        // Extended acks carry the kernel's reason in text; capped acks keep
        // error replies from echoing the whole request. Both are best effort:
        // without them errors still carry the errno.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Netlink {
            socket,
            seq: 0,
            buf: Vec::with_capacity(32 * 1024),
        })
    }

    /// The index of the link called `name`, or `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.link_info(name)?.map(|l| l.index))
    }

    /// The link called `name`, or `None` when there is none.
    pub fn link_info(&mut self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let req = encode_link_get(LinkHeader::default(), Some(IfName::checked(name)?));
        self.get_link(req, || name.to_string())
    }

    /// The link with index `index`, or `None` when there is none.
    pub fn link_info_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        let header = LinkHeader {
            index,
            ..Default::default()
        };
        self.get_link(encode_link_get(header, None), || format!("index {index}"))
    }

    /// Every link in this namespace, in the kernel's order.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let mut links = Vec::new();
        self.transact(encode_link_dump(), |reply| {
            if let RouteNetlinkMessage::NewLink(msg) = reply {
                links.push(parse_link(msg));
            }
        })
        .map_err(|f| f.into_error("list links", "(all)".to_string()))?;
        Ok(links)
    }

    fn get_link(
        &mut self,
        req: Request,
        target: impl Fn() -> String,
    ) -> Result<Option<LinkInfo>, NetlinkError> {
        let get = Get {
            op: "get link",
            absent: |f| matches!(f, Failure::Errno(libc::ENODEV, _)),
            missing: "acknowledged without a link",
        };
        let parse = |reply| match reply {
            RouteNetlinkMessage::NewLink(msg) => Some(Ok(parse_link(msg))),
            _ => None,
        };
        self.get_one(req, &get, parse, target)
    }

    /// The one object a get request answers with: the first reply `parse`
    /// recognises, parsed; `None` when the kernel's error says there is none.
    fn get_one<T>(
        &mut self,
        req: Request,
        get: &Get,
        parse: impl Fn(RouteNetlinkMessage) -> Option<Result<T, &'static str>>,
        target: impl Fn() -> String,
    ) -> Result<Option<T>, NetlinkError> {
        let mut found: Option<Result<T, &'static str>> = None;
        let res = self.transact(req, |reply| {
            if found.is_none() {
                found = parse(reply);
            }
        });
        match res {
            Err(f) if (get.absent)(&f) => return Ok(None),
            Err(f) => return Err(f.into_error(get.op, target())),
            Ok(()) => {}
        }
        let what = match found {
            Some(Ok(v)) => return Ok(Some(v)),
            Some(Err(what)) => what,
            None => get.missing,
        };
        Err(NetlinkError::Malformed {
            op: get.op,
            target: target(),
            what,
        })
    }

    /// Applies `change` to link `index` in one request.
    pub fn link_set(&mut self, index: u32, change: &LinkChange) -> Result<(), NetlinkError> {
        let req = encode_link_set(index, change)?;
        self.transact(req, |_| ())
            .map_err(|f| f.into_error("set link", format!("index {index}")))
    }

    /// Creates a link of a kind that needs no parameters ("bridge", "dummy",
    /// ...), down.
    pub fn link_add(&mut self, name: &str, kind: &str) -> Result<(), NetlinkError> {
        let req = encode_link_add(&IfName::checked(name)?, kind);
        self.transact(req, |_| ())
            .map_err(|f| f.into_error("add link", format!("{name} ({kind})")))
    }

    /// Creates a veth pair `name` <-> `peer_name`, both down, in this namespace.
    pub fn veth_create(&mut self, name: &str, peer_name: &str) -> Result<(), NetlinkError> {
        let req = encode_veth_create(name, peer_name, None)?;
        self.transact(req, |_| ())
            .map_err(|f| f.into_error("create veth", format!("{name}/{peer_name}")))
    }

    /// Creates a veth pair, both ends down: `name` in this namespace and
    /// `peer_name` directly in the namespace open at `peer_netns_fd`. Made
    /// there, the peer never exists under its name here, so it cannot clash
    /// with a link of this namespace, and there is no half-moved pair to
    /// clean up if a later step fails.
    pub fn veth_create_in(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_netns_fd: RawFd,
    ) -> Result<(), NetlinkError> {
        let req = encode_veth_create(name, peer_name, Some(peer_netns_fd))?;
        self.transact(req, |_| ()).map_err(|f| {
            f.into_error(
                "create veth",
                format!("{name}/{peer_name} (peer in netns fd {peer_netns_fd})"),
            )
        })
    }

    /// Creates a VXLAN device in external (collect-metadata) mode on UDP
    /// `port`: one device carries every VNI, the tunnel key of each packet
    /// (VNI, remote and local address) set and read by TC programs.
    /// Learning is off: the switch's CA->PA table is the only source of
    /// destinations. IPv4 outer headers, UDP checksum zero (RFC 7348's
    /// SHOULD for IPv4, and the kernel's default).
    pub fn vxlan_create(&mut self, name: &str, port: u16) -> Result<(), NetlinkError> {
        let req = encode_vxlan_create(name, port)?;
        self.transact(req, |_| ())
            .map_err(|f| f.into_error("create vxlan", format!("{name} (port {port})")))
    }

    /// Deletes link `index` (both ends, for a veth).
    pub fn link_del(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let req = Request::new(RouteNetlinkMessage::DelLink(msg), 0);
        self.transact(req, |_| ())
            .map_err(|f| f.into_error("delete link", format!("index {index}")))
    }

    /// Adds `addr/prefix_len` to link `index`. An address already present is
    /// success. IPv6 addresses skip duplicate detection so they are usable at
    /// once.
    pub fn addr_add(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let req = encode_addr_add(index, addr, prefix_len)?;
        match self.transact(req, |_| ()) {
            Ok(()) | Err(Failure::Errno(libc::EEXIST, _)) => Ok(()),
            Err(f) => Err(f.into_error(
                "add address",
                format!("{addr}/{prefix_len} to index {index}"),
            )),
        }
    }

    /// Adds a default route via `gateway` out of link `index` to the main
    /// table. An existing default route of the same family (whatever its
    /// gateway) counts as success. For IPv4 the link must be up and the
    /// gateway on a connected subnet.
    pub fn route_add_default(&mut self, index: u32, gateway: IpAddr) -> Result<(), NetlinkError> {
        let req = encode_route_add_default(index, gateway);
        match self.transact(req, |_| ()) {
            Ok(()) | Err(Failure::Errno(libc::EEXIST, _)) => Ok(()),
            Err(f) => Err(f.into_error(
                "add default route",
                format!("via {gateway} dev index {index}"),
            )),
        }
    }

    /// The route the kernel would use for a packet to `dst` from this host
    /// (`ip route get`), or `None` when there is none: no matching route
    /// (`ENETUNREACH`), or one of type unreachable (`EHOSTUNREACH`),
    /// prohibit (`EACCES`) or blackhole (`EINVAL` without an extended-ack
    /// message: the request's form is fixed and tested, so that is the
    /// route's answer, not a refusal of the request). A route via an IPv6
    /// next hop (`RTA_VIA`) is [`NetlinkError::Unsupported`]: there is no
    /// IPv4 address to ARP for. Multicast and broadcast destinations come
    /// back as routes like any other.
    pub fn route_get(&mut self, dst: Ipv4Addr) -> Result<Option<RouteInfo>, NetlinkError> {
        let target = || format!("to {dst}");
        let get = Get {
            op: "get route",
            absent: |f| {
                matches!(
                    f,
                    Failure::Errno(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES, _)
                        | Failure::Errno(libc::EINVAL, None)
                )
            },
            missing: "acknowledged without a route",
        };
        let parse = |reply| match reply {
            RouteNetlinkMessage::NewRoute(msg) => Some(parse_route(msg)),
            _ => None,
        };
        match self.get_one(encode_route_get(dst), &get, parse, target)? {
            Some(RouteReply { via: true, .. }) => Err(NetlinkError::Unsupported {
                op: get.op,
                target: target(),
                what: "the route's next hop is an IPv6 address (RTA_VIA)",
            }),
            Some(RouteReply { info, .. }) => Ok(Some(info)),
            None => Ok(None),
        }
    }

    /// The IPv4 neighbour entry for `ip` on link `ifindex`, or `None` when
    /// the kernel has none. An entry exists in every state, including
    /// INCOMPLETE and FAILED; see [`Neighbour::usable`].
    pub fn neigh_get(
        &mut self,
        ifindex: u32,
        ip: Ipv4Addr,
    ) -> Result<Option<Neighbour>, NetlinkError> {
        Ok(self.neigh_entry(ifindex, ip)?.map(|e| e.neighbour))
    }

    fn neigh_entry(
        &mut self,
        ifindex: u32,
        ip: Ipv4Addr,
    ) -> Result<Option<NeighEntry>, NetlinkError> {
        let get = Get {
            op: "get neighbour",
            absent: |f| matches!(f, Failure::Errno(libc::ENOENT, _)),
            missing: "acknowledged without a neighbour",
        };
        let parse = |reply| match reply {
            RouteNetlinkMessage::NewNeighbour(msg) => Some(Ok(parse_neigh(msg))),
            _ => None,
        };
        self.get_one(encode_neigh_get(ifindex, ip), &get, parse, || {
            format!("{ip} on index {ifindex}")
        })
    }

    /// Asks the kernel to resolve `ip` on link `ifindex` as if a packet were
    /// waiting for it, and returns at once; poll [`Netlink::neigh_get`] for
    /// the answer. With no entry, or a FAILED or NONE one, ARP starts
    /// (INCOMPLETE, then REACHABLE or FAILED); a STALE entry is re-confirmed
    /// (DELAY, PROBE); a REACHABLE one is only marked used. Marking used
    /// matters: frames the switch sends itself never pass the kernel's
    /// neighbour code, so an entry it relies on ages out unless this is
    /// called while the flow lives.
    ///
    /// This is `RTM_NEWNEIGH` with `NTF_USE`, `NLM_F_CREATE` and state NONE:
    /// an entry it creates is an ordinary one the kernel may collect.
    /// Entries that are not the kernel's to resolve (PERMANENT, NOARP,
    /// externally learned, managed or validated) are left untouched, since
    /// `NTF_USE` would demote or strip them; that check is a separate query,
    /// so an entry made permanent in between is not protected. No route is
    /// needed: the request goes out of `ifindex`, from an address the
    /// kernel picks for that link.
    pub fn neigh_resolve(&mut self, ifindex: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        if let Some(entry) = self.neigh_entry(ifindex, ip)? {
            if entry.leave_alone() {
                return Ok(());
            }
        }
        self.transact(encode_neigh_use(ifindex, ip), |_| ())
            .map_err(|f| f.into_error("resolve neighbour", format!("{ip} on index {ifindex}")))
    }

    /// The IPv4 addresses on link `ifindex` with their prefix lengths, in
    /// the kernel's order (primary addresses first); empty when the link has
    /// none or does not exist. For a point-to-point address this is the
    /// local end.
    pub fn ipv4_addrs(&mut self, ifindex: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let mut addrs = Vec::new();
        let mut bad = None;
        // Without strict checking the kernel dumps every link's addresses;
        // the index filter is ours.
        let res = self.transact(encode_addr_dump(AddressFamily::Inet, ifindex), |reply| {
            let RouteNetlinkMessage::NewAddress(msg) = reply else {
                return;
            };
            match parse_ipv4_addr(msg) {
                Ok(Some((index, addr, prefix_len))) if index == ifindex => {
                    addrs.push((addr, prefix_len))
                }
                Ok(_) => {}
                Err(what) => bad = bad.or(Some(what)),
            }
        });
        let target = || format!("IPv4 on index {ifindex}");
        res.map_err(|f| f.into_error("list addresses", target()))?;
        match bad {
            Some(what) => Err(NetlinkError::Malformed {
                op: "list addresses",
                target: target(),
                what,
            }),
            None => Ok(addrs),
        }
    }

    /// Sends `req` with a fresh sequence number and reads replies until the
    /// ack (or `NLMSG_DONE`), handing each decoded data message to
    /// `on_reply`. A reply the decoder cannot read does not stop the
    /// reading, so the socket is left clean for the next request; it fails
    /// the transaction once the kernel has acknowledged it.
    fn transact(
        &mut self,
        req: Request,
        mut on_reply: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), Failure> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = req.encode(seq);
        loop {
            match self.socket.send(&bytes, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Io("send", e)),
            }
        }
        let mut undecodable = None;
        loop {
            self.recv()?;
            if let Some(done) = read_datagram(&self.buf, seq, &mut on_reply, &mut undecodable) {
                return match (done, undecodable) {
                    (Ok(()), Some(e)) => Err(Failure::Decode(e)),
                    (done, _) => done,
                };
            }
        }
    }

    /// Receives one datagram into `self.buf`, growing it first if the
    /// waiting datagram is larger than its capacity.
    fn recv(&mut self) -> Result<(), Failure> {
        let retry = |res: io::Result<usize>| match res {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(Failure::Io("recv", e)),
            Ok(n) => Ok(Some(n)),
        };
        loop {
            // MSG_TRUNC makes the return value the datagram's full size.
            self.buf.clear();
            let peeked = self
                .socket
                .recv(&mut self.buf, libc::MSG_PEEK | libc::MSG_TRUNC);
            let Some(want) = retry(peeked)? else {
                continue;
            };
            self.buf.clear();
            self.buf.reserve(want);
            if retry(self.socket.recv(&mut self.buf, 0))?.is_some() {
                return Ok(());
            }
        }
    }
}

/// Reads the messages of one datagram that answer request `seq`: data
/// messages go to `on_reply` (the first undecodable one into
/// `undecodable`), and the ack, error or `NLMSG_DONE` that ends the
/// transaction is returned. `None`: the replies go on in another datagram.
fn read_datagram(
    dgram: &[u8],
    seq: u32,
    on_reply: &mut impl FnMut(RouteNetlinkMessage),
    undecodable: &mut Option<DecodeError>,
) -> Option<Result<(), Failure>> {
    let mut rest = dgram;
    while !rest.is_empty() {
        let frame = match NetlinkBuffer::new_checked(rest) {
            Ok(frame) => frame,
            Err(e) => return Some(Err(Failure::Decode(e))),
        };
        let len = frame.length() as usize;
        let (bytes, after) = rest.split_at(len);
        rest = after.get(align4(len) - len..).unwrap_or(&[]);
        // Replies to an earlier, abandoned request are not ours.
        if frame.sequence_number() != seq {
            continue;
        }
        let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
            Ok(msg) => msg,
            Err(e) => {
                undecodable.get_or_insert(e);
                continue;
            }
        };
        match msg.payload {
            // A dump ends here; a negative status is an error that cut it
            // short.
            NetlinkPayload::Done(done) if done.code < 0 => {
                return Some(Err(Failure::Errno(-done.code, None)))
            }
            NetlinkPayload::Done(_) => return Some(Ok(())),
            NetlinkPayload::Error(err) => {
                return Some(match err.code {
                    None => Ok(()),
                    Some(code) => Err(Failure::Errno(
                        -code.get(),
                        ext_ack_text(msg.header.flags, &err.header),
                    )),
                })
            }
            NetlinkPayload::InnerMessage(reply) => on_reply(reply),
            _ => {}
        }
    }
    None
}

/// The kernel's extended-ack text in an `NLMSG_ERROR`, if it sent one.
/// `echo` is what follows the error code: the request (only its header
/// when `NLM_F_CAPPED`), then, with `NLM_F_ACK_TLVS`, the attributes.
fn ext_ack_text(flags: u16, echo: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        parse_u32(echo.get(..4)?).ok()? as usize
    };
    NlasIterator::new(echo.get(align4(echoed)..)?)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .and_then(|nla| parse_string(nla.value()).ok())
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// What a get request expects: its name in errors, which failure means
/// "no such object", and what to say of an ack without one.
struct Get {
    op: &'static str,
    absent: fn(&Failure) -> bool,
    missing: &'static str,
}

/// How a request failed, before the operation's context is attached.
#[derive(Debug)]
enum Failure {
    Io(&'static str, io::Error),
    Errno(i32, Option<String>),
    Decode(DecodeError),
}

impl Failure {
    fn into_error(self, op: &'static str, target: String) -> NetlinkError {
        match self {
            Failure::Io(call, source) => NetlinkError::Sys { call, source },
            Failure::Errno(errno, message) => NetlinkError::Kernel {
                op,
                target,
                source: io::Error::from_raw_os_error(errno),
                message,
            },
            Failure::Decode(source) => NetlinkError::Decode { op, target, source },
        }
    }
}

impl From<InvalidIfName> for NetlinkError {
    fn from(e: InvalidIfName) -> NetlinkError {
        NetlinkError::InvalidName {
            name: e.name,
            reason: e.reason,
        }
    }
}

// ---- requests ----

/// A request: the message, and the flags beyond `NLM_F_REQUEST |
/// NLM_F_ACK` that give it its meaning (`NLM_F_CREATE`, `NLM_F_EXCL`,
/// `NLM_F_DUMP`).
#[derive(Debug)]
struct Request {
    message: RouteNetlinkMessage,
    flags: u16,
}

impl Request {
    fn new(message: RouteNetlinkMessage, flags: u16) -> Request {
        Request { message, flags }
    }

    /// The request as sent: asking for an ack, numbered `seq`.
    fn encode(self, seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | self.flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(self.message));
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        bytes
    }
}

/// `RTM_GETLINK` for one link, by `header.index` or by name, without the
/// statistics (which nothing here reads).
fn encode_link_get(header: LinkHeader, name: Option<IfName>) -> Request {
    let mut msg = LinkMessage::default();
    msg.header = header;
    if let Some(name) = name {
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    }
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    Request::new(RouteNetlinkMessage::GetLink(msg), 0)
}

/// An `RTM_GETLINK` dump of every link, without statistics.
fn encode_link_dump() -> Request {
    let mut req = encode_link_get(LinkHeader::default(), None);
    req.flags = NLM_F_DUMP;
    req
}

fn encode_link_set(index: u32, change: &LinkChange) -> Result<Request, NetlinkError> {
    let name = change.name.as_deref().map(IfName::checked).transpose()?;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    match change.up {
        Some(true) => {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        Some(false) => msg.header.change_mask = LinkFlags::Up,
        None => {}
    }
    let attrs = &mut msg.attributes;
    if let Some(fd) = change.netns_fd {
        attrs.push(LinkAttribute::NetNsFd(fd));
    }
    if let Some(name) = name {
        attrs.push(LinkAttribute::IfName(name.to_string()));
    }
    if let Some(mtu) = change.mtu {
        attrs.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = change.mac {
        attrs.push(LinkAttribute::Address(mac.to_vec()));
    }
    Ok(Request::new(RouteNetlinkMessage::NewLink(msg), 0))
}

/// `RTM_NEWLINK` creating `name`, failing if it exists.
fn new_link(name: &IfName, info: Vec<link::LinkInfo>) -> Request {
    let mut msg = LinkMessage::default();
    msg.attributes = vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::LinkInfo(info),
    ];
    Request::new(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
}

fn encode_link_add(name: &IfName, kind: &str) -> Request {
    new_link(name, vec![link::LinkInfo::Kind(InfoKind::from(kind))])
}

/// A veth pair; with `peer_netns_fd`, the peer is made in that namespace.
fn encode_veth_create(
    name: &str,
    peer_name: &str,
    peer_netns_fd: Option<RawFd>,
) -> Result<Request, NetlinkError> {
    let name = IfName::checked(name)?;
    let peer_name = IfName::checked(peer_name)?;
    // The peer is described like a link of its own: ifinfomsg, then attrs.
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(peer_name.to_string()));
    if let Some(fd) = peer_netns_fd {
        peer.attributes.push(LinkAttribute::NetNsFd(fd));
    }
    let info = vec![
        link::LinkInfo::Kind(InfoKind::Veth),
        link::LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ];
    Ok(new_link(&name, info))
}

fn encode_vxlan_create(name: &str, port: u16) -> Result<Request, NetlinkError> {
    let name = IfName::checked(name)?;
    let info = vec![
        link::LinkInfo::Kind(InfoKind::Vxlan),
        link::LinkInfo::Data(InfoData::Vxlan(vec![
            InfoVxlan::CollectMetadata(true),
            InfoVxlan::Port(port),
            InfoVxlan::Learning(false),
            InfoVxlan::Ttl(64),
            InfoVxlan::UDPCsum(false),
        ])),
    ];
    Ok(new_link(&name, info))
}

fn encode_addr_add(index: u32, addr: IpAddr, prefix_len: u8) -> Result<Request, NetlinkError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(NetlinkError::InvalidPrefix { addr, prefix_len });
    }
    let mut msg = AddressMessage::default();
    msg.header = AddressHeader {
        family: family(&addr),
        prefix_len,
        flags: AddressHeaderFlags::empty(),
        scope: AddressScope::Universe,
        index,
    };
    msg.attributes = vec![
        AddressAttribute::Local(addr),
        AddressAttribute::Address(addr),
    ];
    if addr.is_ipv6() {
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    Ok(Request::new(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    ))
}

fn encode_route_add_default(index: u32, gateway: IpAddr) -> Request {
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        address_family: family(&gateway),
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Static,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..Default::default()
    };
    msg.attributes = vec![
        RouteAttribute::Gateway(RouteAddress::from(gateway)),
        RouteAttribute::Oif(index),
    ];
    Request::new(
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// `RTM_GETROUTE` for one IPv4 destination, like `ip route get`.
fn encode_route_get(dst: Ipv4Addr) -> Request {
    let mut msg = RouteMessage::default();
    // A /32 destination, everything else unset.
    msg.header = RouteHeader {
        address_family: AddressFamily::Inet,
        destination_prefix_length: 32,
        ..Default::default()
    };
    msg.attributes = vec![RouteAttribute::Destination(RouteAddress::Inet(dst))];
    Request::new(RouteNetlinkMessage::GetRoute(msg), 0)
}

fn neigh_message(ifindex: u32, ip: Ipv4Addr, flags: NeighbourFlags) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header = NeighbourHeader {
        family: AddressFamily::Inet,
        ifindex,
        state: NeighbourState::None,
        flags,
        ..Default::default()
    };
    msg.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))];
    msg
}

/// `RTM_GETNEIGH` for one entry; the kernel wants the link and the address
/// and nothing else.
fn encode_neigh_get(ifindex: u32, ip: Ipv4Addr) -> Request {
    let msg = neigh_message(ifindex, ip, NeighbourFlags::empty());
    Request::new(RouteNetlinkMessage::GetNeighbour(msg), 0)
}

/// `RTM_NEWNEIGH` with `NTF_USE`: the kernel creates the entry if needed
/// (`NLM_F_CREATE`; not `NLM_F_EXCL`, an existing one is fine) and calls
/// `neigh_event_send` on it. Under `NTF_USE` the kernel ignores the state
/// for the update, but reads `PERMANENT` in it when creating (exempting the
/// entry from garbage collection), so it is NONE. No `NDA_LLADDR`: the
/// address is the kernel's to learn.
fn encode_neigh_use(ifindex: u32, ip: Ipv4Addr) -> Request {
    let msg = neigh_message(ifindex, ip, NeighbourFlags::Use);
    Request::new(RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE)
}

/// An `RTM_GETADDR` dump of one family. The index is set for kernels with
/// strict checking, which then filter; others ignore it.
fn encode_addr_dump(family: AddressFamily, ifindex: u32) -> Request {
    let mut msg = AddressMessage::default();
    msg.header.family = family;
    msg.header.index = ifindex;
    Request::new(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)
}

fn family(addr: &IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

// ---- replies ----

/// An `RTM_NEWLINK`.
fn parse_link(msg: LinkMessage) -> LinkInfo {
    let flags = msg.header.flags.bits();
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        flags,
        kind: None,
        rx_queues: 1,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name = name,
            LinkAttribute::Address(mac) => {
                if let Ok(mac) = mac.try_into() {
                    info.mac = mac;
                }
            }
            LinkAttribute::Mtu(mtu) => info.mtu = mtu,
            LinkAttribute::NumRxQueues(n) => info.rx_queues = n.max(1),
            LinkAttribute::LinkInfo(infos) => {
                info.kind = infos.into_iter().find_map(|i| match i {
                    link::LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    info
}

/// An `RTM_NEWROUTE` answering `RTM_GETROUTE`.
struct RouteReply {
    info: RouteInfo,
    /// The next hop came as `RTA_VIA` (another family) instead of
    /// `RTA_GATEWAY`.
    via: bool,
}

fn parse_route(msg: RouteMessage) -> Result<RouteReply, &'static str> {
    if msg.header.address_family != AddressFamily::Inet {
        return Err("not an IPv4 route");
    }
    let ipv4 = |a: RouteAddress, what| match a {
        RouteAddress::Inet(a) => Ok(a),
        _ => Err(what),
    };
    let mut oif = None;
    let mut info = RouteInfo {
        oif: 0,
        gateway: None,
        prefsrc: None,
    };
    let mut via = false;
    for attr in msg.attributes {
        match attr {
            RouteAttribute::Oif(index) => oif = Some(index),
            RouteAttribute::Gateway(a) => info.gateway = Some(ipv4(a, "bad RTA_GATEWAY")?),
            RouteAttribute::PrefSource(a) => info.prefsrc = Some(ipv4(a, "bad RTA_PREFSRC")?),
            RouteAttribute::Via(_) => via = true,
            _ => {}
        }
    }
    info.oif = oif.ok_or("route without RTA_OIF")?;
    Ok(RouteReply { info, via })
}

/// An `RTM_NEWNEIGH`.
fn parse_neigh(msg: NeighbourMessage) -> NeighEntry {
    let mut entry = NeighEntry {
        neighbour: Neighbour {
            mac: None,
            state: msg.header.state.into(),
        },
        flags: msg.header.flags,
        flags_ext: NeighbourExtFlags::empty(),
    };
    for attr in msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(mac) => {
                entry.neighbour.mac = mac.try_into().ok();
            }
            NeighbourAttribute::ExtFlags(flags) => entry.flags_ext = flags,
            _ => {}
        }
    }
    entry
}

/// An `RTM_NEWADDR`: (index, address, prefix length) for IPv4, `None` for
/// other families.
fn parse_ipv4_addr(msg: AddressMessage) -> Result<Option<(u32, Ipv4Addr, u8)>, &'static str> {
    if msg.header.family != AddressFamily::Inet {
        return Ok(None);
    }
    let ipv4 = |a: IpAddr, what| match a {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(what),
    };
    let (mut local, mut address) = (None, None);
    for attr in msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(ipv4(a, "bad IFA_LOCAL")?),
            AddressAttribute::Address(a) => address = Some(ipv4(a, "bad IFA_ADDRESS")?),
            _ => {}
        }
    }
    // IFA_ADDRESS is the peer on a point-to-point link; IFA_LOCAL, when
    // present, is always this end.
    let addr = local
        .or(address)
        .ok_or("address without IFA_LOCAL or IFA_ADDRESS")?;
    Ok(Some((msg.header.index, addr, msg.header.prefix_len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    // Numbers from the kernel headers, for fixtures and expectations.
    const RTM_NEWLINK: u16 = 16;
    const RTM_NEWADDR: u16 = 20;
    const RTM_NEWROUTE: u16 = 24;
    const RTM_NEWNEIGH: u16 = 28;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const IFLA_ADDRESS: u16 = 1;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_MTU: u16 = 4;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_NET_NS_FD: u16 = 28;
    const IFLA_EXT_MASK: u16 = 29;
    const IFLA_NUM_RX_QUEUES: u16 = 32;
    const IFLA_INFO_KIND: u16 = 1;
    const IFLA_INFO_DATA: u16 = 2;
    const VETH_INFO_PEER: u16 = 1;
    const IFF_UP: u32 = 0x1;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const IFA_FLAGS: u16 = 8;
    const IFA_F_NODAD: u32 = 0x02;
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RTA_GATEWAY: u16 = 5;
    const RTA_PREFSRC: u16 = 7;
    const RTA_VIA: u16 = 18;
    const NDA_DST: u16 = 1;
    const NDA_LLADDR: u16 = 2;
    const NDA_FLAGS_EXT: u16 = 15;
    const NTF_USE: u8 = 0x01;
    const NTF_EXT_LEARNED: u8 = 0x10;
    const NTF_EXT_MANAGED: u32 = 1 << 0;

    /// A request as `transact` sends it, numbered 7.
    fn wire(req: Request) -> Vec<u8> {
        req.encode(7)
    }

    /// An attribute as the kernel lays it out: header, payload, padding.
    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(align4(a.len()), 0);
        a
    }

    /// A family header followed by attributes.
    fn body(header: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = header.to_vec();
        for (ty, data) in attrs {
            b.extend(nla(*ty, data));
        }
        b
    }

    /// A nlmsghdr numbered 7, as `wire` writes it.
    fn nlmsghdr(len: u32, ty: u16, flags: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_ne_bytes());
        h.extend_from_slice(&ty.to_ne_bytes());
        h.extend_from_slice(&flags.to_ne_bytes());
        h.extend_from_slice(&7u32.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h
    }

    /// A whole message from the kernel.
    fn message(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    /// The attributes in `buf`, as (type without flag bits, payload).
    fn attrs(buf: &[u8]) -> Vec<(u16, Vec<u8>)> {
        NlasIterator::new(buf)
            .map(|a| a.unwrap())
            .map(|a| (a.kind(), a.value().to_vec()))
            .collect()
    }

    /// Decodes one reply as `transact` would.
    fn decode(ty: u16, payload: &[u8]) -> Result<RouteNetlinkMessage, DecodeError> {
        let (mut got, mut bad) = (None, None);
        let mut dgram = message(ty, 0, 1, payload);
        dgram.extend(message(NLMSG_ERROR, 0, 1, &[0; 20]));
        let done = read_datagram(&dgram, 1, &mut |m| got = Some(m), &mut bad);
        assert!(matches!(done, Some(Ok(()))), "{done:?}");
        match bad {
            Some(e) => Err(e),
            None => Ok(got.expect("a reply")),
        }
    }

    fn link_reply(payload: &[u8]) -> LinkInfo {
        match decode(RTM_NEWLINK, payload).unwrap() {
            RouteNetlinkMessage::NewLink(m) => parse_link(m),
            m => panic!("{m:?}"),
        }
    }

    fn route_reply(payload: &[u8]) -> Result<RouteReply, String> {
        match decode(RTM_NEWROUTE, payload).map_err(|e| e.to_string())? {
            RouteNetlinkMessage::NewRoute(m) => parse_route(m).map_err(str::to_string),
            m => panic!("{m:?}"),
        }
    }

    fn neigh_reply(payload: &[u8]) -> NeighEntry {
        match decode(RTM_NEWNEIGH, payload).unwrap() {
            RouteNetlinkMessage::NewNeighbour(m) => parse_neigh(m),
            m => panic!("{m:?}"),
        }
    }

    fn addr_reply(payload: &[u8]) -> Result<Option<(u32, Ipv4Addr, u8)>, String> {
        match decode(RTM_NEWADDR, payload).map_err(|e| e.to_string())? {
            RouteNetlinkMessage::NewAddress(m) => parse_ipv4_addr(m).map_err(str::to_string),
            m => panic!("{m:?}"),
        }
    }

    /// `struct ifinfomsg` for AF_UNSPEC.
    fn ifinfomsg(index: u32, flags: u32, change: u32) -> Vec<u8> {
        let mut m = vec![0u8; 4];
        m.extend_from_slice(&index.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&change.to_ne_bytes());
        m
    }

    /// `struct ndmsg` for AF_INET: family, pads, ifindex, state, flags, type.
    fn ndmsg(ifindex: u32, state: u16, flags: u8, ty: u8) -> Vec<u8> {
        let mut m = vec![2, 0, 0, 0];
        m.extend_from_slice(&ifindex.to_ne_bytes());
        m.extend_from_slice(&state.to_ne_bytes());
        m.extend_from_slice(&[flags, ty]);
        m
    }

    #[test]
    fn addr_add_v4_encoding() {
        let req = encode_addr_add(5, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 24).unwrap();
        // nlmsghdr: len 40, RTM_NEWADDR, REQUEST|ACK|EXCL|CREATE, seq 7, pid 0.
        let mut want = nlmsghdr(40, 20, 0x605);
        // ifaddrmsg: AF_INET, /24, no flags, universe, index 5.
        want.extend_from_slice(&[2, 24, 0, 0]);
        want.extend_from_slice(&5u32.to_ne_bytes());
        // IFA_LOCAL, IFA_ADDRESS.
        want.extend(nla(IFA_LOCAL, &[10, 0, 0, 2]));
        want.extend(nla(IFA_ADDRESS, &[10, 0, 0, 2]));
        assert_eq!(wire(req), want);
    }

    #[test]
    fn addr_add_v6_sets_nodad() {
        let bytes = wire(encode_addr_add(1, "fd00::1".parse().unwrap(), 64).unwrap());
        assert_eq!(bytes.len(), 16 + 8 + 20 + 20 + 8);
        assert_eq!(&bytes[6..8], &0x605u16.to_ne_bytes());
        assert_eq!(&bytes[16..20], &[10, 64, IFA_F_NODAD as u8, 0]);
        let got = attrs(&bytes[24..]);
        let types: Vec<_> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, [IFA_LOCAL, IFA_ADDRESS, IFA_FLAGS]);
        assert_eq!(got[2].1, IFA_F_NODAD.to_ne_bytes());
        assert!(matches!(
            encode_addr_add(1, "fd00::1".parse().unwrap(), 129),
            Err(NetlinkError::InvalidPrefix { .. })
        ));
        assert!(encode_addr_add(1, "10.0.0.1".parse().unwrap(), 33).is_err());
    }

    #[test]
    fn link_get_encoding() {
        let name = IfName::new("eth0").unwrap();
        let bytes = wire(encode_link_get(LinkHeader::default(), Some(name)));
        // RTM_GETLINK, REQUEST|ACK; an all-zero ifinfomsg.
        assert_eq!(&bytes[..16], &nlmsghdr(52, 18, 0x5)[..]);
        assert_eq!(&bytes[16..32], &[0; 16]);
        // "eth0\0" is 5 bytes, as the kernel's NLA_STRING policies expect:
        // attr len 9, padded to 12.
        assert_eq!(&bytes[32..34], &9u16.to_ne_bytes());
        assert_eq!(&bytes[36..41], b"eth0\0");
        assert_eq!(&bytes[41..44], &[0, 0, 0]);
        // IFLA_EXT_MASK: RTEXT_FILTER_SKIP_STATS.
        assert_eq!(
            attrs(&bytes[44..]),
            [(IFLA_EXT_MASK, 8u32.to_ne_bytes().to_vec())]
        );
        let by_index = LinkHeader {
            index: 9,
            ..Default::default()
        };
        let bytes = wire(encode_link_get(by_index, None));
        assert_eq!(&bytes[16..32], &ifinfomsg(9, 0, 0)[..]);
        assert_eq!(attrs(&bytes[32..]).len(), 1);
    }

    #[test]
    fn link_dump_encoding() {
        let bytes = wire(encode_link_dump());
        // RTM_GETLINK, REQUEST|ACK|DUMP; an all-zero ifinfomsg; no name.
        assert_eq!(&bytes[..16], &nlmsghdr(40, 18, 0x305)[..]);
        assert_eq!(&bytes[16..32], &[0; 16]);
        assert_eq!(
            attrs(&bytes[32..]),
            [(IFLA_EXT_MASK, 8u32.to_ne_bytes().to_vec())]
        );
    }

    #[test]
    fn link_add_encoding() {
        let bytes = wire(encode_link_add(&IfName::new("br0").unwrap(), "bridge"));
        // RTM_NEWLINK, REQUEST|ACK|EXCL|CREATE.
        assert_eq!(&bytes[4..8], &[16, 0, 0x05, 0x06]);
        let top = attrs(&bytes[32..]);
        assert_eq!(top[0], (IFLA_IFNAME, b"br0\0".to_vec()));
        assert_eq!(top[1].0, IFLA_LINKINFO);
        assert_eq!(attrs(&top[1].1), [(IFLA_INFO_KIND, b"bridge\0".to_vec())]);
        assert_eq!(top.len(), 2);
    }

    #[test]
    fn veth_encoding() {
        for netns_fd in [None, Some(9)] {
            let bytes = wire(encode_veth_create("va", "vb", netns_fd).unwrap());
            // RTM_NEWLINK, REQUEST|ACK|EXCL|CREATE: an existing name fails.
            assert_eq!(&bytes[4..8], &[16, 0, 0x05, 0x06]);
            assert_eq!(&bytes[16..32], &[0; 16]);
            let top = attrs(&bytes[32..]);
            assert_eq!(top[0], (IFLA_IFNAME, b"va\0".to_vec()));
            assert_eq!(top[1].0, IFLA_LINKINFO);
            let info = attrs(&top[1].1);
            assert_eq!(info[0], (IFLA_INFO_KIND, b"veth\0".to_vec()));
            assert_eq!(info[1].0, IFLA_INFO_DATA);
            let data = attrs(&info[1].1);
            assert_eq!(data.len(), 1);
            let (pty, peer) = &data[0];
            assert_eq!(*pty, VETH_INFO_PEER);
            // The peer: its own ifinfomsg, then its attributes.
            assert_eq!(&peer[..16], &[0; 16]);
            let mut want = vec![(IFLA_IFNAME, b"vb\0".to_vec())];
            if let Some(fd) = netns_fd {
                want.push((IFLA_NET_NS_FD, (fd as u32).to_ne_bytes().to_vec()));
            }
            assert_eq!(attrs(&peer[16..]), want);
            // Lengths add up to the whole message; nothing else at the top.
            assert_eq!(top.len(), 2);
            assert_eq!(
                u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
                bytes.len()
            );
        }
        for (a, b) in [("va", "a-name-longer-than-15"), ("a/b", "vb")] {
            assert!(matches!(
                encode_veth_create(a, b, None),
                Err(NetlinkError::InvalidName { .. })
            ));
        }
    }

    #[test]
    fn link_set_encoding() {
        let change = LinkChange {
            mtu: Some(1400),
            mac: Some([2, 0, 0, 0, 0, 1]),
            up: Some(false),
            name: Some("eth1".into()),
            netns_fd: Some(9),
        };
        let bytes = wire(encode_link_set(3, &change).unwrap());
        // RTM_NEWLINK, REQUEST|ACK only: changes an existing link.
        assert_eq!(&bytes[4..8], &[16, 0, 0x05, 0]);
        assert_eq!(&bytes[16..32], &ifinfomsg(3, 0, IFF_UP)[..]);
        let got = attrs(&bytes[32..]);
        let types: Vec<_> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, [IFLA_NET_NS_FD, IFLA_IFNAME, IFLA_MTU, IFLA_ADDRESS]);
        assert_eq!(got[0].1, 9u32.to_ne_bytes());
        assert_eq!(got[1].1, b"eth1\0");
        assert_eq!(got[2].1, 1400u32.to_ne_bytes());
        assert_eq!(got[3].1, [2, 0, 0, 0, 0, 1]);

        let up = LinkChange {
            up: Some(true),
            ..Default::default()
        };
        let bytes = wire(encode_link_set(3, &up).unwrap());
        assert_eq!(&bytes[16..32], &ifinfomsg(3, IFF_UP, IFF_UP)[..]);
        assert_eq!(bytes.len(), 32);
        let none = wire(encode_link_set(3, &LinkChange::default()).unwrap());
        assert_eq!(&none[16..32], &ifinfomsg(3, 0, 0)[..]);

        let bad = LinkChange {
            name: Some("a-name-longer-than-15".into()),
            ..Default::default()
        };
        assert!(matches!(
            encode_link_set(3, &bad),
            Err(NetlinkError::InvalidName { .. })
        ));
    }

    #[test]
    fn default_route_encoding() {
        let gw = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
        let bytes = wire(encode_route_add_default(4, IpAddr::V6(gw)));
        // RTM_NEWROUTE, REQUEST|ACK|EXCL|CREATE.
        assert_eq!(&bytes[4..8], &[24, 0, 0x05, 0x06]);
        // rtmsg: AF_INET6, no prefixes, main table, static, universe, unicast.
        assert_eq!(&bytes[16..28], &[10, 0, 0, 0, 254, 4, 0, 1, 0, 0, 0, 0]);
        assert_eq!(
            attrs(&bytes[28..]),
            [
                (RTA_GATEWAY, gw.octets().to_vec()),
                (RTA_OIF, 4u32.to_ne_bytes().to_vec())
            ]
        );
        let v4 = wire(encode_route_add_default(
            4,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        ));
        assert_eq!(v4[16], 2);
        assert_eq!(attrs(&v4[28..])[0], (RTA_GATEWAY, vec![10, 0, 0, 1]));
    }

    #[test]
    fn route_get_encoding() {
        // RTM_GETROUTE, REQUEST|ACK.
        let mut want = nlmsghdr(36, 26, 0x5);
        // rtmsg: AF_INET, dst_len 32, the rest zero.
        want.extend_from_slice(&[2, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend(nla(RTA_DST, &[192, 0, 2, 9]));
        assert_eq!(wire(encode_route_get(Ipv4Addr::new(192, 0, 2, 9))), want);
    }

    #[test]
    fn neigh_get_encoding() {
        // RTM_GETNEIGH, REQUEST|ACK.
        let mut want = nlmsghdr(36, 30, 0x5);
        // ndmsg: AF_INET, ifindex 6, state 0, flags 0, type 0.
        want.extend(ndmsg(6, 0, 0, 0));
        want.extend(nla(NDA_DST, &[10, 0, 0, 1]));
        assert_eq!(wire(encode_neigh_get(6, Ipv4Addr::new(10, 0, 0, 1))), want);
    }

    #[test]
    fn neigh_use_encoding() {
        // RTM_NEWNEIGH, REQUEST|ACK|CREATE: no EXCL, no REPLACE.
        let mut want = nlmsghdr(36, 28, 0x405);
        // ndmsg: AF_INET, ifindex 6, state NONE, flags NTF_USE.
        want.extend(ndmsg(6, 0, NTF_USE, 0));
        // NDA_DST, and no NDA_LLADDR.
        want.extend(nla(NDA_DST, &[10, 0, 0, 1]));
        assert_eq!(wire(encode_neigh_use(6, Ipv4Addr::new(10, 0, 0, 1))), want);
    }

    #[test]
    fn addr_dump_encoding() {
        // RTM_GETADDR, REQUEST|ACK|DUMP; ifaddrmsg with the index.
        let mut want = nlmsghdr(24, 22, 0x305);
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(&3u32.to_ne_bytes());
        assert_eq!(wire(encode_addr_dump(AddressFamily::Inet, 3)), want);
    }

    /// An NLMSG_ERROR as the kernel sends it with CAP_ACK and EXT_ACK.
    fn error_reply(seq: u32, errno: i32, text: Option<&str>) -> Vec<u8> {
        let mut tlv = Vec::new();
        if let Some(t) = text {
            tlv = nla(NLMSGERR_ATTR_MSG, format!("{t}\0").as_bytes());
        }
        let mut flags = NLM_F_CAPPED;
        if !tlv.is_empty() {
            flags |= NLM_F_ACK_TLVS;
        }
        let mut payload = (-errno).to_ne_bytes().to_vec();
        // The echoed request header (its length says 60, but it is capped).
        payload.extend_from_slice(&60u32.to_ne_bytes());
        payload.extend_from_slice(&[0; 12]);
        payload.extend(tlv);
        message(NLMSG_ERROR, flags, seq, &payload)
    }

    fn outcome(dgram: &[u8], seq: u32) -> Option<Result<(), Failure>> {
        read_datagram(dgram, seq, &mut |m| panic!("{m:?}"), &mut None)
    }

    #[test]
    fn parses_acks_and_errors() {
        let mut dgram = error_reply(3, 0, None);
        dgram.extend(error_reply(4, libc::EINVAL, Some("MTU too small")));
        assert!(matches!(outcome(&dgram, 3), Some(Ok(()))));
        let Some(Err(Failure::Errno(errno, text))) = outcome(&dgram, 4) else {
            panic!("not an error");
        };
        assert_eq!(
            (errno, text.as_deref()),
            (libc::EINVAL, Some("MTU too small"))
        );
        // Not ours: the transaction goes on.
        assert!(outcome(&dgram, 5).is_none());

        // Without CAP_ACK the whole request is echoed before the text.
        let mut payload = (-libc::EEXIST).to_ne_bytes().to_vec();
        payload.extend(nlmsghdr(24, 16, 0x605));
        payload.extend_from_slice(&[0; 8]);
        payload.extend(nla(NLMSGERR_ATTR_MSG, b"exists\0"));
        let dgram = message(NLMSG_ERROR, NLM_F_ACK_TLVS, 9, &payload);
        let Some(Err(Failure::Errno(errno, text))) = outcome(&dgram, 9) else {
            panic!("not an error");
        };
        assert_eq!((errno, text.as_deref()), (libc::EEXIST, Some("exists")));

        let err = Failure::Errno(libc::EINVAL, Some("MTU too small".into()))
            .into_error("set link", "index 3".into());
        assert_eq!(err.errno(), Some(libc::EINVAL));
        let text = err.to_string();
        assert!(text.starts_with("set link index 3: "), "{text}");
        assert!(text.ends_with("(MTU too small)"), "{text}");
        let bare = Failure::Errno(libc::ENODEV, None).into_error("delete link", "index 3".into());
        let enodev = io::Error::from_raw_os_error(libc::ENODEV);
        assert_eq!(bare.to_string(), format!("delete link index 3: {enodev}"));
    }

    #[test]
    fn dump_done_status() {
        let done = |payload: &[u8]| outcome(&message(NLMSG_DONE, 2, 1, payload), 1);
        assert!(matches!(done(&0i32.to_ne_bytes()), Some(Ok(()))));
        assert!(matches!(
            done(&(-libc::EINTR).to_ne_bytes()),
            Some(Err(Failure::Errno(libc::EINTR, None)))
        ));
        // Old kernels sent NLMSG_DONE with no payload.
        assert!(matches!(done(&[]), Some(Ok(()))));
    }

    #[test]
    fn undecodable_reply_is_read_past() {
        // A route whose gateway is two bytes, then the ack.
        let oif = 4u32.to_ne_bytes();
        let route = body(
            &[2, 32, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0],
            &[(RTA_OIF, &oif), (RTA_GATEWAY, &[10, 0])],
        );
        let mut dgram = message(RTM_NEWROUTE, 0, 1, &route);
        dgram.extend(error_reply(1, 0, None));
        let mut bad = None;
        let done = read_datagram(&dgram, 1, &mut |m| panic!("{m:?}"), &mut bad);
        assert!(matches!(done, Some(Ok(()))), "{done:?}");
        assert!(bad.is_some());
    }

    #[test]
    fn truncated_input_does_not_panic() {
        let dgram = error_reply(1, libc::EPERM, Some("nope"));
        for cut in 0..dgram.len() {
            let _ = outcome(&dgram[..cut], 1);
            let _ = ext_ack_text(NLM_F_ACK_TLVS, &dgram[20..cut.max(20)]);
            let _ = ext_ack_text(NLM_F_ACK_TLVS | NLM_F_CAPPED, &dgram[20..cut.max(20)]);
        }
        let oif = 4u32.to_ne_bytes();
        let link = body(
            &ifinfomsg(7, 1, 0),
            &[(IFLA_IFNAME, b"tap0\0"), (IFLA_MTU, &oif)],
        );
        let route = body(
            &[2, 32, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0],
            &[(RTA_OIF, &oif), (RTA_GATEWAY, &[10, 0, 0, 1])],
        );
        let neigh = body(
            &ndmsg(5, nud::STALE, 0, 1),
            &[(NDA_LLADDR, &[2, 0, 0, 0, 0, 1])],
        );
        let addr = body(&[2, 24, 0, 0, 4, 0, 0, 0], &[(IFA_LOCAL, &[10, 0, 0, 1])]);
        for (ty, payload) in [
            (RTM_NEWLINK, &link),
            (RTM_NEWROUTE, &route),
            (RTM_NEWNEIGH, &neigh),
            (RTM_NEWADDR, &addr),
        ] {
            for cut in 0..payload.len() {
                let mut dgram = message(ty, 0, 1, &payload[..cut]);
                dgram.extend(error_reply(1, 0, None));
                let _ = read_datagram(&dgram, 1, &mut |_| (), &mut None);
            }
        }
    }

    #[test]
    fn parses_link_reply() {
        let mtu = 1500u32.to_ne_bytes();
        let kind = nla(IFLA_INFO_KIND, b"tun\0");
        let reply = body(
            &ifinfomsg(7, IFF_UP | 0x10000, 0),
            &[
                (IFLA_IFNAME, b"tap0\0"),
                (IFLA_MTU, &mtu),
                (IFLA_ADDRESS, &[2, 1, 2, 3, 4, 5]),
                (IFLA_LINKINFO, &kind),
            ],
        );
        assert_eq!(
            link_reply(&reply),
            LinkInfo {
                index: 7,
                name: "tap0".into(),
                mac: [2, 1, 2, 3, 4, 5],
                mtu: 1500,
                up: true,
                flags: IFF_UP | 0x10000,
                kind: Some("tun".into()),
                rx_queues: 1,
            }
        );
        // No 6-byte address (lo has one of zeros; tunnels have other
        // sizes); queues as reported, but never 0.
        for (queues, want) in [(4u32, 4), (0, 1)] {
            let q = queues.to_ne_bytes();
            let reply = body(
                &ifinfomsg(1, 0, 0),
                &[
                    (IFLA_IFNAME, b"gre0\0"),
                    (IFLA_ADDRESS, &[0, 0, 0, 0]),
                    (IFLA_NUM_RX_QUEUES, &q),
                ],
            );
            let info = link_reply(&reply);
            assert_eq!((info.mac, info.rx_queues, info.kind), ([0; 6], want, None));
            assert!(!info.up);
        }
    }

    /// An `RTM_NEWROUTE` payload as `ip route get` receives it.
    fn route_body(family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        // rtmsg: family, /32, table main, type unicast, RTM_F_CLONED.
        let mut hdr = vec![family, 32, 0, 0, 254, 0, 0, 1];
        hdr.extend_from_slice(&0x200u32.to_ne_bytes());
        body(&hdr, attrs)
    }

    #[test]
    fn parses_route_reply() {
        let table = 254u32.to_ne_bytes();
        let oif = 4u32.to_ne_bytes();
        let reply = route_body(
            2,
            &[
                (15, &table),
                (RTA_DST, &[198, 18, 1, 7]),
                (RTA_OIF, &oif),
                (RTA_PREFSRC, &[10, 77, 1, 1]),
                (RTA_GATEWAY, &[10, 77, 1, 2]),
            ],
        );
        let got = route_reply(&reply).unwrap();
        assert!(!got.via);
        assert_eq!(
            got.info,
            RouteInfo {
                oif: 4,
                gateway: Some(Ipv4Addr::new(10, 77, 1, 2)),
                prefsrc: Some(Ipv4Addr::new(10, 77, 1, 1)),
            }
        );
        // On-link: no gateway.
        let reply = route_body(2, &[(RTA_OIF, &oif)]);
        assert_eq!(route_reply(&reply).unwrap().info.gateway, None);
        // struct rtvia: family AF_INET6, then the address.
        let mut via = vec![10, 0];
        via.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let reply = route_body(2, &[(RTA_OIF, &oif), (RTA_VIA, &via)]);
        assert!(route_reply(&reply).unwrap().via);
        assert!(route_reply(&route_body(2, &[])).is_err());
        assert!(route_reply(&route_body(10, &[(RTA_OIF, &oif)])).is_err());
        let short_gw = route_body(2, &[(RTA_OIF, &oif), (RTA_GATEWAY, &[10, 0])]);
        assert!(route_reply(&short_gw).is_err());
    }

    #[test]
    fn parses_neighbour_reply() {
        let mac = [0x02, 0xbb, 0, 0, 1, 2];
        let probes = 0u32.to_ne_bytes();
        let cacheinfo = [0u8; 16];
        let reply = body(
            &ndmsg(5, nud::REACHABLE, 0, 1),
            &[
                (NDA_DST, &[10, 77, 1, 2]),
                (NDA_LLADDR, &mac),
                (4, &probes),
                (3, &cacheinfo),
            ],
        );
        let e = neigh_reply(&reply);
        assert_eq!(
            e.neighbour,
            Neighbour {
                mac: Some(mac),
                state: nud::REACHABLE
            }
        );
        assert!(e.neighbour.usable() && !e.leave_alone());

        // Resolving: no address yet.
        let e = neigh_reply(&body(
            &ndmsg(5, nud::INCOMPLETE, 0, 1),
            &[(NDA_DST, &[10, 77, 1, 9])],
        ));
        assert_eq!(e.neighbour.mac, None);
        assert!(!e.neighbour.usable() && !e.leave_alone());

        // Entries owned elsewhere.
        let ext = NTF_EXT_MANAGED.to_ne_bytes();
        for (state, flags, attrs) in [
            (nud::PERMANENT, 0, vec![(NDA_LLADDR, &mac[..])]),
            (nud::NOARP, 0, vec![(NDA_LLADDR, &mac[..])]),
            (nud::STALE, NTF_EXT_LEARNED, vec![(NDA_LLADDR, &mac[..])]),
            (nud::REACHABLE, 0, vec![(NDA_FLAGS_EXT, &ext[..])]),
        ] {
            let e = neigh_reply(&body(&ndmsg(5, state, flags, 1), &attrs));
            assert!(e.leave_alone(), "state {state:#x} flags {flags:#x}");
        }
        // A link without 6-byte addresses (NOARP, empty NDA_LLADDR).
        let e = neigh_reply(&body(&ndmsg(5, nud::NOARP, 0, 1), &[(NDA_LLADDR, &[])]));
        assert_eq!(e.neighbour.mac, None);
        assert!(!e.neighbour.usable());
        // A state combination the decoder has no name for keeps its bits.
        let both = nud::STALE | nud::PERMANENT;
        let e = neigh_reply(&body(&ndmsg(5, both, 0, 1), &[]));
        assert_eq!(e.neighbour.state, both);
    }

    #[test]
    fn usable_states() {
        let mac = Some([2, 0, 0, 0, 0, 1]);
        for state in [
            nud::REACHABLE,
            nud::STALE,
            nud::DELAY,
            nud::PROBE,
            nud::PERMANENT,
            nud::NOARP,
        ] {
            assert!(Neighbour { mac, state }.usable(), "{state:#x}");
            assert!(!Neighbour { mac: None, state }.usable(), "{state:#x}");
        }
        for state in [nud::NONE, nud::INCOMPLETE, nud::FAILED] {
            assert!(!Neighbour { mac, state }.usable(), "{state:#x}");
        }
    }

    /// An `RTM_NEWADDR` payload.
    fn addr_body(family: u8, prefix_len: u8, index: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut hdr = vec![family, prefix_len, 0x80, 0];
        hdr.extend_from_slice(&index.to_ne_bytes());
        body(&hdr, attrs)
    }

    #[test]
    fn parses_address_reply() {
        let a = [10, 77, 1, 1];
        let reply = addr_body(
            2,
            24,
            4,
            &[
                (IFA_ADDRESS, &a),
                (IFA_LOCAL, &a),
                (3, b"xa1\0"),
                (4, &[10, 77, 1, 255]),
            ],
        );
        assert_eq!(
            addr_reply(&reply).unwrap(),
            Some((4, Ipv4Addr::from(a), 24))
        );
        // Point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL this end.
        let reply = addr_body(2, 32, 4, &[(IFA_ADDRESS, &[10, 0, 0, 2]), (IFA_LOCAL, &a)]);
        assert_eq!(addr_reply(&reply).unwrap().unwrap().1, Ipv4Addr::from(a));
        let reply = addr_body(2, 8, 1, &[(IFA_ADDRESS, &[127, 0, 0, 1])]);
        assert_eq!(
            addr_reply(&reply).unwrap(),
            Some((1, Ipv4Addr::LOCALHOST, 8))
        );
        assert_eq!(addr_reply(&addr_body(10, 64, 4, &[])).unwrap(), None);
        assert!(addr_reply(&addr_body(2, 24, 4, &[])).is_err());
    }

    #[test]
    fn rejects_bad_ifnames() {
        for bad in ["", "0123456789abcdef", "a/b", "a b", "a:b", ".", "e%d"] {
            let err = encode_veth_create(bad, "ok", None).unwrap_err();
            assert!(matches!(err, NetlinkError::InvalidName { .. }), "{bad:?}");
            assert!(
                err.to_string().starts_with("invalid interface name"),
                "{err}"
            );
        }
        encode_veth_create("0123456789abcde", "ok", None).unwrap();
    }
}

/// Root tests: a fresh namespace per test, configured and checked with `ip`.
#[cfg(test)]
mod root_tests {
    use super::*;
    use crate::ebpf::testnet::{mac_text, VethNet};
    use crate::netns::testns::{root_or_skip, TestNetns};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// Polls `f` until it gives a value, failing the test at the deadline.
    fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Routes, neighbours and addresses as ns_a of a [`VethNet`] sees them;
    /// every packet stays on the test veth.
    #[test]
    fn looks_up_routes_neighbours_and_addresses() {
        if !root_or_skip("looks_up_routes_neighbours_and_addresses") {
            return;
        }
        let net = VethNet::new().expect("veth test topology");
        let (ns_a, n) = (net.ns_a.as_str(), net.subnet);
        let ip_a = Ipv4Addr::from(net.ip_a);
        let ip_b = Ipv4Addr::from(net.ip_b);
        // Nobody on the veth has this one.
        let absent = Ipv4Addr::new(10, 77, n, 99);
        // b's, but off a's subnet, and a has no route to it.
        let off_subnet = Ipv4Addr::new(192, 0, 2, n);
        let routed = Ipv4Addr::new(198, 18, n, 7);

        let a = net.in_a(|| {
            let mut nl = Netlink::open().unwrap();
            let a = nl.link_index(&net.a).unwrap().unwrap();
            // Before any IPv4 traffic: no entry, or none usable.
            let before = nl.neigh_get(a, ip_b).unwrap();
            assert!(!before.is_some_and(|nb| nb.usable()), "{before:?}");
            assert_eq!(nl.ipv4_addrs(a).unwrap(), [(ip_a, 24)]);
            assert_eq!(nl.ipv4_addrs(1).unwrap(), [(Ipv4Addr::LOCALHOST, 8)]);
            assert_eq!(nl.ipv4_addrs(a + 1000).unwrap(), []);
            a
        });

        let ip_b_text = ip_b.to_string();
        let routed_net = format!("198.18.{n}.0/24");
        net.ip(ns_a, &["route", "add", &routed_net, "via", &ip_b_text])
            .unwrap();
        for (kind, last) in [("blackhole", 1), ("prohibit", 2), ("unreachable", 3)] {
            let dst = format!("198.19.{n}.{last}/32");
            net.ip(ns_a, &["route", "add", kind, &dst]).unwrap();
        }
        let pinned = Ipv4Addr::new(10, 77, n, 50);
        let pinned_mac = [0x02, 0x50, 0, 0, n, 50];
        let learned = Ipv4Addr::new(10, 77, n, 51);
        let (pinned_text, learned_text) = (pinned.to_string(), learned.to_string());
        let mac_text_pinned = mac_text(pinned_mac);
        net.ip(
            ns_a,
            &[
                "neigh",
                "add",
                &pinned_text,
                "lladdr",
                &mac_text_pinned,
                "dev",
                &net.a,
                "nud",
                "permanent",
            ],
        )
        .unwrap();
        net.ip(
            ns_a,
            &[
                "neigh",
                "add",
                &learned_text,
                "lladdr",
                &mac_text_pinned,
                "dev",
                &net.a,
                "nud",
                "stale",
                "extern_learn",
            ],
        )
        .unwrap();
        let off_subnet_addr = format!("{off_subnet}/32");
        net.ip(&net.ns_b, &["addr", "add", &off_subnet_addr, "dev", &net.b])
            .unwrap();
        // Unanswered probes give up after 3 x 100 ms instead of 3 s.
        let retrans = format!("net.ipv4.neigh.{}.retrans_time_ms=100", net.a);
        let out = net.exec(ns_a, &["sysctl", "-w", &retrans]).unwrap();
        assert!(out.status.success(), "{out:?}");

        net.in_a(|| {
            let mut nl = Netlink::open().unwrap();
            let on_link = RouteInfo {
                oif: a,
                gateway: None,
                prefsrc: Some(ip_a),
            };
            assert_eq!(nl.route_get(ip_b).unwrap(), Some(on_link));
            assert_eq!(
                nl.route_get(routed).unwrap(),
                Some(RouteInfo {
                    gateway: Some(ip_b),
                    ..on_link
                })
            );
            // Local addresses route out of lo.
            assert_eq!(nl.route_get(ip_a).unwrap().map(|r| r.oif), Some(1));
            // No default route; then blackhole, prohibit, unreachable.
            assert_eq!(nl.route_get(off_subnet).unwrap(), None);
            for last in 1..=3 {
                let dst = Ipv4Addr::new(198, 19, n, last);
                assert_eq!(nl.route_get(dst).unwrap(), None, "{dst}");
            }

            nl.neigh_resolve(a, ip_b).unwrap();
            let peer = wait_for("the peer's ARP reply", Duration::from_secs(5), || {
                nl.neigh_get(a, ip_b).unwrap().filter(Neighbour::usable)
            });
            assert_eq!(peer.mac, Some(net.mac_b));
            assert_eq!(peer.state & nud::PERMANENT, 0, "{peer:?}");
            // Again on a usable entry: it stays usable.
            nl.neigh_resolve(a, ip_b).unwrap();
            assert!(nl.neigh_get(a, ip_b).unwrap().unwrap().usable());

            // No route needed: b answers for its address off the subnet.
            nl.neigh_resolve(a, off_subnet).unwrap();
            let off = wait_for("ARP off the subnet", Duration::from_secs(5), || {
                nl.neigh_get(a, off_subnet)
                    .unwrap()
                    .filter(Neighbour::usable)
            });
            assert_eq!(off.mac, Some(net.mac_b));

            // Nobody answers: INCOMPLETE, then FAILED, never an address.
            nl.neigh_resolve(a, absent).unwrap();
            let probing = nl.neigh_get(a, absent).unwrap().unwrap();
            assert_eq!(probing.mac, None);
            assert!(
                probing.state & (nud::INCOMPLETE | nud::FAILED) != 0,
                "{probing:?}"
            );
            wait_for("resolution to fail", Duration::from_secs(5), || {
                let e = nl.neigh_get(a, absent).unwrap().unwrap();
                assert!(!e.usable(), "{e:?}");
                (e.state == nud::FAILED).then_some(())
            });
            // A failed entry is probed again.
            nl.neigh_resolve(a, absent).unwrap();
            let again = nl.neigh_get(a, absent).unwrap().unwrap();
            assert_eq!(again.state, nud::INCOMPLETE, "{again:?}");

            // Entries others own are left as they were.
            nl.neigh_resolve(a, pinned).unwrap();
            assert_eq!(
                nl.neigh_get(a, pinned).unwrap(),
                Some(Neighbour {
                    mac: Some(pinned_mac),
                    state: nud::PERMANENT
                })
            );
            nl.neigh_resolve(a, learned).unwrap();

            let err = nl.neigh_get(a + 1000, ip_b).unwrap_err();
            assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
        });
        // The kernel kept the learned entry's flag and state.
        let out = net
            .exec(ns_a, &["ip", "-j", "neigh", "show", &learned_text])
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains("extern_learn"), "{shown}");
        assert!(shown.contains("STALE"), "{shown}");
        // What the kernel made of the resolved entries: ordinary ones.
        let out = net
            .exec(ns_a, &["ip", "-j", "neigh", "show", "dev", &net.a])
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert_eq!(shown.matches("PERMANENT").count(), 1, "{shown}");
    }

    #[test]
    fn configures_links_addresses_routes() {
        if !root_or_skip("configures_links_addresses_routes") {
            return;
        }
        let t = TestNetns::new("nl");
        let ns = t.netns();
        let (a, b) = ns
            .run(|| {
                let mut nl = Netlink::open().unwrap();
                assert_eq!(nl.link_index("lo").unwrap(), Some(1));
                assert_eq!(nl.link_index("vsnl-none").unwrap(), None);

                nl.veth_create("vsnl-a", "vsnl-b").unwrap();
                let err = nl.veth_create("vsnl-a", "vsnl-c").unwrap_err();
                assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
                let a = nl.link_info("vsnl-a").unwrap().unwrap();
                assert_eq!(a.kind.as_deref(), Some("veth"));
                assert!(!a.up);

                let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
                nl.link_set(
                    a.index,
                    &LinkChange {
                        mtu: Some(1400),
                        mac: Some(mac),
                        up: Some(true),
                        ..Default::default()
                    },
                )
                .unwrap();
                let a2 = nl.link_info_by_index(a.index).unwrap().unwrap();
                assert_eq!((a2.mtu, a2.mac, a2.up), (1400, mac, true));
                assert_eq!(a2.name, "vsnl-a");

                // A refusal carries the errno and, usually, the reason.
                let err = nl
                    .link_set(
                        a.index,
                        &LinkChange {
                            mtu: Some(10),
                            ..Default::default()
                        },
                    )
                    .unwrap_err();
                assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
                eprintln!("expected refusal: {err}");

                for _ in 0..2 {
                    nl.addr_add(a.index, "10.77.0.2".parse().unwrap(), 24)
                        .unwrap();
                    nl.addr_add(a.index, "fd00:77::2".parse().unwrap(), 64)
                        .unwrap();
                    nl.route_add_default(a.index, "10.77.0.1".parse().unwrap())
                        .unwrap();
                    nl.route_add_default(a.index, "fd00:77::1".parse().unwrap())
                        .unwrap();
                }
                let b = nl.link_index("vsnl-b").unwrap().unwrap();
                (a.index, b)
            })
            .unwrap();

        let addrs = t.ip(&["-j", "addr", "show", "dev", "vsnl-a"]);
        assert!(
            addrs.contains(r#""local":"10.77.0.2","prefixlen":24"#),
            "{addrs}"
        );
        assert!(
            addrs.contains(r#""local":"fd00:77::2","prefixlen":64"#),
            "{addrs}"
        );
        assert!(!addrs.contains("tentative"), "{addrs}");
        let r4 = t.ip(&["-j", "route", "show", "default"]);
        assert!(
            r4.contains(r#""gateway":"10.77.0.1","dev":"vsnl-a""#),
            "{r4}"
        );
        let r6 = t.ip(&["-6", "-j", "route", "show", "default"]);
        assert!(
            r6.contains(r#""gateway":"fd00:77::1","dev":"vsnl-a""#),
            "{r6}"
        );

        // Move the peer into a second namespace under a new name.
        let t2 = TestNetns::new("nl2");
        let ns2_fd = std::fs::File::open(format!("/run/netns/{}", t2.name)).unwrap();
        ns.run(|| {
            let mut nl = Netlink::open().unwrap();
            nl.link_set(
                b,
                &LinkChange {
                    name: Some("eth0".into()),
                    netns_fd: Some(ns2_fd.as_raw_fd()),
                    up: Some(true),
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(nl.link_index("vsnl-b").unwrap(), None);
        })
        .unwrap();
        let moved = t2
            .netns()
            .run(|| Netlink::open().unwrap().link_info("eth0").unwrap())
            .unwrap()
            .expect("eth0 in the second namespace");
        assert_eq!(moved.kind.as_deref(), Some("veth"));
        assert!(moved.up);

        ns.run(|| {
            let mut nl = Netlink::open().unwrap();
            // "bridge" rather than "dummy": this kernel is built without dummy.
            nl.link_add("vsnl-d", "bridge").unwrap();
            let d = nl.link_info("vsnl-d").unwrap().unwrap();
            assert_eq!(d.kind.as_deref(), Some("bridge"));
            let d = d.index;
            nl.link_del(d).unwrap();
            assert_eq!(nl.link_index("vsnl-d").unwrap(), None);
            nl.link_del(a).unwrap();
            assert_eq!(nl.link_index("vsnl-a").unwrap(), None);
            let err = nl.link_del(a).unwrap_err();
            assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
        })
        .unwrap();
        // Deleting one end removed the other from the second namespace.
        let gone = t2
            .netns()
            .run(|| Netlink::open().unwrap().link_index("eth0").unwrap())
            .unwrap();
        assert_eq!(gone, None);
    }

    /// `veth_create_in` makes the peer straight in the other namespace, and
    /// `links` lists what each namespace holds.
    #[test]
    fn creates_veth_with_peer_elsewhere_and_lists_links() {
        if !root_or_skip("creates_veth_with_peer_elsewhere_and_lists_links") {
            return;
        }
        let here = TestNetns::new("vin");
        let there = TestNetns::new("vin2");
        let there_fd = std::fs::File::open(format!("/run/netns/{}", there.name)).unwrap();
        let not_netns = std::fs::File::open("/dev/null").unwrap();
        let fd = there_fd.as_raw_fd();
        let a = here
            .netns()
            .run(|| {
                let mut nl = Netlink::open().unwrap();
                // The test's links; a new namespace may also hold the
                // fallback devices of loaded tunnel modules (sit0, ...).
                let names = |links: &[LinkInfo]| -> Vec<String> {
                    let ours = links.iter().filter(|l| l.name.starts_with("vsin-"));
                    ours.map(|l| l.name.clone()).collect()
                };
                let before = nl.links().unwrap();
                assert!(before.iter().any(|l| l.index == 1 && l.name == "lo"));
                assert_eq!(names(&before), [] as [&str; 0]);

                nl.veth_create_in("vsin-a", "vsin-b", fd).unwrap();
                // The peer never exists here, not even for a moment.
                assert_eq!(nl.link_index("vsin-b").unwrap(), None);
                let links = nl.links().unwrap();
                assert_eq!(names(&links), ["vsin-a"]);
                let a = nl.link_info("vsin-a").unwrap().unwrap();
                assert!(links.contains(&a), "{links:?}");
                assert_eq!(a.kind.as_deref(), Some("veth"));
                assert!(!a.up);

                // Either name taken: refused, and no half of a pair is left.
                let err = nl.veth_create_in("vsin-a", "vsin-c", fd).unwrap_err();
                assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
                let err = nl.veth_create_in("vsin-x", "vsin-b", fd).unwrap_err();
                assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
                // A descriptor that is not a namespace.
                let err = nl
                    .veth_create_in("vsin-y", "vsin-z", not_netns.as_raw_fd())
                    .unwrap_err();
                assert!(err.errno().is_some(), "{err}");
                eprintln!("expected refusal: {err}");
                assert_eq!(names(&nl.links().unwrap()), ["vsin-a"]);
                a.index
            })
            .unwrap();

        let peer = there
            .netns()
            .run(|| {
                let mut nl = Netlink::open().unwrap();
                let links = nl.links().unwrap();
                let peer: Vec<_> = links
                    .iter()
                    .filter(|l| l.name.starts_with("vsin-"))
                    .collect();
                assert_eq!(peer.len(), 1, "{links:?}");
                assert_eq!(peer[0].name, "vsin-b");
                peer[0].clone()
            })
            .unwrap();
        assert_eq!(peer.kind.as_deref(), Some("veth"));
        assert!(!peer.up);
        let shown = there.ip(&["-j", "link", "show", "vsin-b"]);
        assert!(shown.contains(r#""ifname":"vsin-b""#), "{shown}");

        // Deleting one end takes the other, in its namespace, with it.
        here.netns()
            .run(|| Netlink::open().unwrap().link_del(a).unwrap())
            .unwrap();
        let left = there
            .netns()
            .run(|| Netlink::open().unwrap().link_index("vsin-b").unwrap())
            .unwrap();
        assert_eq!(left, None);
    }

    /// Every link of the host's own namespace decodes, whatever its kind,
    /// and a dump agrees with asking for each link by index.
    #[test]
    fn lists_the_hosts_links() {
        if !root_or_skip("lists_the_hosts_links") {
            return;
        }
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        assert!(
            links.iter().any(|l| l.index == 1 && l.name == "lo"),
            "{links:?}"
        );
        for link in &links {
            // Links may come and go meanwhile; the ones still there agree.
            if let Some(again) = nl.link_info_by_index(link.index).unwrap() {
                assert_eq!((&again.name, &again.kind), (&link.name, &link.kind));
            }
        }
    }
}
