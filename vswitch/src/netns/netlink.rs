//! A minimal synchronous rtnetlink client: the handful of link, address and
//! route operations the switch needs, over a `NETLINK_ROUTE` socket, and the
//! lookups nat mode asks of the host's own tables (route to a destination,
//! IPv4 neighbour entries, an interface's IPv4 addresses).
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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use thiserror::Error;

/// Numbers from `<linux/netlink.h>`, `<linux/rtnetlink.h>`,
/// `<linux/if_link.h>`, `<linux/if_addr.h>`, `<linux/veth.h>`,
/// `<linux/neighbour.h>`.
mod consts {
    pub const NLMSG_HDRLEN: usize = 16;
    pub const NLA_HDRLEN: usize = 4;

    pub const NLMSG_NOOP: u16 = 1;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;

    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_ACK: u16 = 0x4;
    /// In a get request: `NLM_F_ROOT | NLM_F_MATCH`, every object.
    pub const NLM_F_DUMP: u16 = 0x300;
    pub const NLM_F_EXCL: u16 = 0x200;
    pub const NLM_F_CREATE: u16 = 0x400;
    /// In an NLMSG_ERROR: the echoed request was cut to its header.
    pub const NLM_F_CAPPED: u16 = 0x100;
    /// In an NLMSG_ERROR: extended-ack attributes follow.
    pub const NLM_F_ACK_TLVS: u16 = 0x200;

    pub const NLA_F_NESTED: u16 = 0x8000;
    pub const NLA_TYPE_MASK: u16 = 0x3fff;

    pub const SOL_NETLINK: libc::c_int = 270;
    pub const NETLINK_CAP_ACK: libc::c_int = 10;
    pub const NETLINK_EXT_ACK: libc::c_int = 11;
    pub const NLMSGERR_ATTR_MSG: u16 = 1;

    pub const RTM_NEWLINK: u16 = 16;
    pub const RTM_DELLINK: u16 = 17;
    pub const RTM_GETLINK: u16 = 18;
    pub const RTM_NEWADDR: u16 = 20;
    pub const RTM_GETADDR: u16 = 22;
    pub const RTM_NEWROUTE: u16 = 24;
    pub const RTM_GETROUTE: u16 = 26;
    pub const RTM_NEWNEIGH: u16 = 28;
    pub const RTM_GETNEIGH: u16 = 30;

    pub const IFLA_ADDRESS: u16 = 1;
    pub const IFLA_IFNAME: u16 = 3;
    pub const IFLA_MTU: u16 = 4;
    pub const IFLA_LINKINFO: u16 = 18;
    pub const IFLA_NET_NS_FD: u16 = 28;
    pub const IFLA_EXT_MASK: u16 = 29;
    pub const IFLA_NUM_RX_QUEUES: u16 = 32;
    pub const IFLA_INFO_KIND: u16 = 1;
    pub const IFLA_INFO_DATA: u16 = 2;
    pub const VETH_INFO_PEER: u16 = 1;
    pub const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

    pub const IFF_UP: u32 = 0x1;

    pub const IFA_ADDRESS: u16 = 1;
    pub const IFA_LOCAL: u16 = 2;
    pub const IFA_FLAGS: u16 = 8;
    pub const IFA_F_NODAD: u32 = 0x02;

    pub const RTA_DST: u16 = 1;
    pub const RTA_OIF: u16 = 4;
    pub const RTA_GATEWAY: u16 = 5;
    pub const RTA_PREFSRC: u16 = 7;
    /// A gateway of another family (an IPv4 route via an IPv6 next hop).
    pub const RTA_VIA: u16 = 18;
    pub const RT_TABLE_MAIN: u8 = 254;
    pub const RTPROT_STATIC: u8 = 4;
    pub const RT_SCOPE_UNIVERSE: u8 = 0;
    pub const RTN_UNICAST: u8 = 1;

    pub const NDA_DST: u16 = 1;
    pub const NDA_LLADDR: u16 = 2;
    pub const NDA_FLAGS_EXT: u16 = 15;
    pub const NTF_USE: u8 = 0x01;
    pub const NTF_EXT_LEARNED: u8 = 0x10;
    /// Under `NDA_FLAGS_EXT`.
    pub const NTF_EXT_MANAGED: u32 = 1 << 0;
    pub const NTF_EXT_EXT_VALIDATED: u32 = 1 << 2;
}
use consts::*;

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
    #[error("{op} {target}: malformed reply: {what}")]
    Malformed {
        op: &'static str,
        target: String,
        what: &'static str,
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
    flags: u8,
    /// `NDA_FLAGS_EXT`, 0 when absent.
    flags_ext: u32,
}

impl NeighEntry {
    /// True for entries that are not the kernel's to resolve: static ones
    /// (`PERMANENT`, `NOARP`) and ones another agent learned or manages. An
    /// `NTF_USE` update is administrative: the kernel drops `PERMANENT` from
    /// the state and clears the externally-learned, managed and validated
    /// flags the request does not repeat, so these must not get one.
    fn leave_alone(&self) -> bool {
        self.neighbour.state & (nud::PERMANENT | nud::NOARP) != 0
            || self.flags & NTF_EXT_LEARNED != 0
            || self.flags_ext & (NTF_EXT_MANAGED | NTF_EXT_EXT_VALIDATED) != 0
    }
}

/// A `NETLINK_ROUTE` socket bound to the namespace of the thread that opened it.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    pub fn open() -> Result<Netlink, NetlinkError> {
        let sys = |call| NetlinkError::Sys {
            call,
            source: io::Error::last_os_error(),
        };
        // SAFETY: socket takes no pointers; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(sys("socket"));
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the given length.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(sys("bind"));
        }
        // Extended acks carry the kernel's reason in text; capped acks keep
        // error replies from echoing the whole request. Both are best effort:
        // without them errors still carry the errno.
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let one: libc::c_int = 1;
            // SAFETY: passes a live c_int of the stated size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0; 32 * 1024],
        })
    }

    /// The index of the link called `name`, or `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.link_info(name)?.map(|l| l.index))
    }

    /// The link called `name`, or `None` when there is none.
    pub fn link_info(&mut self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        validate_ifname(name)?;
        let mut req = Request::new(RTM_GETLINK, 0);
        req.header(&ifinfomsg(0, 0, 0));
        req.attr_str(IFLA_IFNAME, name);
        req.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        self.get_link(req, || name.to_string())
    }

    /// The link with index `index`, or `None` when there is none.
    pub fn link_info_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut req = Request::new(RTM_GETLINK, 0);
        req.header(&ifinfomsg(index, 0, 0));
        req.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        self.get_link(req, || format!("index {index}"))
    }

    fn get_link(
        &mut self,
        mut req: Request,
        target: impl Fn() -> String,
    ) -> Result<Option<LinkInfo>, NetlinkError> {
        let get = Get {
            op: "get link",
            reply: RTM_NEWLINK,
            absent: |f| matches!(f, Failure::Errno(libc::ENODEV, _)),
            missing: "acknowledged without a link",
        };
        self.get_one(&mut req, &get, parse_link, target)
    }

    /// The one object a get request answers with: the first reply of
    /// `get.reply`'s type, parsed; `None` when the kernel's error says
    /// there is none.
    fn get_one<T>(
        &mut self,
        req: &mut Request,
        get: &Get,
        parse: impl Fn(&[u8]) -> Result<T, &'static str>,
        target: impl Fn() -> String,
    ) -> Result<Option<T>, NetlinkError> {
        let mut found: Option<Result<T, &'static str>> = None;
        let res = self.transact(req, |ty, payload| {
            if ty == get.reply && found.is_none() {
                found = Some(parse(payload));
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
        let mut req = encode_link_set(index, change)?;
        self.transact(&mut req, |_, _| ())
            .map_err(|f| f.into_error("set link", format!("index {index}")))
    }

    /// Creates a link of a kind that needs no parameters ("bridge", "dummy",
    /// ...), down.
    pub fn link_add(&mut self, name: &str, kind: &str) -> Result<(), NetlinkError> {
        validate_ifname(name)?;
        let mut req = Request::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        req.header(&ifinfomsg(0, 0, 0));
        req.attr_str(IFLA_IFNAME, name);
        let info = req.nest_begin(IFLA_LINKINFO);
        req.attr_str(IFLA_INFO_KIND, kind);
        req.nest_end(info);
        self.transact(&mut req, |_, _| ())
            .map_err(|f| f.into_error("add link", format!("{name} ({kind})")))
    }

    /// Creates a veth pair `name` <-> `peer_name`, both down, in this namespace.
    pub fn veth_create(&mut self, name: &str, peer_name: &str) -> Result<(), NetlinkError> {
        let mut req = encode_veth_create(name, peer_name)?;
        self.transact(&mut req, |_, _| ())
            .map_err(|f| f.into_error("create veth", format!("{name}/{peer_name}")))
    }

    /// Deletes link `index` (both ends, for a veth).
    pub fn link_del(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut req = Request::new(RTM_DELLINK, 0);
        req.header(&ifinfomsg(index, 0, 0));
        self.transact(&mut req, |_, _| ())
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
        let mut req = encode_addr_add(index, addr, prefix_len)?;
        match self.transact(&mut req, |_, _| ()) {
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
        let mut req = encode_route_add_default(index, gateway);
        match self.transact(&mut req, |_, _| ()) {
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
            reply: RTM_NEWROUTE,
            absent: |f| {
                matches!(
                    f,
                    Failure::Errno(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES, _)
                        | Failure::Errno(libc::EINVAL, None)
                )
            },
            missing: "acknowledged without a route",
        };
        match self.get_one(&mut encode_route_get(dst), &get, parse_route, target)? {
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
            reply: RTM_NEWNEIGH,
            absent: |f| matches!(f, Failure::Errno(libc::ENOENT, _)),
            missing: "acknowledged without a neighbour",
        };
        self.get_one(
            &mut encode_neigh_get(ifindex, ip),
            &get,
            parse_neigh,
            || format!("{ip} on index {ifindex}"),
        )
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
        let mut req = encode_neigh_use(ifindex, ip);
        self.transact(&mut req, |_, _| ())
            .map_err(|f| f.into_error("resolve neighbour", format!("{ip} on index {ifindex}")))
    }

    /// The IPv4 addresses on link `ifindex` with their prefix lengths, in
    /// the kernel's order (primary addresses first); empty when the link has
    /// none or does not exist. For a point-to-point address this is the
    /// local end.
    pub fn ipv4_addrs(&mut self, ifindex: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let mut req = encode_addr_dump(libc::AF_INET as u8, ifindex);
        let mut addrs = Vec::new();
        let mut bad = None;
        // Without strict checking the kernel dumps every link's addresses;
        // the index filter is ours.
        let res = self.transact(&mut req, |ty, payload| {
            if ty != RTM_NEWADDR {
                return;
            }
            match parse_ipv4_addr(payload) {
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
    /// ack (or `NLMSG_DONE`), handing each data message to `on_reply`.
    fn transact(
        &mut self,
        req: &mut Request,
        mut on_reply: impl FnMut(u16, &[u8]),
    ) -> Result<(), Failure> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = req.finish(seq, NLM_F_REQUEST | NLM_F_ACK);
        loop {
            // SAFETY: bytes is a live buffer of bytes.len() bytes.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
            if n >= 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(Failure::Io("send", err));
            }
        }
        loop {
            let len = self.recv()?;
            let mut done = None;
            for msg in Messages::new(&self.buf[..len]) {
                let msg = msg.map_err(Failure::Malformed)?;
                // Replies to an earlier, abandoned request are not ours.
                if msg.seq != seq {
                    continue;
                }
                match msg.ty {
                    NLMSG_NOOP => {}
                    // A dump ends here; a negative int after the header
                    // is an error that cut it short.
                    NLMSG_DONE => {
                        done = Some(match dump_error(msg.payload) {
                            Some(errno) => Err(Failure::Errno(errno, None)),
                            None => Ok(()),
                        })
                    }
                    NLMSG_ERROR => {
                        done = Some(match parse_error(&msg) {
                            Ok((0, _)) => Ok(()),
                            Ok((errno, text)) => Err(Failure::Errno(errno, text)),
                            Err(what) => Err(Failure::Malformed(what)),
                        })
                    }
                    ty => on_reply(ty, msg.payload),
                }
                if done.is_some() {
                    break;
                }
            }
            if let Some(done) = done {
                return done;
            }
        }
    }

    /// Receives one datagram into `self.buf`, growing it first if the
    /// waiting datagram is larger.
    fn recv(&mut self) -> Result<usize, Failure> {
        loop {
            // SAFETY: peeks into a live, writable buffer of its length;
            // MSG_TRUNC makes the return value the datagram's full size.
            let want = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            };
            if want < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Failure::Io("recv", err));
            }
            if want as usize > self.buf.len() {
                self.buf.resize(want as usize, 0);
            }
            // SAFETY: as above, without peeking; the buffer now fits.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Failure::Io("recv", err));
            }
            return Ok(n as usize);
        }
    }
}

/// How a request failed, before the operation's context is attached.
#[derive(Debug)]
/// What a get request expects: its name in errors, the reply's type,
/// which failure means "no such object", and what to say of an ack
/// without one.
struct Get {
    op: &'static str,
    reply: u16,
    absent: fn(&Failure) -> bool,
    missing: &'static str,
}

enum Failure {
    Io(&'static str, io::Error),
    Errno(i32, Option<String>),
    Malformed(&'static str),
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
            Failure::Malformed(what) => NetlinkError::Malformed { op, target, what },
        }
    }
}

fn validate_ifname(name: &str) -> Result<(), NetlinkError> {
    crate::ifname::IfName::new(name)
        .map(drop)
        .map_err(|reason| NetlinkError::InvalidName {
            name: name.to_string(),
            reason,
        })
}

// ---- encoding ----

/// A request under construction: header, fixed family header, attributes.
struct Request {
    buf: Vec<u8>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Request {
    fn new(ty: u16, flags: u16) -> Request {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        Request { buf }
    }

    fn pad(&mut self) {
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// Appends the family header (`ifinfomsg`, `ifaddrmsg`, `rtmsg`).
    fn header(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pad();
    }

    fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = (NLA_HDRLEN + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// A NUL-terminated string, as the kernel's NLA_STRING policies expect.
    fn attr_str(&mut self, ty: u16, s: &str) {
        let start = self.buf.len();
        let len = (NLA_HDRLEN + s.len() + 1) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        debug_assert_eq!(self.buf.len() - start, len as usize);
        self.pad();
    }

    fn nest_begin(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.attr(ty | NLA_F_NESTED, &[]);
        at
    }

    fn nest_end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Fills in length and sequence number and ORs in `flags`.
    fn finish(&mut self, seq: u32, flags: u16) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        let old = u16::from_ne_bytes([self.buf[6], self.buf[7]]);
        self.buf[6..8].copy_from_slice(&(old | flags).to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// `struct ifinfomsg` for AF_UNSPEC.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

fn family(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn encode_link_set(index: u32, change: &LinkChange) -> Result<Request, NetlinkError> {
    if let Some(name) = &change.name {
        validate_ifname(name)?;
    }
    let mut req = Request::new(RTM_NEWLINK, 0);
    let (flags, mask) = match change.up {
        Some(true) => (IFF_UP, IFF_UP),
        Some(false) => (0, IFF_UP),
        None => (0, 0),
    };
    req.header(&ifinfomsg(index, flags, mask));
    if let Some(fd) = change.netns_fd {
        req.attr_u32(IFLA_NET_NS_FD, fd as u32);
    }
    if let Some(name) = &change.name {
        req.attr_str(IFLA_IFNAME, name);
    }
    if let Some(mtu) = change.mtu {
        req.attr_u32(IFLA_MTU, mtu);
    }
    if let Some(mac) = &change.mac {
        req.attr(IFLA_ADDRESS, mac);
    }
    Ok(req)
}

fn encode_veth_create(name: &str, peer_name: &str) -> Result<Request, NetlinkError> {
    validate_ifname(name)?;
    validate_ifname(peer_name)?;
    let mut req = Request::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    req.header(&ifinfomsg(0, 0, 0));
    req.attr_str(IFLA_IFNAME, name);
    let info = req.nest_begin(IFLA_LINKINFO);
    req.attr_str(IFLA_INFO_KIND, "veth");
    let data = req.nest_begin(IFLA_INFO_DATA);
    // The peer is described like a link of its own: ifinfomsg, then attrs.
    let peer = req.nest_begin(VETH_INFO_PEER);
    req.header(&ifinfomsg(0, 0, 0));
    req.attr_str(IFLA_IFNAME, peer_name);
    req.nest_end(peer);
    req.nest_end(data);
    req.nest_end(info);
    Ok(req)
}

fn encode_addr_add(index: u32, addr: IpAddr, prefix_len: u8) -> Result<Request, NetlinkError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(NetlinkError::InvalidPrefix { addr, prefix_len });
    }
    let ifa_flags = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
    let mut req = Request::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let mut hdr = [0u8; 8];
    hdr[0] = family(&addr);
    hdr[1] = prefix_len;
    hdr[2] = ifa_flags as u8;
    hdr[3] = RT_SCOPE_UNIVERSE;
    hdr[4..8].copy_from_slice(&index.to_ne_bytes());
    req.header(&hdr);
    let bytes = addr_bytes(&addr);
    req.attr(IFA_LOCAL, &bytes);
    req.attr(IFA_ADDRESS, &bytes);
    if ifa_flags != 0 {
        req.attr_u32(IFA_FLAGS, ifa_flags);
    }
    Ok(req)
}

fn encode_route_add_default(index: u32, gateway: IpAddr) -> Request {
    let mut req = Request::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type, flags (u32).
    let hdr = [
        family(&gateway),
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ];
    req.header(&hdr);
    req.attr(RTA_GATEWAY, &addr_bytes(&gateway));
    req.attr_u32(RTA_OIF, index);
    req
}

/// `RTM_GETROUTE` for one IPv4 destination, like `ip route get`.
fn encode_route_get(dst: Ipv4Addr) -> Request {
    let mut req = Request::new(RTM_GETROUTE, 0);
    // struct rtmsg: AF_INET, a /32 destination, everything else unset.
    let hdr = [libc::AF_INET as u8, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    req.header(&hdr);
    req.attr(RTA_DST, &dst.octets());
    req
}

/// `struct ndmsg`: family, pad, pad (u16), ifindex (i32), state (u16),
/// flags, type.
fn ndmsg(ifindex: u32, state: u16, flags: u8) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[0] = libc::AF_INET as u8;
    m[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m[8..10].copy_from_slice(&state.to_ne_bytes());
    m[10] = flags;
    m
}

/// `RTM_GETNEIGH` for one entry; the kernel wants the link and the address
/// and nothing else.
fn encode_neigh_get(ifindex: u32, ip: Ipv4Addr) -> Request {
    let mut req = Request::new(RTM_GETNEIGH, 0);
    req.header(&ndmsg(ifindex, nud::NONE, 0));
    req.attr(NDA_DST, &ip.octets());
    req
}

/// `RTM_NEWNEIGH` with `NTF_USE`: the kernel creates the entry if needed
/// (`NLM_F_CREATE`; not `NLM_F_EXCL`, an existing one is fine) and calls
/// `neigh_event_send` on it. Under `NTF_USE` the kernel ignores the state
/// for the update, but reads `PERMANENT` in it when creating (exempting the
/// entry from garbage collection), so it is NONE. No `NDA_LLADDR`: the
/// address is the kernel's to learn.
fn encode_neigh_use(ifindex: u32, ip: Ipv4Addr) -> Request {
    let mut req = Request::new(RTM_NEWNEIGH, NLM_F_CREATE);
    req.header(&ndmsg(ifindex, nud::NONE, NTF_USE));
    req.attr(NDA_DST, &ip.octets());
    req
}

/// An `RTM_GETADDR` dump of one family. The index is set for kernels with
/// strict checking, which then filter; others ignore it.
fn encode_addr_dump(family: u8, ifindex: u32) -> Request {
    let mut req = Request::new(RTM_GETADDR, NLM_F_DUMP);
    let mut hdr = [0u8; 8];
    hdr[0] = family;
    hdr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    req.header(&hdr);
    req
}

// ---- parsing ----

struct Message<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages of one datagram.
struct Messages<'a> {
    buf: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Messages { buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        if self.buf.len() < NLMSG_HDRLEN {
            self.buf = &[];
            return Some(Err("truncated message header"));
        }
        let len = u32::from_ne_bytes(self.buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > self.buf.len() {
            self.buf = &[];
            return Some(Err("bad message length"));
        }
        let msg = Message {
            ty: u16::from_ne_bytes([self.buf[4], self.buf[5]]),
            flags: u16::from_ne_bytes([self.buf[6], self.buf[7]]),
            seq: u32::from_ne_bytes(self.buf[8..12].try_into().unwrap()),
            payload: &self.buf[NLMSG_HDRLEN..len],
        };
        self.buf = &self.buf[align4(len).min(self.buf.len())..];
        Some(Ok(msg))
    }
}

/// The attributes in `buf`, as (type without flag bits, payload). Stops at
/// the first malformed one.
struct Attrs<'a> {
    buf: &'a [u8],
}

fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { buf }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.buf.len() {
            self.buf = &[];
            return None;
        }
        let payload = &self.buf[NLA_HDRLEN..len];
        self.buf = &self.buf[align4(len).min(self.buf.len())..];
        Some((ty, payload))
    }
}

/// A string attribute, without its NUL terminator.
fn attr_string(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

fn attr_u32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

/// An `RTM_NEWLINK` payload.
fn parse_link(payload: &[u8]) -> Result<LinkInfo, &'static str> {
    if payload.len() < 16 {
        return Err("truncated ifinfomsg");
    }
    let index = u32::from_ne_bytes(payload[4..8].try_into().unwrap());
    let flags = u32::from_ne_bytes(payload[8..12].try_into().unwrap());
    let mut info = LinkInfo {
        index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
        up: flags & IFF_UP != 0,
        flags,
        kind: None,
        rx_queues: 1,
    };
    for (ty, data) in attrs(&payload[16..]) {
        match ty {
            IFLA_IFNAME => info.name = attr_string(data),
            IFLA_ADDRESS if data.len() == 6 => info.mac.copy_from_slice(data),
            IFLA_MTU => info.mtu = attr_u32(data).ok_or("short IFLA_MTU")?,
            IFLA_NUM_RX_QUEUES => {
                info.rx_queues = attr_u32(data).ok_or("short IFLA_NUM_RX_QUEUES")?.max(1)
            }
            IFLA_LINKINFO => {
                info.kind = attrs(data)
                    .find(|(t, _)| *t == IFLA_INFO_KIND)
                    .map(|(_, k)| attr_string(k));
            }
            _ => {}
        }
    }
    Ok(info)
}

fn attr_ipv4(payload: &[u8]) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = payload.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

/// An `RTM_NEWROUTE` answering `RTM_GETROUTE`.
struct RouteReply {
    info: RouteInfo,
    /// The next hop came as `RTA_VIA` (another family) instead of
    /// `RTA_GATEWAY`.
    via: bool,
}

fn parse_route(payload: &[u8]) -> Result<RouteReply, &'static str> {
    if payload.len() < 12 {
        return Err("truncated rtmsg");
    }
    if payload[0] != libc::AF_INET as u8 {
        return Err("not an IPv4 route");
    }
    let mut oif = None;
    let mut info = RouteInfo {
        oif: 0,
        gateway: None,
        prefsrc: None,
    };
    let mut via = false;
    for (ty, data) in attrs(&payload[12..]) {
        match ty {
            RTA_OIF => oif = Some(attr_u32(data).ok_or("short RTA_OIF")?),
            RTA_GATEWAY => info.gateway = Some(attr_ipv4(data).ok_or("bad RTA_GATEWAY")?),
            RTA_PREFSRC => info.prefsrc = Some(attr_ipv4(data).ok_or("bad RTA_PREFSRC")?),
            RTA_VIA => via = true,
            _ => {}
        }
    }
    info.oif = oif.ok_or("route without RTA_OIF")?;
    Ok(RouteReply { info, via })
}

/// An `RTM_NEWNEIGH` payload.
fn parse_neigh(payload: &[u8]) -> Result<NeighEntry, &'static str> {
    if payload.len() < 12 {
        return Err("truncated ndmsg");
    }
    let mut entry = NeighEntry {
        neighbour: Neighbour {
            mac: None,
            state: u16::from_ne_bytes([payload[8], payload[9]]),
        },
        flags: payload[10],
        flags_ext: 0,
    };
    for (ty, data) in attrs(&payload[12..]) {
        match ty {
            NDA_LLADDR => entry.neighbour.mac = data.try_into().ok(),
            NDA_FLAGS_EXT => entry.flags_ext = attr_u32(data).ok_or("short NDA_FLAGS_EXT")?,
            _ => {}
        }
    }
    Ok(entry)
}

/// An `RTM_NEWADDR` payload: (index, address, prefix length) for IPv4,
/// `None` for other families.
fn parse_ipv4_addr(payload: &[u8]) -> Result<Option<(u32, Ipv4Addr, u8)>, &'static str> {
    if payload.len() < 8 {
        return Err("truncated ifaddrmsg");
    }
    if payload[0] != libc::AF_INET as u8 {
        return Ok(None);
    }
    let prefix_len = payload[1];
    let index = u32::from_ne_bytes(payload[4..8].try_into().unwrap());
    let (mut local, mut address) = (None, None);
    for (ty, data) in attrs(&payload[8..]) {
        match ty {
            IFA_LOCAL => local = Some(attr_ipv4(data).ok_or("bad IFA_LOCAL")?),
            IFA_ADDRESS => address = Some(attr_ipv4(data).ok_or("bad IFA_ADDRESS")?),
            _ => {}
        }
    }
    // IFA_ADDRESS is the peer on a point-to-point link; IFA_LOCAL, when
    // present, is always this end.
    let addr = local
        .or(address)
        .ok_or("address without IFA_LOCAL or IFA_ADDRESS")?;
    Ok(Some((index, addr, prefix_len)))
}

/// The (positive) errno an `NLMSG_DONE` carries when the dump failed.
fn dump_error(payload: &[u8]) -> Option<i32> {
    let status = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    (status < 0).then_some(-status)
}

/// An `NLMSG_ERROR`: the (positive) errno, 0 for an ack, and the
/// extended-ack message if any.
fn parse_error(msg: &Message<'_>) -> Result<(i32, Option<String>), &'static str> {
    let p = msg.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err("truncated error message");
    }
    let error = i32::from_ne_bytes(p[0..4].try_into().unwrap());
    let mut text = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        let echoed = if msg.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            u32::from_ne_bytes(p[4..8].try_into().unwrap()) as usize
        };
        if let Some(tlvs) = p.get(4 + align4(echoed)..) {
            text = attrs(tlvs)
                .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
                .map(|(_, m)| attr_string(m));
        }
    }
    Ok((-error, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn finished(mut req: Request) -> Vec<u8> {
        req.finish(7, NLM_F_REQUEST | NLM_F_ACK).to_vec()
    }

    #[test]
    fn addr_add_v4_encoding() {
        let req = encode_addr_add(5, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 24).unwrap();
        let mut want = Vec::new();
        // nlmsghdr: len 40, RTM_NEWADDR, REQUEST|ACK|EXCL|CREATE, seq 7, pid 0.
        want.extend_from_slice(&40u32.to_ne_bytes());
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&0x605u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        // ifaddrmsg: AF_INET, /24, no flags, universe, index 5.
        want.extend_from_slice(&[2, 24, 0, 0]);
        want.extend_from_slice(&5u32.to_ne_bytes());
        // IFA_LOCAL, IFA_ADDRESS.
        for ty in [2u16, 1] {
            want.extend_from_slice(&8u16.to_ne_bytes());
            want.extend_from_slice(&ty.to_ne_bytes());
            want.extend_from_slice(&[10, 0, 0, 2]);
        }
        assert_eq!(finished(req), want);
    }

    #[test]
    fn addr_add_v6_sets_nodad() {
        let bytes = finished(encode_addr_add(1, "fd00::1".parse().unwrap(), 64).unwrap());
        assert_eq!(bytes.len(), 16 + 8 + 20 + 20 + 8);
        assert_eq!(&bytes[16..20], &[10, 64, IFA_F_NODAD as u8, 0]);
        let flags: Vec<_> = attrs(&bytes[24..]).map(|(t, _)| t).collect();
        assert_eq!(flags, [IFA_LOCAL, IFA_ADDRESS, IFA_FLAGS]);
        assert!(matches!(
            encode_addr_add(1, "fd00::1".parse().unwrap(), 129),
            Err(NetlinkError::InvalidPrefix { .. })
        ));
        assert!(encode_addr_add(1, "10.0.0.1".parse().unwrap(), 33).is_err());
    }

    #[test]
    fn string_attrs_are_nul_terminated_and_padded() {
        let mut req = Request::new(RTM_GETLINK, 0);
        req.header(&ifinfomsg(0, 0, 0));
        req.attr_str(IFLA_IFNAME, "eth0");
        req.attr_u32(IFLA_EXT_MASK, 8);
        let bytes = finished(req);
        // "eth0\0" is 5 bytes: attr len 9, padded to 12.
        assert_eq!(&bytes[32..34], &9u16.to_ne_bytes());
        assert_eq!(&bytes[36..41], b"eth0\0");
        assert_eq!(&bytes[41..44], &[0, 0, 0]);
        assert_eq!(&bytes[46..48], &IFLA_EXT_MASK.to_ne_bytes());
        assert_eq!(bytes.len(), 52);
        let got: Vec<_> = attrs(&bytes[32..]).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(attr_string(got[0].1), "eth0");
        assert_eq!(attr_u32(got[1].1), Some(8));
    }

    #[test]
    fn veth_nesting() {
        let bytes = finished(encode_veth_create("va", "vb").unwrap());
        let top: Vec<_> = attrs(&bytes[32..]).collect();
        assert_eq!(top[0].0, IFLA_IFNAME);
        let (ty, info) = top[1];
        assert_eq!(ty, IFLA_LINKINFO);
        // Nested flag set on the wire, masked when parsed.
        assert_eq!(
            u16::from_ne_bytes([bytes[32 + 8 + 2], bytes[32 + 8 + 3]]),
            IFLA_LINKINFO | NLA_F_NESTED
        );
        let info: Vec<_> = attrs(info).collect();
        assert_eq!(attr_string(info[0].1), "veth");
        assert_eq!(info[1].0, IFLA_INFO_DATA);
        let (pty, peer) = attrs(info[1].1).next().unwrap();
        assert_eq!(pty, VETH_INFO_PEER);
        assert_eq!(&peer[..16], &[0; 16]);
        let (nty, name) = attrs(&peer[16..]).next().unwrap();
        assert_eq!((nty, attr_string(name).as_str()), (IFLA_IFNAME, "vb"));
        // Lengths add up to the whole message.
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
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
        let bytes = finished(encode_link_set(3, &change).unwrap());
        assert_eq!(&bytes[16..32], &ifinfomsg(3, 0, IFF_UP));
        let got: Vec<_> = attrs(&bytes[32..]).map(|(t, _)| t).collect();
        assert_eq!(got, [IFLA_NET_NS_FD, IFLA_IFNAME, IFLA_MTU, IFLA_ADDRESS]);
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
        let gw = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        let bytes = finished(encode_route_add_default(4, gw));
        assert_eq!(&bytes[16..24], &[10, 0, 0, 0, 254, 4, 0, 1]);
        let got: Vec<_> = attrs(&bytes[28..]).collect();
        assert_eq!(got[0], (RTA_GATEWAY, &gw_bytes(gw)[..]));
        assert_eq!(got[1].0, RTA_OIF);
        assert_eq!(attr_u32(got[1].1), Some(4));

        fn gw_bytes(gw: IpAddr) -> Vec<u8> {
            addr_bytes(&gw)
        }
    }

    /// An NLMSG_ERROR as the kernel sends it with CAP_ACK and EXT_ACK.
    fn error_reply(seq: u32, errno: i32, text: Option<&str>) -> Vec<u8> {
        let mut tlv = Vec::new();
        if let Some(t) = text {
            let mut r = Request { buf: Vec::new() };
            r.attr_str(NLMSGERR_ATTR_MSG, t);
            tlv = r.buf;
        }
        let mut flags = NLM_F_CAPPED;
        if !tlv.is_empty() {
            flags |= NLM_F_ACK_TLVS;
        }
        let len = 16 + 4 + 16 + tlv.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-errno).to_ne_bytes());
        // The echoed request header (its length says 60, but it is capped).
        m.extend_from_slice(&60u32.to_ne_bytes());
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&tlv);
        m
    }

    #[test]
    fn parses_acks_and_errors() {
        let mut dgram = error_reply(3, 0, None);
        dgram.extend(error_reply(4, libc::EINVAL, Some("MTU too small")));
        let msgs: Vec<_> = Messages::new(&dgram).map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].ty, msgs[0].seq), (NLMSG_ERROR, 3));
        assert_eq!(parse_error(&msgs[0]).unwrap(), (0, None));
        assert_eq!(
            parse_error(&msgs[1]).unwrap(),
            (libc::EINVAL, Some("MTU too small".to_string()))
        );
        let err = Failure::Errno(libc::EINVAL, Some("MTU too small".into()))
            .into_error("set link", "index 3".into());
        assert_eq!(err.errno(), Some(libc::EINVAL));
        let text = err.to_string();
        assert!(text.starts_with("set link index 3: "), "{text}");
        assert!(text.ends_with("(MTU too small)"), "{text}");
    }

    #[test]
    fn truncated_input_does_not_panic() {
        let dgram = error_reply(1, libc::EPERM, Some("nope"));
        for cut in 0..dgram.len() {
            for m in Messages::new(&dgram[..cut]).flatten() {
                let _ = parse_error(&m);
            }
            let _ = attrs(&dgram[..cut]).count();
            let _ = parse_link(&dgram[..cut]);
        }
        let oif = 4u32.to_ne_bytes();
        let route = route_reply(2, &[(RTA_OIF, &oif[..]), (RTA_GATEWAY, &[10, 0, 0, 1])]);
        let neigh = neigh_reply(nud::STALE, 0, &[(NDA_LLADDR, &[2, 0, 0, 0, 0, 1])]);
        let addr = addr_reply(2, 24, 4, &[(IFA_LOCAL, &[10, 0, 0, 1])]);
        for cut in 0..route.len() {
            let _ = parse_route(&route[..cut]);
        }
        for cut in 0..neigh.len() {
            let _ = parse_neigh(&neigh[..cut]);
        }
        for cut in 0..addr.len() {
            let _ = parse_ipv4_addr(&addr[..cut]);
            let _ = dump_error(&addr[..cut]);
        }
    }

    #[test]
    fn parses_link_reply() {
        let mut r = Request { buf: Vec::new() };
        r.header(&ifinfomsg(7, IFF_UP | 0x10000, 0));
        r.attr_str(IFLA_IFNAME, "tap0");
        r.attr_u32(IFLA_MTU, 1500);
        r.attr(IFLA_ADDRESS, &[2, 1, 2, 3, 4, 5]);
        let li = r.nest_begin(IFLA_LINKINFO);
        r.attr_str(IFLA_INFO_KIND, "tun");
        r.nest_end(li);
        let info = parse_link(&r.buf).unwrap();
        assert_eq!(
            info,
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
    }

    /// A nlmsghdr as `finished` writes it.
    fn nlmsghdr(len: u32, ty: u16, flags: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_ne_bytes());
        h.extend_from_slice(&ty.to_ne_bytes());
        h.extend_from_slice(&flags.to_ne_bytes());
        h.extend_from_slice(&7u32.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h
    }

    #[test]
    fn route_get_encoding() {
        // RTM_GETROUTE, REQUEST|ACK.
        let mut want = nlmsghdr(36, 26, 0x5);
        // rtmsg: AF_INET, dst_len 32, the rest zero.
        want.extend_from_slice(&[2, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // RTA_DST.
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[192, 0, 2, 9]);
        assert_eq!(
            finished(encode_route_get(Ipv4Addr::new(192, 0, 2, 9))),
            want
        );
    }

    #[test]
    fn neigh_get_encoding() {
        // RTM_GETNEIGH, REQUEST|ACK.
        let mut want = nlmsghdr(36, 30, 0x5);
        // ndmsg: AF_INET, pads, ifindex 6, state 0, flags 0, type 0.
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(&6u32.to_ne_bytes());
        want.extend_from_slice(&[0, 0, 0, 0]);
        // NDA_DST.
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[10, 0, 0, 1]);
        assert_eq!(
            finished(encode_neigh_get(6, Ipv4Addr::new(10, 0, 0, 1))),
            want
        );
    }

    #[test]
    fn neigh_use_encoding() {
        // RTM_NEWNEIGH, REQUEST|ACK|CREATE: no EXCL, no REPLACE.
        let mut want = nlmsghdr(36, 28, 0x405);
        // ndmsg: AF_INET, ifindex 6, state NONE, flags NTF_USE.
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(&6u32.to_ne_bytes());
        want.extend_from_slice(&[0, 0, NTF_USE, 0]);
        // NDA_DST, and no NDA_LLADDR.
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[10, 0, 0, 1]);
        assert_eq!(
            finished(encode_neigh_use(6, Ipv4Addr::new(10, 0, 0, 1))),
            want
        );
    }

    #[test]
    fn addr_dump_encoding() {
        // RTM_GETADDR, REQUEST|ACK|DUMP; ifaddrmsg with the index.
        let mut want = nlmsghdr(24, 22, 0x305);
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(&3u32.to_ne_bytes());
        assert_eq!(finished(encode_addr_dump(2, 3)), want);
    }

    /// An `RTM_NEWROUTE` payload as `ip route get` receives it.
    fn route_reply(family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut r = Request { buf: Vec::new() };
        // rtmsg: family, /32, table main, type unicast, RTM_F_CLONED.
        r.header(&[family, 32, 0, 0, 254, 0, 0, 1, 0, 2, 0, 0]);
        for (ty, data) in attrs {
            r.attr(*ty, data);
        }
        r.buf
    }

    #[test]
    fn parses_route_reply() {
        let table = 254u32.to_ne_bytes();
        let oif = 4u32.to_ne_bytes();
        let reply = route_reply(
            2,
            &[
                (15, &table[..]),
                (RTA_DST, &[198, 18, 1, 7]),
                (RTA_OIF, &oif[..]),
                (RTA_PREFSRC, &[10, 77, 1, 1]),
                (RTA_GATEWAY, &[10, 77, 1, 2]),
            ],
        );
        let got = parse_route(&reply).unwrap();
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
        let reply = route_reply(2, &[(RTA_OIF, &oif[..])]);
        assert_eq!(parse_route(&reply).unwrap().info.gateway, None);
        // struct rtvia: family AF_INET6, then the address.
        let mut via = vec![10, 0];
        via.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let reply = route_reply(2, &[(RTA_OIF, &oif[..]), (RTA_VIA, &via)]);
        assert!(parse_route(&reply).unwrap().via);
        assert!(parse_route(&route_reply(2, &[])).is_err());
        assert!(parse_route(&route_reply(10, &[(RTA_OIF, &oif[..])])).is_err());
        let short_gw = route_reply(2, &[(RTA_OIF, &oif[..]), (RTA_GATEWAY, &[10, 0])]);
        assert!(parse_route(&short_gw).is_err());
    }

    /// An `RTM_NEWNEIGH` payload.
    fn neigh_reply(state: u16, flags: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut r = Request { buf: Vec::new() };
        let mut hdr = ndmsg(5, state, flags);
        hdr[11] = RTN_UNICAST;
        r.header(&hdr);
        for (ty, data) in attrs {
            r.attr(*ty, data);
        }
        r.buf
    }

    #[test]
    fn parses_neighbour_reply() {
        let mac = [0x02, 0xbb, 0, 0, 1, 2];
        let probes = 0u32.to_ne_bytes();
        let cacheinfo = [0u8; 16];
        let reply = neigh_reply(
            nud::REACHABLE,
            0,
            &[
                (NDA_DST, &[10, 77, 1, 2]),
                (NDA_LLADDR, &mac),
                (4, &probes[..]),
                (3, &cacheinfo),
            ],
        );
        let e = parse_neigh(&reply).unwrap();
        assert_eq!(
            e.neighbour,
            Neighbour {
                mac: Some(mac),
                state: nud::REACHABLE
            }
        );
        assert!(e.neighbour.usable() && !e.leave_alone());

        // Resolving: no address yet.
        let e = parse_neigh(&neigh_reply(
            nud::INCOMPLETE,
            0,
            &[(NDA_DST, &[10, 77, 1, 9])],
        ))
        .unwrap();
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
            let e = parse_neigh(&neigh_reply(state, flags, &attrs)).unwrap();
            assert!(e.leave_alone(), "state {state:#x} flags {flags:#x}");
        }
        // A link without 6-byte addresses (NOARP, empty NDA_LLADDR).
        let e = parse_neigh(&neigh_reply(nud::NOARP, 0, &[(NDA_LLADDR, &[])])).unwrap();
        assert_eq!(e.neighbour.mac, None);
        assert!(!e.neighbour.usable());
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
    fn addr_reply(family: u8, prefix_len: u8, index: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut r = Request { buf: Vec::new() };
        let mut hdr = [family, prefix_len, 0x80, 0, 0, 0, 0, 0];
        hdr[4..8].copy_from_slice(&index.to_ne_bytes());
        r.header(&hdr);
        for (ty, data) in attrs {
            r.attr(*ty, data);
        }
        r.buf
    }

    #[test]
    fn parses_address_reply() {
        let a = [10, 77, 1, 1];
        let reply = addr_reply(
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
            parse_ipv4_addr(&reply).unwrap(),
            Some((4, Ipv4Addr::from(a), 24))
        );
        // Point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL this end.
        let reply = addr_reply(2, 32, 4, &[(IFA_ADDRESS, &[10, 0, 0, 2]), (IFA_LOCAL, &a)]);
        assert_eq!(
            parse_ipv4_addr(&reply).unwrap().unwrap().1,
            Ipv4Addr::from(a)
        );
        let reply = addr_reply(2, 8, 1, &[(IFA_ADDRESS, &[127, 0, 0, 1])]);
        assert_eq!(
            parse_ipv4_addr(&reply).unwrap(),
            Some((1, Ipv4Addr::LOCALHOST, 8))
        );
        assert_eq!(parse_ipv4_addr(&addr_reply(10, 64, 4, &[])).unwrap(), None);
        assert!(parse_ipv4_addr(&addr_reply(2, 24, 4, &[])).is_err());
    }

    #[test]
    fn dump_done_status() {
        assert_eq!(dump_error(&0i32.to_ne_bytes()), None);
        assert_eq!(dump_error(&(-libc::EINTR).to_ne_bytes()), Some(libc::EINTR));
        // Old kernels sent NLMSG_DONE with no payload.
        assert_eq!(dump_error(&[]), None);
    }

    #[test]
    fn rejects_bad_ifnames() {
        for bad in ["", "0123456789abcdef", "a/b", "a b", "a:b", "."] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        validate_ifname("0123456789abcde").unwrap();
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
}
