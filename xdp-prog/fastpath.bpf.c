// SPDX-License-Identifier: Apache-2.0
/*
 * The kernel fast path: TC programs on the host ends of veth endpoints and on
 * their punt TAPs. The slow path (vswitchd) decides; these programs forward
 * what it has already decided, and hand it everything else.
 *
 * vswitch_port (ingress of an endpoint's host veth, i.e. what the endpoint
 * sends), per frame:
 *   - unknown device                                   -> drop (no port)
 *   - port or network marked slow (policy, l2tunnel)    -> punt
 *   - source MAC not the port's (unless it may spoof)   -> drop mac_spoofing
 *   - group destination, ARP, VLAN tag, other ethertype -> punt
 *   - IPv4/IPv6 from an address not the port's, DHCP or
 *     DHCPv6 server ports, ICMPv6 other than echo,
 *     IPv6 extension headers                           -> punt
 *   - destination MAC in `fdb`, not marked slow:
 *       a veth endpoint on this host                   -> bpf_redirect_peer
 *       on the wire (learned on the network's uplink)  -> out of the uplink
 *         (l2bridge: source MAC rewritten to the uplink's; VLAN pushed)
 *   - anything else                                    -> punt
 *
 * A port or destination marked slow (policy) is not always punted: a TCP
 * or UDP packet of a flow the slow path has offloaded (`flows`, keyed by
 * the slow path's own flow key) is forwarded as the slow path decided,
 * except TCP SYN, FIN and RST, which connection tracking must see.
 *
 * "Punt" is bpf_redirect to the port's punt TAP: the slow path reads it with
 * its virtio-net header, so a GSO super-frame arrives whole (XDP, AF_XDP or
 * a packet socket on the veth would lose GSO or see every frame twice; see
 * docs/design.md). vswitch_inject (ingress of a punt TAP: what the slow path
 * writes) sends each frame on to the veth endpoint's peer, GSO intact.
 *
 * vswitch_uplink (ingress of an uplink, behind its XDP program, which
 * passes on the unicast IP frames of veth endpoints instead of handing
 * them to AF_XDP): the network from (uplink, VLAN) in `uplinks`; the veth
 * endpoint from the destination MAC (transparent) or, for frames to the
 * uplink's own MAC, from the destination IP (l2bridge, whose MAC is then
 * rewritten to the endpoint's); the VLAN tag popped; bpf_redirect_peer.
 * Anything else goes on (TCX_NEXT): to the host stack, as XDP decided, or
 * to the next program on the hook.
 *
 * Overlay networks (VXLAN, RFC 7348) use one VXLAN device per UDP port in
 * external (collect-metadata) mode: the kernel builds and parses the outer
 * headers, these programs choose the tunnel key.
 *   - vswitch_port, unicast to a MAC of another host (FP_FDB_TUNNEL, from
 *     the CA->PA table): tunnel key (VNI, its PA, ours) -> the VXLAN device;
 *   - vswitch_tunnel_inject (ingress of a network's tunnel TAP: what the
 *     slow path sends to other hosts): the same, by destination MAC;
 *   - vswitch_tunnel (ingress of the VXLAN device, after decapsulation):
 *     only configured VNIs from known peers; unicast to a veth endpoint
 *     that needs no policy -> bpf_redirect_peer, the rest to the network's
 *     tunnel TAP (the slow path);
 *   - vswitch_vtep_guard (ingress of the provider interface): VXLAN to one
 *     of our ports that is truncated, malformed, for an unknown VNI or from
 *     an unknown peer is dropped and counted before the kernel's VXLAN
 *     socket sees it.
 *
 * The endpoint programs never return TC_ACT_OK: the host stack never sees
 * an endpoint's frames. Counters are per CPU, per device (`counters`); a drop
 * is counted in the DropReason slot the slow path uses for the same reason.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "drop_reasons.h"
#include "fastpath.h"

#define IPPROTO_ICMPV6_ 58
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
#define DHCP_SERVER_PORT 67
#define DHCPV6_SERVER_PORT 547
/* tcx: on to the next program on the hook (the uplink's own steering, when
 * it runs in TC); with none, the host stack. */
#define UPLINK_NEXT (-1) /* TCX_NEXT (TC_ACT_UNSPEC); older uapi headers lack the name */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_PORTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct fp_port);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_FDB);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_fdb_key);
	__type(value, struct fp_fdb);
} fdb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_NETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct fp_net);
} nets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_NETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_uplink_key);
	__type(value, struct fp_uplink);
} uplinks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_PORTS * 2);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_ip_key);
	__type(value, struct fp_ip);
} endpoint_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_MAX_PORTS);
	__type(key, __u32);
	__type(value, struct fp_counters);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_FLOWS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, struct fp_flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_meta);
} meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_NETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct fp_tunnel);
} tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_FDB);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_peer_key);
	__type(value, __u32);
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct fp_vtep);
} vteps SEC(".maps");

/* The counters at `slot`. */
static __always_inline struct fp_counters *counters_of(__u32 slot)
{
	return bpf_map_lookup_elem(&counters, &slot);
}

/* Wire frames in this skb: a GSO super-frame counts its segments. */
static __always_inline __u64 frames_of(struct __sk_buff *skb)
{
	return skb->gso_segs > 1 ? skb->gso_segs : 1;
}

/* Helpers take the counter slot of the device the program runs on. */
static __always_inline int drop(struct __sk_buff *skb, __u32 slot, __u32 reason)
{
	struct fp_counters *c = counters_of(slot);

	/* Per-CPU values: no other writer, no atomics. */
	if (c && reason < DROP_REASON_MAX && reason < 32)
		c->drops[reason] += frames_of(skb);
	return TC_ACT_SHOT;
}

static __always_inline int punt(struct __sk_buff *skb, __u32 slot, const struct fp_port *port)
{
	struct fp_counters *c = counters_of(slot);

	if (c) {
		c->punted_packets += frames_of(skb);
		c->punted_bytes += skb->len;
	}
	return bpf_redirect(port->peer, 0);
}

/* Counts a frame forwarded in the kernel from slot `from` to slot `to`. */
static __always_inline void count_fast(struct __sk_buff *skb, __u32 from, __u32 to)
{
	__u64 frames = frames_of(skb);
	struct fp_counters *c = counters_of(from);

	if (c) {
		c->fast_rx_packets += frames;
		c->fast_rx_bytes += skb->len;
	}
	c = counters_of(to);
	if (c) {
		c->fast_tx_packets += frames;
		c->fast_tx_bytes += skb->len;
	}
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b &&
	       *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

static __always_inline int ip6_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* Whether the IP header after the Ethernet header leaves the frame to the
 * kernel: the port's own source address, and nothing the slow path polices
 * (DHCP server ports, NDP and router messages, extension headers).
 * Returns 1 for "forward in the kernel", 0 for "punt". */
static __always_inline int ip_is_plain(struct __sk_buff *skb, const struct fp_port *port,
				       __be16 proto)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	int spoof = port->flags & FP_PORT_SPOOF;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + sizeof(struct ethhdr);

		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return 0;
		if (!spoof && ip->saddr != *(const __u32 *)port->ipv4)
			return 0;
		if (ip->protocol == IPPROTO_UDP && !(ip->frag_off & bpf_htons(0x1fff))) {
			__u16 *sport = (void *)ip + ip->ihl * 4;

			if ((void *)(sport + 1) > end)
				return 0;
			if (*sport == bpf_htons(DHCP_SERVER_PORT))
				return 0;
		}
		return 1;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);

		if ((void *)(ip6 + 1) > end)
			return 0;
		if (!spoof && !ip6_eq(ip6->saddr.in6_u.u6_addr8, port->ipv6) &&
		    !ip6_eq(ip6->saddr.in6_u.u6_addr8, port->ll6))
			return 0;
		if (ip6->nexthdr == IPPROTO_TCP)
			return 1;
		if (ip6->nexthdr == IPPROTO_UDP) {
			__u16 *sport = (void *)(ip6 + 1);

			if ((void *)(sport + 1) > end)
				return 0;
			return *sport != bpf_htons(DHCPV6_SERVER_PORT);
		}
		if (ip6->nexthdr == IPPROTO_ICMPV6_) {
			__u8 *type = (void *)(ip6 + 1);

			if ((void *)(type + 1) > end)
				return 0;
			return *type == ICMPV6_ECHO_REQUEST || *type == ICMPV6_ECHO_REPLY;
		}
		return 0;
	}
	return 0;
}

/* Headers the fast path reads: Ethernet, IPv6 and a TCP header to its
 * flags (IPv4 options beyond that are read only when linear). */
#define FP_PULL_LEN (sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + 14)

#define TCP_FLAGS_OFFSET 13
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04

/* The slow path's flow key of a plain TCP/UDP frame from `port` (see
 * classify.rs: IPv4 as IPv4-mapped IPv6, ports in host byte order). Returns
 * 0 when the frame is not one the kernel may offload: not TCP/UDP, a later
 * fragment, TCP SYN, FIN or RST. */
static __always_inline int flow_key_of(struct __sk_buff *skb, const struct fp_port *port,
				       struct flow_key *key)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u8 *l4;

	if ((void *)(eth + 1) > end)
		return 0;
	key->net = port->net;
	key->in_port = port->port_id;
	key->ethertype = bpf_ntohs(eth->h_proto);
	__builtin_memcpy(key->src_mac, eth->h_source, 6);
	__builtin_memcpy(key->dst_mac, eth->h_dest, 6);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return 0;
		if (ip->frag_off & bpf_htons(0x1fff))
			return 0;
		key->family = 4;
		key->proto = ip->protocol;
		key->src_ip[10] = 0xff;
		key->src_ip[11] = 0xff;
		__builtin_memcpy(&key->src_ip[12], &ip->saddr, 4);
		key->dst_ip[10] = 0xff;
		key->dst_ip[11] = 0xff;
		__builtin_memcpy(&key->dst_ip[12], &ip->daddr, 4);
		l4 = (__u8 *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return 0;
		key->family = 6;
		key->proto = ip6->nexthdr;
		__builtin_memcpy(key->src_ip, ip6->saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(key->dst_ip, ip6->daddr.in6_u.u6_addr8, 16);
		l4 = (__u8 *)(ip6 + 1);
	} else {
		return 0;
	}
	if (key->proto == IPPROTO_TCP) {
		if ((void *)(l4 + TCP_FLAGS_OFFSET + 1) > end)
			return 0;
		if (l4[TCP_FLAGS_OFFSET] & (TCP_FIN | TCP_SYN | TCP_RST))
			return 0;
	} else if (key->proto == IPPROTO_UDP) {
		if ((void *)(l4 + 4) > end)
			return 0;
	} else {
		return 0;
	}
	key->src_port = bpf_ntohs(*(__be16 *)l4);
	key->dst_port = bpf_ntohs(*(__be16 *)(l4 + 2));
	return 1;
}

/* Carries out an offloaded flow's verdict, or punts when there is none. */
static __always_inline int offloaded(struct __sk_buff *skb, __u32 slot,
				     const struct fp_port *port)
{
	struct flow_key key = {};

	if (!flow_key_of(skb, port, &key))
		return punt(skb, slot, port);
	struct fp_flow *flow = bpf_map_lookup_elem(&flows, &key);

	if (!flow)
		return punt(skb, slot, port);
	__sync_fetch_and_add(&flow->packets, frames_of(skb));
	__sync_fetch_and_add(&flow->bytes, skb->len);
	flow->last_seen = bpf_ktime_get_ns();

	__u32 to = flow->ifindex;
	__u32 to_slot = flow->slot;
	__u32 flags = flow->flags;
	__u16 xflags = flow->xform.flags;
	__u16 vlan = flow->xform.vlan;
	__u8 src_mac[6], dst_mac[6];

	__builtin_memcpy(src_mac, flow->xform.src_mac, 6);
	__builtin_memcpy(dst_mac, flow->xform.dst_mac, 6);
	if ((xflags & XFORM_SET_SRC_MAC) &&
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), src_mac, 6, 0))
		return drop(skb, slot, DROP_TX_FAILED);
	if ((xflags & XFORM_SET_DST_MAC) &&
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), dst_mac, 6, 0))
		return drop(skb, slot, DROP_TX_FAILED);
	if ((xflags & XFORM_PUSH_VLAN) && bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), vlan))
		return drop(skb, slot, DROP_TX_FAILED);
	count_fast(skb, slot, to_slot);
	if (flags & FP_FLOW_UPLINK)
		return bpf_redirect(to, 0);
	return bpf_redirect_peer(to, 0);
}

/* Sends a frame of overlay network `net_id` to the host at provider
 * address `remote` (network byte order): the VXLAN device encapsulates it
 * with our tunnel key. The outer UDP source port is the kernel's hash of
 * the inner flow. */
static __always_inline int encap(struct __sk_buff *skb, __u32 net_id, __u32 remote, __u32 slot)
{
	struct fp_net *net = bpf_map_lookup_elem(&nets, &net_id);

	if (!net || !(net->flags & FP_NET_TUNNEL))
		return drop(skb, slot, DROP_NO_MAPPING);
	struct bpf_tunnel_key key = {
		.tunnel_id = net->vni,
		.remote_ipv4 = bpf_ntohl(remote),
		.local_ipv4 = bpf_ntohl(net->local_pa),
		.tunnel_ttl = 64,
	};
	__u32 vxlan = net->vxlan;

	count_fast(skb, slot, net->tunnel_slot);
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX))
		return drop(skb, slot, DROP_TX_FAILED);
	return bpf_redirect(vxlan, 0);
}

SEC("classifier")
int vswitch_port(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct fp_port *port = bpf_map_lookup_elem(&ports, &ifindex);

	if (!port)
		return drop(skb, 0, DROP_MALFORMED);
	__u32 slot = port->slot;

	if (skb->vlan_present)
		return punt(skb, slot, port);

	/* A veth skb keeps its headers linear; pull them when it does not. */
	if ((void *)(long)skb->data + FP_PULL_LEN > (void *)(long)skb->data_end)
		bpf_skb_pull_data(skb, skb->len < FP_PULL_LEN ? skb->len : FP_PULL_LEN);
	/* bpf_skb_pull_data may move the packet: re-read the port as well. */
	port = bpf_map_lookup_elem(&ports, &ifindex);
	if (!port)
		return TC_ACT_SHOT;

	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return punt(skb, slot, port);
	if (!(port->flags & FP_PORT_SPOOF) && !mac_eq(eth->h_source, port->mac))
		return drop(skb, slot, DROP_MAC_SPOOFING);
	if (eth->h_dest[0] & 1)
		return punt(skb, slot, port);
	if (!ip_is_plain(skb, port, eth->h_proto))
		return punt(skb, slot, port);
	if (port->flags & FP_PORT_SLOW)
		return offloaded(skb, slot, port);

	struct fp_fdb_key key = { .net = port->net };
	__builtin_memcpy(key.mac, eth->h_dest, 6);
	struct fp_fdb *to = bpf_map_lookup_elem(&fdb, &key);

	if (!to)
		return punt(skb, slot, port);
	if (to->flags & FP_FDB_SLOW)
		return offloaded(skb, slot, port);

	if (to->flags & FP_FDB_ENDPOINT) {
		/* Unicast back to where it came from: the slow path counts it. */
		if (to->ifindex == ifindex)
			return punt(skb, slot, port);
		count_fast(skb, slot, to->slot);
		return bpf_redirect_peer(to->ifindex, 0);
	}
	if (to->flags & FP_FDB_TUNNEL)
		return encap(skb, port->net, to->remote, slot);
	if (to->flags & FP_FDB_UPLINK) {
		__u32 net_id = port->net;
		struct fp_net *net = bpf_map_lookup_elem(&nets, &net_id);

		if (!net || !net->uplink || (net->flags & FP_NET_SLOW))
			return punt(skb, slot, port);
		__u32 uplink = net->uplink;
		__u32 uplink_slot = net->uplink_slot;
		__u16 vlan = net->vlan;
		__u32 flags = net->flags;

		if (flags & FP_NET_L2BRIDGE &&
		    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), net->uplink_mac, 6, 0))
			return drop(skb, slot, DROP_TX_FAILED);
		if (flags & FP_NET_VLAN && bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), vlan))
			return drop(skb, slot, DROP_TX_FAILED);
		count_fast(skb, slot, uplink_slot);
		return bpf_redirect(uplink, 0);
	}
	return punt(skb, slot, port);
}

SEC("classifier")
int vswitch_inject(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct fp_port *port = bpf_map_lookup_elem(&ports, &ifindex);

	if (!port || !(port->flags & FP_PORT_INJECT))
		return drop(skb, 0, DROP_MALFORMED);
	struct fp_counters *c = counters_of(port->slot);

	if (c) {
		c->injected_packets += frames_of(skb);
		c->injected_bytes += skb->len;
	}
	return bpf_redirect_peer(port->peer, 0);
}

/* The veth endpoint an l2bridge frame from the wire is for, by its
 * destination IP. */
static __always_inline struct fp_ip *endpoint_by_ip(struct __sk_buff *skb, __u32 net, __u32 l3,
						    __be16 proto)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct fp_ip_key key = { .net = net };

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + l3;

		if ((void *)(ip + 1) > end)
			return NULL;
		key.family = FP_FAMILY_IPV4;
		__builtin_memcpy(key.addr, &ip->daddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + l3;

		if ((void *)(ip6 + 1) > end)
			return NULL;
		/* Neighbour discovery is the slow path's (XDP sent it there). */
		if (ip6->nexthdr == IPPROTO_ICMPV6_)
			return NULL;
		key.family = FP_FAMILY_IPV6;
		__builtin_memcpy(key.addr, ip6->daddr.in6_u.u6_addr8, 16);
	} else {
		return NULL;
	}
	return bpf_map_lookup_elem(&endpoint_ips, &key);
}

SEC("classifier")
int vswitch_uplink(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct fp_uplink_key ukey = { .ifindex = ifindex };
	__u32 l3 = sizeof(struct ethhdr);
	__be16 proto;

	if ((void *)(long)skb->data + FP_PULL_LEN + 4 > (void *)(long)skb->data_end)
		bpf_skb_pull_data(skb, skb->len < FP_PULL_LEN + 4 ? skb->len : FP_PULL_LEN + 4);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return UPLINK_NEXT;
	proto = eth->h_proto;
	if (skb->vlan_present) {
		ukey.vlan = skb->vlan_tci & 0x0fff;
	} else if (proto == bpf_htons(ETH_P_8021Q)) {
		__be16 *tag = (void *)(eth + 1);

		if ((void *)(tag + 2) > end)
			return UPLINK_NEXT;
		ukey.vlan = bpf_ntohs(tag[0]) & 0x0fff;
		proto = tag[1];
		l3 += 4;
	}
	struct fp_uplink *up = bpf_map_lookup_elem(&uplinks, &ukey);

	if (!up || (eth->h_dest[0] & 1))
		return UPLINK_NEXT;
	/* Only IP is the kernel's, as the uplink's XDP steering leaves it; the
	 * rest (ARP replies, say) goes on to the switch, which learns from it,
	 * when the steering runs in TC behind this program. */
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
		return UPLINK_NEXT;
	__u32 to = 0, to_slot = 0, slot = up->slot;
	__u8 rewrite[6];
	int set_mac = 0;

	if ((up->flags & FP_NET_L2BRIDGE) && mac_eq(eth->h_dest, up->mac)) {
		struct fp_ip *ep = endpoint_by_ip(skb, up->net, l3, proto);

		if (!ep || (ep->flags & FP_FDB_SLOW))
			return UPLINK_NEXT;
		to = ep->ifindex;
		to_slot = ep->slot;
		__builtin_memcpy(rewrite, ep->mac, 6);
		set_mac = 1;
	} else {
		struct fp_fdb_key key = { .net = up->net };

		__builtin_memcpy(key.mac, eth->h_dest, 6);
		struct fp_fdb *fdb_entry = bpf_map_lookup_elem(&fdb, &key);

		if (!fdb_entry || !(fdb_entry->flags & FP_FDB_ENDPOINT) ||
		    (fdb_entry->flags & FP_FDB_SLOW))
			return UPLINK_NEXT;
		to = fdb_entry->ifindex;
		to_slot = fdb_entry->slot;
	}
	if ((skb->vlan_present || l3 > sizeof(struct ethhdr)) && bpf_skb_vlan_pop(skb))
		return drop(skb, slot, DROP_MALFORMED);
	if (set_mac &&
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), rewrite, 6, 0))
		return drop(skb, slot, DROP_MALFORMED);
	count_fast(skb, slot, to_slot);
	return bpf_redirect_peer(to, 0);
}

SEC("classifier")
int vswitch_tunnel_inject(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct fp_port *port = bpf_map_lookup_elem(&ports, &ifindex);

	if (!port || !(port->flags & FP_PORT_TUNNEL))
		return drop(skb, 0, DROP_MALFORMED);
	__u32 slot = port->slot;
	struct fp_fdb_key key = { .net = port->net };
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return drop(skb, slot, DROP_MALFORMED);
	__builtin_memcpy(key.mac, eth->h_dest, 6);
	struct fp_fdb *to = bpf_map_lookup_elem(&fdb, &key);

	if (!to || !(to->flags & FP_FDB_TUNNEL))
		return drop(skb, slot, DROP_NO_MAPPING);
	struct fp_counters *c = counters_of(slot);

	if (c) {
		c->injected_packets += frames_of(skb);
		c->injected_bytes += skb->len;
	}
	/* Counted as injected above, not again as forwarded. */
	return encap(skb, port->net, to->remote, 0);
}

SEC("classifier")
int vswitch_tunnel(struct __sk_buff *skb)
{
	struct bpf_tunnel_key tkey = {};
	__u32 ifindex = skb->ifindex, vtep_slot = 0;
	/* The VXLAN device's own entry: its slot, for what no network claims. */
	struct fp_port *dev = bpf_map_lookup_elem(&ports, &ifindex);

	if (dev)
		vtep_slot = dev->slot;
	if (bpf_skb_get_tunnel_key(skb, &tkey, sizeof(tkey), 0))
		return drop(skb, vtep_slot, DROP_MALFORMED);
	__u32 vni = tkey.tunnel_id;
	struct fp_tunnel *t = bpf_map_lookup_elem(&tunnels, &vni);

	if (!t)
		return drop(skb, vtep_slot, DROP_VXLAN_UNKNOWN_VNI);
	__u32 net = t->net, punt_to = t->punt, slot = t->slot;
	struct fp_peer_key pkey = { .net = net, .pa = bpf_htonl(tkey.remote_ipv4) };

	if (!bpf_map_lookup_elem(&peers, &pkey))
		return drop(skb, slot, DROP_VXLAN_UNKNOWN_PEER);

	if ((void *)(long)skb->data + sizeof(struct ethhdr) > (void *)(long)skb->data_end)
		bpf_skb_pull_data(skb, sizeof(struct ethhdr));
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return drop(skb, slot, DROP_VXLAN_TRUNCATED);
	if (!(eth->h_dest[0] & 1)) {
		struct fp_fdb_key key = { .net = net };

		__builtin_memcpy(key.mac, eth->h_dest, 6);
		struct fp_fdb *to = bpf_map_lookup_elem(&fdb, &key);

		if (to && (to->flags & FP_FDB_ENDPOINT) && !(to->flags & FP_FDB_SLOW)) {
			count_fast(skb, slot, to->slot);
			return bpf_redirect_peer(to->ifindex, 0);
		}
	}
	struct fp_counters *c = counters_of(slot);

	if (c) {
		c->punted_packets += frames_of(skb);
		c->punted_bytes += skb->len;
	}
	return bpf_redirect(punt_to, 0);
}

#define VXLAN_HLEN 8
#define VXLAN_FLAG_VNI 0x08

SEC("classifier")
int vswitch_vtep_guard(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 l4, dport;
	__u8 vx[VXLAN_HLEN];
	struct iphdr ip;
	__u16 ports[2];

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || skb->vlan_present)
		return UPLINK_NEXT;
	if (bpf_skb_load_bytes(skb, sizeof(*eth), &ip, sizeof(ip)))
		return UPLINK_NEXT;
	if (ip.protocol != IPPROTO_UDP || ip.ihl < 5 || (ip.frag_off & bpf_htons(0x1fff)))
		return UPLINK_NEXT;
	l4 = sizeof(*eth) + ip.ihl * 4;
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)))
		return UPLINK_NEXT;
	dport = bpf_ntohs(ports[1]);
	struct fp_vtep *vtep = bpf_map_lookup_elem(&vteps, &dport);

	if (!vtep)
		return UPLINK_NEXT;
	__u32 vslot = vtep->slot;

	/* UDP header, VXLAN header, inner Ethernet header. */
	if (skb->len < l4 + 8 + VXLAN_HLEN + sizeof(struct ethhdr) ||
	    bpf_skb_load_bytes(skb, l4 + 8, vx, sizeof(vx)))
		return drop(skb, vslot, DROP_VXLAN_TRUNCATED);
	if (!(vx[0] & VXLAN_FLAG_VNI))
		return drop(skb, vslot, DROP_VXLAN_MALFORMED);
	__u32 vni = ((__u32)vx[4] << 16) | ((__u32)vx[5] << 8) | vx[6];
	struct fp_tunnel *t = bpf_map_lookup_elem(&tunnels, &vni);

	if (!t)
		return drop(skb, vslot, DROP_VXLAN_UNKNOWN_VNI);
	struct fp_peer_key pkey = { .net = t->net, .pa = ip.saddr };

	if (!bpf_map_lookup_elem(&peers, &pkey))
		return drop(skb, t->slot, DROP_VXLAN_UNKNOWN_PEER);
	return UPLINK_NEXT;
}

char _license[] SEC("license") = "Apache-2.0";
