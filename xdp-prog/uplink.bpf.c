// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
/*
 * XDP steering on an uplink: the interface is shared by the host (which keeps
 * its own address on it) and the switch (which reads endpoint traffic through
 * an AF_XDP socket). Per frame, the program decides which of the two gets it:
 *
 *   - destination MAC is an endpoint MAC (transparent mode)       -> switch
 *   - ARP request/reply whose target IP is an endpoint IP          -> switch
 *   - ICMPv6 neighbour solicitation whose target is an endpoint IP -> switch
 *   - unicast IPv4/IPv6 whose destination is an endpoint IP
 *     (l2bridge mode: the frame carries the uplink's own MAC)      -> switch
 *   - unicast IPv4 to an address the switch translates to (nat mode,
 *     `nat_ranges`; the host keeps its own traffic to that address):
 *       TCP/UDP whose destination port is in the switch's range or
 *       is a static mapping's (`nat_ports`)                        -> switch
 *       ICMP echo reply whose id is one of the switch's (exact)    -> switch
 *       ICMP unreachable / time exceeded / parameter problem
 *       quoting a packet the switch sent from that address (its
 *       source port or echo request id the switch's, as above)     -> switch
 *       a fragment other than the first (no ports to look at)      -> host
 *   - everything else (host unicast, other broadcast/multicast)    -> host
 *
 * An endpoint entry flagged UPLINK_EP_KERNEL is a veth endpoint the kernel
 * fast path delivers to: its unicast IPv4/IPv6 frames are passed on to the
 * TC program behind this one (fastpath.bpf.c, vswitch_uplink) instead.
 *
 * "Switch" means bpf_redirect_map into `xsks` at the receive queue, with
 * XDP_PASS as the fallback so frames still reach the host when no socket is
 * bound (the daemon is restarting, say). Lookups use the frame's 802.1Q VID,
 * 0 when untagged. Every header is bounds-checked through a cursor before it
 * is read; a frame too short for what it announces goes to the host.
 *
 * Built three times. The TC build (-DUPLINK_TC, SEC("classifier"), entry
 * vswitch_uplink_tc) runs the same steering on the uplink's tcx ingress,
 * where the frame is an skb that keeps its GSO: "switch" is then
 * bpf_redirect to the uplink's punt TAP, which the switch reads with a
 * virtio-net header, and "host" is TC_ACT_OK. It runs behind the kernel
 * fast path's vswitch_uplink (first on the hook, TCX_NEXT for what it does
 * not deliver), so a V_KERNEL frame that reaches it is one the fast path
 * could not deliver: it goes to the switch. Its vswitch_uinject, on
 * the punt TAP's tcx ingress, sends what the switch writes there out of the
 * uplink. A VLAN tag may be out of band (skb->vlan_present: the stack
 * untags before TC); the TAP puts it back into the frame the switch reads.
 *
 * The device-bound build (-DUPLINK_DEV_BOUND, loaded with
 * BPF_F_XDP_DEV_BOUND_ONLY for one interface) also asks the driver for a
 * VLAN tag carried out of band (a veth peer's TX VLAN offload, a NIC that
 * strips tags), uses its VID for the lookups, and puts the tag back into a
 * frame it hands the switch, which then sees it as it was on the wire.
 * Frames left to the host are not touched: the stack reads the tag where
 * the driver left it. Calling a kfunc needs a GPL-compatible license, hence
 * the dual license of this file.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#ifdef UPLINK_TC
#include <linux/pkt_cls.h>
#endif

#include "flow.h"
#include "uplink.h"

#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2
#define ICMPV6_NEIGHBOUR_SOLICITATION 135
#define VLAN_VID_MASK 0x0fff
#define IPV4_FRAG_OFFSET 0x1fff
#define ICMP_ECHO_REPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO_REQUEST 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETER_PROBLEM 12

#ifdef UPLINK_TC
/* The uplink and its punt TAP (one entry, written by the loader). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct uplink_tc_ports);
} tc_ports SEC(".maps");
#else
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, UPLINK_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, UPLINK_MAX_ENDPOINTS);
	__type(key, struct uplink_mac_key);
	__type(value, __u32);
} endpoint_macs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, UPLINK_MAX_ENDPOINTS);
	__type(key, struct uplink_ip_key);
	__type(value, __u32);
} endpoint_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, UPLINK_MAX_NAT_ADDRS);
	__type(key, struct uplink_nat_key);
	__type(value, struct uplink_nat_range);
} nat_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, UPLINK_MAX_ENDPOINTS);
	__type(key, struct uplink_nat_port_key);
	__type(value, __u32);
} nat_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UPLINK_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Parsing position in the frame; `pos` never passes `end`. */
struct cursor {
	void *pos;
	void *end;
};

/* Returns the next `len` bytes and advances, or NULL when the frame is
 * shorter. */
static __always_inline void *cursor_take(struct cursor *c, __u32 len)
{
	void *p = c->pos;

	if (p + len > c->end)
		return NULL;
	c->pos = p + len;
	return p;
}

/* Outcome of a protocol helper. */
enum verdict {
	V_HOST = 0,
	V_SWITCH = 1,
	V_MALFORMED = 2,
	/* To the switch, and counted as NAT. */
	V_NAT = 3,
	/* To a veth endpoint, through the TC fast path behind XDP. */
	V_KERNEL = 4,
};

static __always_inline int count(__u32 stat, int action)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &stat);

	/* Per-CPU slot: no other writer, no atomic needed. */
	if (n)
		*n += 1;
	return action;
}

#ifdef UPLINK_TC
static __always_inline struct uplink_tc_ports *tc_ports_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&tc_ports, &zero);
}

/* To the punt TAP; to the host while there is none (punt 0: the daemon
 * stopped cleanly and left the program attached). */
static __always_inline int to_switch(struct __sk_buff *skb)
{
	struct uplink_tc_ports *ports = tc_ports_get();

	if (!ports || !ports->punt)
		return count(UPLINK_STAT_NO_SOCKET, TC_ACT_OK);
	count(UPLINK_STAT_REDIRECTED, 0);
	return bpf_redirect(ports->punt, 0);
}
#else
static __always_inline int to_switch(struct xdp_md *ctx)
{
	long action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);

	if (action == XDP_REDIRECT)
		return count(UPLINK_STAT_REDIRECTED, XDP_REDIRECT);
	return count(UPLINK_STAT_NO_SOCKET, XDP_PASS);
}
#endif

static __always_inline int is_group_mac(const __u8 *mac)
{
	return mac[0] & 1;
}

/* --- Ethernet ----------------------------------------------------------- */

/* The endpoint_macs value for `mac`, or NULL when it is no endpoint's. */
static __always_inline __u32 *mac_is_endpoint(__u16 vlan, const __u8 *mac)
{
	struct uplink_mac_key key = { .vlan = vlan };

	__builtin_memcpy(key.mac, mac, 6);
	return bpf_map_lookup_elem(&endpoint_macs, &key);
}

struct vlan_tag {
	__be16 tci;
	__be16 encapsulated_proto;
};

/* Consumes one 802.1Q tag if present; leaves the inner EtherType in *proto
 * and the VID in *vlan (0 when untagged). */
static __always_inline enum verdict parse_vlan(struct cursor *c, __be16 *proto, __u16 *vlan)
{
	struct vlan_tag *tag;

	*vlan = 0;
	if (*proto != bpf_htons(ETH_P_8021Q))
		return V_HOST;
	tag = cursor_take(c, sizeof(*tag));
	if (!tag)
		return V_MALFORMED;
	*vlan = bpf_ntohs(tag->tci) & VLAN_VID_MASK;
	*proto = tag->encapsulated_proto;
	return V_HOST;
}

#ifndef UPLINK_TC
#ifdef UPLINK_DEV_BOUND
/* bpf_xdp_metadata_rx_vlan_tag(ctx, &proto, &tci), see uplink.h. */
static long (*const rx_vlan_tag)(struct xdp_md *ctx, __be16 *vlan_proto,
				 __u16 *vlan_tci) = (void *)UPLINK_KFUNC_RX_VLAN_TAG;
#endif

/* An out-of-band VLAN tag of the frame, if the driver has one. */
struct oob_tag {
	int present;
	__be16 proto;
	__u16 tci;
};

static __always_inline void read_oob_tag(struct xdp_md *ctx, struct oob_tag *tag)
{
	tag->present = 0;
	tag->proto = 0;
	tag->tci = 0;
#ifdef UPLINK_DEV_BOUND
	/* 0 only when the driver has a tag; -ENODATA, -EOPNOTSUPP otherwise. */
	if (rx_vlan_tag(ctx, &tag->proto, &tag->tci) == 0)
		tag->present = 1;
#endif
}

/* Inserts the out-of-band tag after the MAC addresses, as it was on the
 * wire. Every packet pointer is invalid afterwards. Returns 0 on success. */
static __always_inline int push_oob_tag(struct xdp_md *ctx, const struct oob_tag *tag)
{
	struct cursor c;
	__u8 *frame;
	__be16 *tpid;
	int i;

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct vlan_tag)))
		return -1;
	c.pos = (void *)(long)ctx->data;
	c.end = (void *)(long)ctx->data_end;
	frame = cursor_take(&c, 2 * ETH_ALEN + sizeof(struct vlan_tag));
	if (!frame)
		return -1;
	/* The addresses move to the new start, front to back (each byte is
	 * read before anything overwrites it). */
#pragma unroll
	for (i = 0; i < 2 * ETH_ALEN; i++)
		frame[i] = frame[i + sizeof(struct vlan_tag)];
	/* TPID and TCI; the EtherType that followed the addresses is now the
	 * inner one and sits right after them, where it was. */
	tpid = (__be16 *)(frame + 2 * ETH_ALEN);
	tpid[0] = tag->proto;
	tpid[1] = bpf_htons(tag->tci);
	return 0;
}
#endif /* !UPLINK_TC */

/* --- IP ------------------------------------------------------------------ */

/* The endpoint_ips value for an address, or NULL. */
static __always_inline __u32 *ipv4_is_endpoint(__u16 vlan, const __be32 *addr)
{
	struct uplink_ip_key key = { .vlan = vlan, .family = UPLINK_FAMILY_IPV4 };

	__builtin_memcpy(key.addr, addr, 4);
	return bpf_map_lookup_elem(&endpoint_ips, &key);
}

static __always_inline __u32 *ipv6_is_endpoint(__u16 vlan, const struct in6_addr *addr)
{
	struct uplink_ip_key key = { .vlan = vlan, .family = UPLINK_FAMILY_IPV6 };

	__builtin_memcpy(key.addr, addr, 16);
	return bpf_map_lookup_elem(&endpoint_ips, &key);
}

/* An endpoint value that leaves the frame to the kernel fast path. */
static __always_inline int kernel_delivers(const __u32 *value)
{
	return value && (*value & UPLINK_EP_KERNEL);
}

/* --- ARP ----------------------------------------------------------------- */

/* ARP for IPv4 over Ethernet (RFC 826), the only kind endpoints use. */
struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sender_mac[6];
	__be32 sender_ip;
	__u8 target_mac[6];
	__be32 target_ip;
} __attribute__((packed));

_Static_assert(sizeof(struct arp_eth_ipv4) == 28, "ARP header layout");

static __always_inline enum verdict parse_arp(struct cursor *c, __u16 vlan)
{
	struct arp_eth_ipv4 *arp = cursor_take(c, sizeof(*arp));
	__be32 target;

	if (!arp)
		return V_MALFORMED;
	if (arp->htype != bpf_htons(ARPHRD_ETHER) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != 6 || arp->plen != 4)
		return V_HOST;
	if (arp->op != bpf_htons(ARPOP_REQUEST) && arp->op != bpf_htons(ARPOP_REPLY))
		return V_HOST;
	/* Packed struct: copy out before taking the address. */
	target = arp->target_ip;
	return ipv4_is_endpoint(vlan, &target) ? V_SWITCH : V_HOST;
}

/* --- IPv4 ---------------------------------------------------------------- */

/* A fragment other than the first: no transport header to look at. */
static __always_inline int ipv4_is_later_fragment(const struct iphdr *ip)
{
	return (ip->frag_off & bpf_htons(IPV4_FRAG_OFFSET)) != 0;
}

/* Moves the cursor past the whole header `ip`, options included (IHL, at
 * least 5, checked by the caller). Returns 0, or -1 when the frame is
 * shorter. */
static __always_inline int skip_ipv4_header(struct cursor *c, struct iphdr *ip)
{
	c->pos = ip;
	return cursor_take(c, ip->ihl * 4) ? 0 : -1;
}

/* --- NAT ----------------------------------------------------------------- */

/* The first four bytes of TCP and UDP. */
struct l4_ports {
	__be16 source;
	__be16 dest;
};

/* ICMP header; id and sequence only mean that for echo messages. */
struct icmp_head {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be16 id;
	__be16 sequence;
};

_Static_assert(sizeof(struct icmp_head) == 8, "ICMP header layout");

static __always_inline int nat_in_range(const struct uplink_nat_range *r, __u16 value)
{
	return value >= r->lo && value <= r->hi;
}

/* A TCP or UDP port (network order) of the switch at `addr`: in its range
 * or a static mapping's. */
static __always_inline int nat_owns_port(__u16 vlan, __be32 addr, const struct uplink_nat_range *r,
					 __u8 proto, __be16 port)
{
	struct uplink_nat_port_key key = { .vlan = vlan, .proto = proto, .port = bpf_ntohs(port) };

	if (nat_in_range(r, key.port))
		return 1;
	__builtin_memcpy(key.addr, &addr, 4);
	return bpf_map_lookup_elem(&nat_ports, &key) != NULL;
}

/* An ICMP echo identifier (network order) the switch uses at `addr`: exact
 * entries, one per translated echo flow, since the host's own ping may pick
 * any identifier (a range would take its replies). */
static __always_inline int nat_owns_echo_id(__u16 vlan, __be32 addr, __be16 id)
{
	struct uplink_nat_port_key key = { .vlan = vlan, .proto = IPPROTO_ICMP, .port = bpf_ntohs(id) };

	__builtin_memcpy(key.addr, &addr, 4);
	return bpf_map_lookup_elem(&nat_ports, &key) != NULL;
}

/* An ICMP message to `addr` (the cursor at its header): an echo reply to the
 * switch, or an error about a packet the switch sent from `addr`. */
static __always_inline enum verdict nat_icmp(struct cursor *c, __u16 vlan, __be32 addr,
					     const struct uplink_nat_range *r)
{
	struct icmp_head *icmp = cursor_take(c, sizeof(*icmp));
	struct iphdr *quoted;

	if (!icmp)
		return V_MALFORMED;
	switch (icmp->type) {
	case ICMP_ECHO_REPLY:
		return nat_owns_echo_id(vlan, addr, icmp->id) ? V_NAT : V_HOST;
	case ICMP_DEST_UNREACH:
	case ICMP_TIME_EXCEEDED:
	case ICMP_PARAMETER_PROBLEM:
		break;
	default:
		return V_HOST;
	}

	/* RFC 792: the offending IP header and at least 8 bytes after it. */
	quoted = cursor_take(c, sizeof(*quoted));
	if (!quoted)
		return V_MALFORMED;
	if (quoted->version != 4 || quoted->ihl < 5 || quoted->saddr != addr ||
	    ipv4_is_later_fragment(quoted))
		return V_HOST;
	if (skip_ipv4_header(c, quoted))
		return V_MALFORMED;
	switch (quoted->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP: {
		struct l4_ports *ports = cursor_take(c, sizeof(*ports));

		if (!ports)
			return V_MALFORMED;
		return nat_owns_port(vlan, addr, r, quoted->protocol, ports->source) ? V_NAT
										      : V_HOST;
	}
	case IPPROTO_ICMP: {
		struct icmp_head *echo = cursor_take(c, sizeof(*echo));

		if (!echo)
			return V_MALFORMED;
		return echo->type == ICMP_ECHO_REQUEST && nat_owns_echo_id(vlan, addr, echo->id)
			       ? V_NAT
			       : V_HOST;
	}
	default:
		return V_HOST;
	}
}

/* Unicast IPv4 to `ip->daddr`, not an endpoint's (the cursor right after
 * the fixed header): a reply to a flow the switch translated, or a
 * connection to one of its static mappings, when the switch translates to
 * that address. */
static __always_inline enum verdict nat_ipv4(struct cursor *c, __u16 vlan, struct iphdr *ip)
{
	struct uplink_nat_key key = { .vlan = vlan };
	struct uplink_nat_range *found;
	struct uplink_nat_range r;
	__be32 addr = ip->daddr;

	__builtin_memcpy(key.addr, &addr, 4);
	found = bpf_map_lookup_elem(&nat_ranges, &key);
	if (!found)
		return V_HOST;
	r = *found;
	if (ipv4_is_later_fragment(ip))
		return V_HOST;
	if (skip_ipv4_header(c, ip))
		return V_MALFORMED;
	switch (ip->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP: {
		struct l4_ports *ports = cursor_take(c, sizeof(*ports));

		if (!ports)
			return V_MALFORMED;
		return nat_owns_port(vlan, addr, &r, ip->protocol, ports->dest) ? V_NAT : V_HOST;
	}
	case IPPROTO_ICMP:
		return nat_icmp(c, vlan, addr, &r);
	default:
		return V_HOST;
	}
}

static __always_inline enum verdict parse_ipv4(struct cursor *c, __u16 vlan, int unicast)
{
	struct iphdr *ip = cursor_take(c, sizeof(*ip));

	if (!ip || ip->ihl < 5)
		return V_MALFORMED;
	if (!unicast)
		return V_HOST;
	__u32 *ep = ipv4_is_endpoint(vlan, &ip->daddr);

	if (ep)
		return kernel_delivers(ep) ? V_KERNEL : V_SWITCH;
	return nat_ipv4(c, vlan, ip);
}

/* --- IPv6 ---------------------------------------------------------------- */

/* ICMPv6 neighbour solicitation (RFC 4861 4.3) up to its target. */
struct icmp6_ns {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be32 reserved;
	struct in6_addr target;
};

_Static_assert(sizeof(struct icmp6_ns) == 24, "neighbour solicitation layout");

static __always_inline enum verdict parse_ipv6(struct cursor *c, __u16 vlan, int unicast)
{
	struct ipv6hdr *ip6 = cursor_take(c, sizeof(*ip6));

	if (!ip6)
		return V_MALFORMED;
	/* Neighbour discovery carries no extension headers (RFC 4861 hop
	 * limit 255, nothing in between), so only the first next header is
	 * looked at. */
	if (ip6->nexthdr == IPPROTO_ICMPV6) {
		__u8 *type = cursor_take(c, 1);

		if (!type)
			return V_MALFORMED;
		if (*type == ICMPV6_NEIGHBOUR_SOLICITATION) {
			struct icmp6_ns *ns;

			c->pos = type;
			ns = cursor_take(c, sizeof(*ns));
			if (!ns)
				return V_MALFORMED;
			return ipv6_is_endpoint(vlan, &ns->target) ? V_SWITCH : V_HOST;
		}
	}
	if (!unicast)
		return V_HOST;
	__u32 *ep = ipv6_is_endpoint(vlan, &ip6->daddr);

	if (!ep)
		return V_HOST;
	return kernel_delivers(ep) && ip6->nexthdr != IPPROTO_ICMPV6 ? V_KERNEL : V_SWITCH;
}

/* --- Entry --------------------------------------------------------------- */

/* The verdict for a frame: `eth` its Ethernet header, the cursor past it and
 * past an 802.1Q tag in the frame, `proto` the EtherType after them, `vlan`
 * the VID (0 when untagged). */
static __always_inline enum verdict steer(struct cursor *c, struct ethhdr *eth, __be16 proto,
					  __u16 vlan)
{
	__u32 *ep = mac_is_endpoint(vlan, eth->h_dest);
	int unicast;

	if (ep) {
		if (kernel_delivers(ep) &&
		    (proto == bpf_htons(ETH_P_IP) || proto == bpf_htons(ETH_P_IPV6)))
			return V_KERNEL;
		return V_SWITCH;
	}

	unicast = !is_group_mac(eth->h_dest);
	switch (proto) {
	case bpf_htons(ETH_P_ARP):
		return parse_arp(c, vlan);
	case bpf_htons(ETH_P_IP):
		return parse_ipv4(c, vlan, unicast);
	case bpf_htons(ETH_P_IPV6):
		return parse_ipv6(c, vlan, unicast);
	default:
		return V_HOST;
	}
}

#ifdef UPLINK_TC

/* Headers steering may read: Ethernet, a tag, an IPv4 header with options,
 * ICMP, the quoted IPv4 header with options and 8 bytes after it. */
#define UPLINK_TC_PULL_LEN 160

SEC("classifier")
int vswitch_uplink_tc(struct __sk_buff *skb)
{
	__u32 want = skb->len < UPLINK_TC_PULL_LEN ? skb->len : UPLINK_TC_PULL_LEN;
	struct cursor c;
	struct ethhdr *eth;
	enum verdict v;
	__be16 proto;
	__u16 vlan;

	/* Most skbs keep their headers linear; a pull moves the packet. */
	if ((void *)(long)skb->data + UPLINK_TC_PULL_LEN > (void *)(long)skb->data_end)
		bpf_skb_pull_data(skb, want);
	c.pos = (void *)(long)skb->data;
	c.end = (void *)(long)skb->data_end;
	eth = cursor_take(&c, sizeof(*eth));
	if (!eth)
		return count(UPLINK_STAT_MALFORMED, TC_ACT_OK);
	proto = eth->h_proto;
	if (skb->vlan_present) {
		/* Taken out of the frame by the driver or the stack; as for a
		 * tag in the frame, only 802.1Q names a VLAN. */
		vlan = skb->vlan_proto == bpf_htons(ETH_P_8021Q) ? skb->vlan_tci & VLAN_VID_MASK : 0;
	} else if (parse_vlan(&c, &proto, &vlan) == V_MALFORMED) {
		return count(UPLINK_STAT_MALFORMED, TC_ACT_OK);
	}

	v = steer(&c, eth, proto, vlan);
	/* V_KERNEL: the fast path ahead of this program did not deliver it. */
	if (v == V_SWITCH || v == V_KERNEL)
		return to_switch(skb);
	if (v == V_NAT) {
		count(UPLINK_STAT_NAT, 0);
		return to_switch(skb);
	}
	if (v == V_MALFORMED)
		return count(UPLINK_STAT_MALFORMED, TC_ACT_OK);
	return count(UPLINK_STAT_PASSED, TC_ACT_OK);
}

/* On the punt TAP's tcx ingress: what the switch writes leaves on the
 * uplink, GSO intact. */
SEC("classifier")
int vswitch_uinject(struct __sk_buff *skb)
{
	struct uplink_tc_ports *ports = tc_ports_get();

	if (!ports || !ports->uplink)
		return TC_ACT_SHOT;
	count(UPLINK_STAT_INJECTED, 0);
	return bpf_redirect(ports->uplink, 0);
}

/* Only non-GPL helpers are used (map lookup, redirect, pull_data). */
char _license[] SEC("license") = "Apache-2.0";

#else /* XDP */

/* Hands the frame to the switch with its out-of-band tag, if any, back in
 * it. */
static __always_inline int tagged_to_switch(struct xdp_md *ctx, const struct oob_tag *tag)
{
	if (tag->present) {
		if (push_oob_tag(ctx, tag))
			return count(UPLINK_STAT_MALFORMED, XDP_PASS);
		count(UPLINK_STAT_VLAN_RESTORED, 0);
	}
	return to_switch(ctx);
}

SEC("xdp")
int vswitch_uplink(struct xdp_md *ctx)
{
	struct oob_tag tag;
	struct cursor c;
	struct ethhdr *eth;
	enum verdict v;
	__be16 proto;
	__u16 vlan;

	read_oob_tag(ctx, &tag);
	c.pos = (void *)(long)ctx->data;
	c.end = (void *)(long)ctx->data_end;
	eth = cursor_take(&c, sizeof(*eth));
	if (!eth)
		return count(UPLINK_STAT_MALFORMED, XDP_PASS);
	proto = eth->h_proto;
	if (tag.present) {
		/* The out-of-band tag is the outer one; as for a tag in the frame,
		 * only 802.1Q names a VLAN. */
		vlan = tag.proto == bpf_htons(ETH_P_8021Q) ? tag.tci & VLAN_VID_MASK : 0;
	} else if (parse_vlan(&c, &proto, &vlan) == V_MALFORMED) {
		return count(UPLINK_STAT_MALFORMED, XDP_PASS);
	}

	v = steer(&c, eth, proto, vlan);
	if (v == V_SWITCH)
		return tagged_to_switch(ctx, &tag);
	if (v == V_KERNEL)
		return count(UPLINK_STAT_KERNEL, XDP_PASS);
	if (v == V_NAT) {
		/* Counted at the decision, whatever the redirect then does. */
		count(UPLINK_STAT_NAT, 0);
		return tagged_to_switch(ctx, &tag);
	}
	if (v == V_MALFORMED)
		return count(UPLINK_STAT_MALFORMED, XDP_PASS);
	return count(UPLINK_STAT_PASSED, XDP_PASS);
}

#ifdef UPLINK_DEV_BOUND
/* The kernel lets only GPL-compatible programs call kfuncs; this file is
 * dual-licensed. */
char _license[] SEC("license") = "GPL";
#else
/* Only non-GPL helpers are used (map lookup, redirect_map, adjust_head). */
char _license[] SEC("license") = "Apache-2.0";
#endif

#endif /* UPLINK_TC */
