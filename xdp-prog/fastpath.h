/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Types shared between fastpath.bpf.c and its loader
 * (vswitch/src/ebpf/fastpath.rs), which mirrors every struct with #[repr(C)]
 * and asserts the same sizes and offsets. Change both together; FP_LAYOUT
 * names the layout, and a daemon that finds pinned maps of another layout
 * replaces them instead of adopting them.
 */
#ifndef VSWITCH_FASTPATH_H
#define VSWITCH_FASTPATH_H

#include <linux/types.h>
#include <stddef.h>

#include "flow.h"

/* Bumped whenever a struct below, a map's definition or a flag changes
 * meaning. */
#define FP_LAYOUT 5

/* fp_port.flags */
/* Every frame from this port goes to the slow path (it has policy, or its
 * network is one whose traffic the slow path must see). */
#define FP_PORT_SLOW (1 << 0)
/* The port may send from any MAC and IP (--allow-spoofing). */
#define FP_PORT_SPOOF (1 << 1)
/* (1 << 2): unused; an uplink's punt TAP has its own inject program,
 * xdp-prog/uplink.bpf.c. */
/* A punt TAP: frames the slow path writes to it go out of `peer`. */
#define FP_PORT_INJECT (1 << 3)
/* Frames to this port need the slow path (its inbound policy). Copied into
 * the FDB entries that lead to it. */
#define FP_PORT_SLOW_IN (1 << 4)
/* An overlay network's tunnel TAP: frames the slow path writes to it are
 * encapsulated to the provider address their destination MAC maps to. */
#define FP_PORT_TUNNEL (1 << 5)
/* A VXLAN device (external mode): its entry holds its counters slot. */
#define FP_PORT_VXLAN (1 << 6)

/* `ports`, keyed by the ifindex the program runs on. */
struct fp_port {
	/* The switch's port id (the slow path's PortId) and network id. */
	__u32 port_id;
	__u32 net;
	__u32 flags;
	/* Endpoint and uplink: the punt TAP. A punt TAP: the device its
	 * injected frames leave through (the endpoint's host veth). */
	__u32 peer;
	/* Endpoint: the only source MAC, IPv4 and IPv6 addresses it may send
	 * from without the slow path looking (all zero: none). Link-local
	 * IPv6 from the MAC (EUI-64) is allowed too. */
	__u8 mac[6];
	__u8 pad[2];
	__u8 ipv4[4];
	__u8 ipv6[16];
	__u8 ll6[16];
	/* The device's slot in `counters`. */
	__u32 slot;
};

_Static_assert(sizeof(struct fp_port) == 64, "fp_port size");
_Static_assert(offsetof(struct fp_port, slot) == 60, "fp_port.slot");
_Static_assert(offsetof(struct fp_port, mac) == 16, "fp_port.mac");
_Static_assert(offsetof(struct fp_port, ipv4) == 24, "fp_port.ipv4");
_Static_assert(offsetof(struct fp_port, ipv6) == 28, "fp_port.ipv6");
_Static_assert(offsetof(struct fp_port, ll6) == 44, "fp_port.ll6");

/* `fdb` key: a MAC in a network. */
struct fp_fdb_key {
	__u32 net;
	__u8 mac[6];
	__u8 pad[2];
};

_Static_assert(sizeof(struct fp_fdb_key) == 12, "fp_fdb_key size");

/* fp_fdb.flags */
/* The destination is a veth endpoint: bpf_redirect_peer to `ifindex`. */
#define FP_FDB_ENDPOINT (1 << 0)
/* The destination is on the wire: out of the network's uplink. */
#define FP_FDB_UPLINK (1 << 1)
/* The destination needs the slow path (FP_PORT_SLOW_IN). */
#define FP_FDB_SLOW (1 << 2)
/* The destination is on another host of an overlay network: encapsulated
 * to `remote` (its CA->PA mapping). */
#define FP_FDB_TUNNEL (1 << 3)

struct fp_fdb {
	/* The endpoint's host veth; for FP_FDB_UPLINK, unused (see fp_net). */
	__u32 ifindex;
	__u32 flags;
	/* Its `counters` slot. */
	__u32 slot;
	/* FP_FDB_TUNNEL: the provider address, network byte order. */
	__u32 remote;
};

_Static_assert(sizeof(struct fp_fdb) == 16, "fp_fdb size");

/* fp_net.flags */
/* l2bridge: frames leave the uplink with the uplink's MAC as source. */
#define FP_NET_L2BRIDGE (1 << 0)
/* Tag frames leaving the uplink with `vlan`. */
#define FP_NET_VLAN (1 << 1)
/* No kernel forwarding at all in this network (l2tunnel: the host's
 * switch polices same-host traffic; nat: the slow path routes). */
#define FP_NET_SLOW (1 << 2)
/* An overlay network: `vni`, `vxlan`, `local_pa` and `tunnel_slot` hold. */
#define FP_NET_TUNNEL (1 << 3)

/* `nets`, keyed by network id. */
struct fp_net {
	__u32 flags;
	/* The uplink device, 0 when the network has none. */
	__u32 uplink;
	__u16 vlan;
	__u8 uplink_mac[6];
	/* The uplink's `counters` slot. */
	__u32 uplink_slot;
	/* overlay: the VNI (VSID), the VXLAN device (external mode), this
	 * host's provider address (network byte order), and the counters slot
	 * of the network's tunnel TAP. */
	__u32 vni;
	__u32 vxlan;
	__u32 local_pa;
	__u32 tunnel_slot;
};

_Static_assert(sizeof(struct fp_net) == 36, "fp_net size");
_Static_assert(offsetof(struct fp_net, vni) == 20, "fp_net.vni");

/* `tunnels`, keyed by VNI: the overlay network a decapsulated frame belongs
 * to, and its tunnel TAP (where the slow path reads what the kernel does
 * not deliver itself). */
struct fp_tunnel {
	__u32 net;
	/* The tunnel TAP's ifindex and `counters` slot. */
	__u32 punt;
	__u32 slot;
	__u32 pad;
};

_Static_assert(sizeof(struct fp_tunnel) == 16, "fp_tunnel size");

/* `peers`: the provider addresses an overlay network accepts VXLAN from
 * (those its mappings name). The value is unused. */
struct fp_peer_key {
	__u32 net;
	/* Network byte order. */
	__u32 pa;
};

_Static_assert(sizeof(struct fp_peer_key) == 8, "fp_peer_key size");

/* `vteps`, keyed by UDP port (host byte order): the VXLAN ports this host
 * terminates, and the `counters` slot their VXLAN device counts in (drops
 * of packets no network claims). */
struct fp_vtep {
	__u32 ifindex;
	__u32 slot;
};

_Static_assert(sizeof(struct fp_vtep) == 8, "fp_vtep size");

/* `uplinks`: which network a frame from an uplink belongs to, by the
 * uplink's ifindex and the frame's VLAN (0: untagged). */
struct fp_uplink_key {
	__u32 ifindex;
	__u16 vlan;
	__u8 pad[2];
};

_Static_assert(sizeof(struct fp_uplink_key) == 8, "fp_uplink_key size");

struct fp_uplink {
	__u32 net;
	/* FP_NET_* */
	__u32 flags;
	/* l2bridge: the uplink's MAC, which the endpoints share on the wire. */
	__u8 mac[6];
	__u8 pad[2];
	/* The uplink's `counters` slot. */
	__u32 slot;
};

_Static_assert(sizeof(struct fp_uplink) == 20, "fp_uplink size");

/* `endpoint_ips`: l2bridge endpoints by address, for frames from the wire
 * that carry the uplink's MAC. IPv4 in addr[0..4], the rest zero. */
struct fp_ip_key {
	__u32 net;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

_Static_assert(sizeof(struct fp_ip_key) == 24, "fp_ip_key size");

struct fp_ip {
	/* The endpoint's host veth. */
	__u32 ifindex;
	__u32 flags;
	__u8 mac[6];
	__u8 pad[2];
	/* Its `counters` slot. */
	__u32 slot;
};

_Static_assert(sizeof(struct fp_ip) == 20, "fp_ip size");

#define FP_FAMILY_IPV4 4
#define FP_FAMILY_IPV6 6

/* fp_flow.flags: where an offloaded flow goes. */
/* bpf_redirect_peer to `ifindex`, a veth endpoint's host end. */
#define FP_FLOW_PEER (1 << 0)
/* bpf_redirect out of `ifindex`, an uplink. */
#define FP_FLOW_UPLINK (1 << 1)

/* `flows`, keyed by the slow path's flow key (flow.h): a flow whose verdict
 * the slow path computed and the kernel can carry out (allow, with MAC
 * rewrites and a VLAN push). TCP SYN, FIN and RST always go to the slow
 * path, whose connection tracking ends the flow; the kernel counts and
 * stamps each packet it forwards, and the slow path reads that to age the
 * connection. */
struct fp_flow {
	__u32 ifindex;
	__u32 flags;
	/* The destination's `counters` slot (0 for an uplink). */
	__u32 slot;
	__u32 pad;
	struct header_transform xform;
	__u64 packets;
	__u64 bytes;
	/* bpf_ktime_get_ns() of the last packet. */
	__u64 last_seen;
};

_Static_assert(sizeof(struct fp_flow) == 104, "fp_flow size");
_Static_assert(offsetof(struct fp_flow, xform) == 16, "fp_flow.xform");
_Static_assert(offsetof(struct fp_flow, packets) == 80, "fp_flow.packets");

#define FP_MAX_FLOWS 65536

/* Per-CPU counters of one device, in `counters` (a per-CPU array, whose
 * lookups the kernel inlines) at the slot the control plane gave it; slot 0
 * counts what belongs to no port (an unknown device, flows to an uplink).
 * Packets count wire frames (a GSO super-frame counts its segments). */
struct fp_counters {
	/* Forwarded in the kernel: received from the port, sent to it. */
	__u64 fast_rx_packets;
	__u64 fast_rx_bytes;
	__u64 fast_tx_packets;
	__u64 fast_tx_bytes;
	/* Handed to the slow path through the punt TAP. */
	__u64 punted_packets;
	__u64 punted_bytes;
	/* Written by the slow path and sent on (punt TAPs). */
	__u64 injected_packets;
	__u64 injected_bytes;
	/* Dropped in the kernel, by DropReason (drop_reasons.h). */
	__u64 drops[32];
};

_Static_assert(sizeof(struct fp_counters) == 64 + 32 * 8, "fp_counters size");

/* `meta` (array, one entry): the layout and program version of what is
 * pinned, so a restarted daemon knows whether it may adopt it. */
struct fp_meta {
	__u32 layout;
	__u32 reserved;
	__u64 version;
};

#define FP_MAX_PORTS 4096
#define FP_MAX_FDB 65536
#define FP_MAX_NETS 1024

#endif
