/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The slow path's flow key and header transformation, as the fast path will
 * keep them in its maps: C mirrors of vswitch/src/pipeline/classify.rs
 * (FlowKey) and vswitch/src/pipeline/verdict.rs (HeaderTransform). Both
 * sides assert the same sizes and offsets; change them together, and only
 * by adding fields in reserved space.
 */
#ifndef VSWITCH_FLOW_H
#define VSWITCH_FLOW_H

#include <linux/types.h>
#include <stddef.h>

/* FlowKey: IPv4 addresses as IPv4-mapped IPv6; ports 0 without L4 ports;
 * vlan is VID | FLOW_KEY_TAGGED when the frame was tagged. */
#define FLOW_KEY_TAGGED 0x1000

struct flow_key {
	__u32 net;
	__u32 in_port;
	__u8 src_ip[16];
	__u8 dst_ip[16];
	__u16 src_port;
	__u16 dst_port;
	__u16 vlan;
	__u16 ethertype;
	__u8 src_mac[6];
	__u8 dst_mac[6];
	__u8 proto;
	__u8 family;
	__u8 direction; /* 0: from a vNIC, 1: from the wire */
	__u8 pad;
};

_Static_assert(sizeof(struct flow_key) == 64, "flow_key size");
_Static_assert(offsetof(struct flow_key, src_ip) == 8, "flow_key.src_ip");
_Static_assert(offsetof(struct flow_key, dst_ip) == 24, "flow_key.dst_ip");
_Static_assert(offsetof(struct flow_key, src_port) == 40, "flow_key.src_port");
_Static_assert(offsetof(struct flow_key, vlan) == 44, "flow_key.vlan");
_Static_assert(offsetof(struct flow_key, src_mac) == 48, "flow_key.src_mac");
_Static_assert(offsetof(struct flow_key, dst_mac) == 54, "flow_key.dst_mac");
_Static_assert(offsetof(struct flow_key, proto) == 60, "flow_key.proto");
_Static_assert(offsetof(struct flow_key, direction) == 62, "flow_key.direction");

/* HeaderTransform flags. */
#define XFORM_SET_SRC_MAC (1 << 0)
#define XFORM_SET_DST_MAC (1 << 1)
#define XFORM_PUSH_VLAN (1 << 2)
#define XFORM_POP_VLAN (1 << 3)
#define XFORM_ANNOUNCE_SRC_MAC (1 << 4)
#define XFORM_ARP_TARGET_DST_MAC (1 << 5)
#define XFORM_SET_SRC_IP (1 << 6)
#define XFORM_SET_DST_IP (1 << 7)
#define XFORM_SET_SRC_PORT (1 << 8)
#define XFORM_SET_DST_PORT (1 << 9)
#define XFORM_DEC_TTL (1 << 10)

/* Applied in order: pop the outer tag, set MACs, rewrite announced MACs,
 * translate addresses and ports (checksums updated), push a tag. Ports in
 * host byte order; an ICMP echo identifier is a source port. */
struct header_transform {
	__u16 flags;
	__u16 vlan;
	__u8 src_mac[6];
	__u8 dst_mac[6];
	__u8 src_ip[16];
	__u8 dst_ip[16];
	__u16 src_port;
	__u16 dst_port;
	__u8 reserved[12];
};

_Static_assert(sizeof(struct header_transform) == 64, "header_transform size");
_Static_assert(offsetof(struct header_transform, src_mac) == 4, "header_transform.src_mac");
_Static_assert(offsetof(struct header_transform, dst_mac) == 10, "header_transform.dst_mac");
_Static_assert(offsetof(struct header_transform, src_ip) == 16, "header_transform.src_ip");
_Static_assert(offsetof(struct header_transform, dst_ip) == 32, "header_transform.dst_ip");
_Static_assert(offsetof(struct header_transform, src_port) == 48, "header_transform.src_port");
_Static_assert(offsetof(struct header_transform, dst_port) == 50, "header_transform.dst_port");

#endif
