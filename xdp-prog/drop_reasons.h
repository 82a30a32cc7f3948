/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Why a frame was dropped: one numbered list for the slow path
 * (vswitch/src/datapath/counters.rs, DropReason) and the eBPF programs,
 * which count their drops in the same slots. A unit test on the Rust side
 * checks that every name and number here matches; add new reasons at the
 * end of both, never renumber.
 */
#ifndef VSWITCH_DROP_REASONS_H
#define VSWITCH_DROP_REASONS_H

enum drop_reason {
	DROP_MALFORMED = 0,
	DROP_INVALID_SOURCE_MAC = 1,
	DROP_MAC_SPOOFING = 2,
	DROP_IP_SPOOFING = 3,
	DROP_VLAN_TAGGED = 4,
	DROP_TX_FAILED = 5,
	DROP_HAIRPIN = 6,
	DROP_GSO_UNSUPPORTED = 7,
	DROP_UNKNOWN_VLAN = 8,
	DROP_NOT_LOCAL = 9,
	DROP_ROUTER_GUARD = 10,
	DROP_LEARN_REFUSED = 11,
	DROP_DHCP_GUARD = 12,
	DROP_ACL_BLOCKED = 13,
	DROP_CONNTRACK_FULL = 14,
	DROP_QOS_EXCEEDED = 15,
	DROP_NAT_EXHAUSTED = 16,
	DROP_NEIGHBOR_UNRESOLVED = 17,
	DROP_NAT_NO_BINDING = 18,
	DROP_TTL_EXCEEDED = 19,
	DROP_VXLAN_TRUNCATED = 20,
	DROP_VXLAN_MALFORMED = 21,
	DROP_VXLAN_UNKNOWN_VNI = 22,
	DROP_VXLAN_UNKNOWN_PEER = 23,
	DROP_NO_MAPPING = 24,
	DROP_REASON_MAX,
};

#endif
