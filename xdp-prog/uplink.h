/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Types shared between uplink.bpf.c and its loader (vswitch/src/ebpf/uplink.rs).
 *
 * The Rust side mirrors every struct with #[repr(C)] and asserts the same
 * sizes; change both together. Stat numbers are never renumbered: add new
 * ones before UPLINK_STAT_MAX.
 */
#ifndef VSWITCH_UPLINK_H
#define VSWITCH_UPLINK_H

#include <linux/types.h>

/* Per-CPU counters, indexes into the `stats` array. */
enum uplink_stat {
	/* Handed to the switch's AF_XDP socket (TC build: its punt TAP). */
	UPLINK_STAT_REDIRECTED = 0,
	/* Not for an endpoint: left to the host stack. */
	UPLINK_STAT_PASSED = 1,
	/* Too short for the headers it announces: left to the host stack. */
	UPLINK_STAT_MALFORMED = 2,
	/* For an endpoint, but no socket is bound on the receive queue (TC
	 * build: no punt TAP is set), so the host stack got it. */
	UPLINK_STAT_NO_SOCKET = 3,
	/* For the switch, with its VLAN tag out of band (a veth peer's TX VLAN
	 * offload, read with bpf_xdp_metadata_rx_vlan_tag): the tag was put
	 * back into the frame. */
	UPLINK_STAT_VLAN_RESTORED = 4,
	/* A reply or mapped connection of a translated flow, handed to the
	 * switch (counted when decided, so also when NO_SOCKET follows). */
	UPLINK_STAT_NAT = 5,
	/* For a veth endpoint the kernel fast path delivers: left to the TC
	 * program behind (vswitch_uplink in fastpath.bpf.c). */
	UPLINK_STAT_KERNEL = 6,
	/* TC build: written by the switch to the punt TAP and sent out of the
	 * uplink (vswitch_uinject). */
	UPLINK_STAT_INJECTED = 7,
	UPLINK_STAT_MAX = 8,
};

/* In the device-bound build (UPLINK_DEV_BOUND), the call to the
 * bpf_xdp_metadata_rx_vlan_tag kfunc is compiled as a call to this helper
 * number, which no helper has; the loader (vswitch/src/ebpf/devbound.rs)
 * turns it into a kfunc call (BPF_PSEUDO_KFUNC_CALL, the kfunc's vmlinux
 * BTF id), because aya cannot relocate __ksym externs. */
#define UPLINK_KFUNC_RX_VLAN_TAG 0x7ffff001

/* `family` values of struct uplink_ip_key. */
#define UPLINK_FAMILY_IPV4 4
#define UPLINK_FAMILY_IPV6 6

/* Value flag of `endpoint_macs` and `endpoint_ips`: the endpoint is a veth
 * the kernel fast path delivers to, so its unicast IP frames go on to the
 * TC program instead of the AF_XDP socket. */
#define UPLINK_EP_KERNEL 1

/* Key of `endpoint_macs`: a destination MAC on a VLAN (0 = untagged). */
struct uplink_mac_key {
	__u16 vlan;
	__u8 mac[6];
};

/* Key of `endpoint_ips`: an IPv4 address lives in addr[0..4], the rest zero. */
struct uplink_ip_key {
	__u16 vlan;
	__u8 family;
	__u8 pad;
	__u8 addr[16];
};

/* Key of `nat_ranges`: an IPv4 address of the uplink that the switch
 * translates to (nat mode), on a VLAN (0 = untagged). */
struct uplink_nat_key {
	__u16 vlan;
	__u8 pad[2];
	__u8 addr[4];
};

/* Value of `nat_ranges`: the switch's own source ports (TCP, UDP) and ICMP
 * echo ids at that address, lo..=hi, host byte order. The host keeps the
 * rest of the address's traffic. */
struct uplink_nat_range {
	__u16 lo;
	__u16 hi;
};

/* Key of `nat_ports`: the external port of a static port mapping at an
 * address of `nat_ranges` (it may lie outside the range). `proto` is
 * IPPROTO_TCP or IPPROTO_UDP; `port` is in host byte order. */
struct uplink_nat_port_key {
	__u16 vlan;
	__u8 proto;
	__u8 pad;
	__u16 port;
	__u8 pad2[2];
	__u8 addr[4];
};

/* Value of the TC build's one-entry `tc_ports`: ifindexes of the uplink
 * and of its punt TAP (0: none, frames for the switch go to the host). */
struct uplink_tc_ports {
	__u32 uplink;
	__u32 punt;
};

_Static_assert(sizeof(struct uplink_tc_ports) == 8, "uplink_tc_ports layout");
_Static_assert(sizeof(struct uplink_mac_key) == 8, "uplink_mac_key layout");
_Static_assert(sizeof(struct uplink_ip_key) == 20, "uplink_ip_key layout");
_Static_assert(sizeof(struct uplink_nat_key) == 8, "uplink_nat_key layout");
_Static_assert(sizeof(struct uplink_nat_range) == 4, "uplink_nat_range layout");
_Static_assert(sizeof(struct uplink_nat_port_key) == 12, "uplink_nat_port_key layout");

/* Largest number of receive queues an uplink can have sockets on. */
#define UPLINK_MAX_QUEUES 64
/* Entries of each endpoint map, and of `nat_ports`. */
#define UPLINK_MAX_ENDPOINTS 4096
/* Entries of `nat_ranges`: translated-to addresses (times VLANs). */
#define UPLINK_MAX_NAT_ADDRS 64

#endif
