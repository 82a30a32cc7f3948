// SPDX-License-Identifier: GPL-2.0
/* A switch access port for the tests, because this kernel has neither the
 * 8021q module nor bridge VLAN filtering: attached with tc to a host's veth,
 * it tags what the host sends with VLAN VID and, on the way in, passes only
 * frames tagged VID, untagged. Build with -DVID=N. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef VID
#error "build with -DVID=<vlan id>"
#endif

SEC("tc/egress")
int tag(struct __sk_buff *skb)
{
	return bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), VID) ? TC_ACT_SHOT : TC_ACT_OK;
}

SEC("tc/ingress")
int untag(struct __sk_buff *skb)
{
	/* veth hands a received tag out of band when the sender's tx-vlan
	 * offload is on; the tests turn that off, so look in band too. */
	if (skb->vlan_present)
		return (skb->vlan_tci & 0xfff) == VID && !bpf_skb_vlan_pop(skb) ? TC_ACT_OK : TC_ACT_SHOT;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) + 4 > end)
		return TC_ACT_SHOT;
	if (eth->h_proto != bpf_htons(ETH_P_8021Q))
		return TC_ACT_SHOT;
	__u16 tci = bpf_ntohs(*(__u16 *)(eth + 1));
	if ((tci & 0xfff) != VID)
		return TC_ACT_SHOT;
	return bpf_skb_vlan_pop(skb) ? TC_ACT_SHOT : TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
