/* rtnetlink over libmnl: build many requests into one buffer, send them with as few
 * sendmsg(2) calls as possible, then read every ack and report the first failure by its
 * position in the batch, with the kernel's extended-ack text. The kernel processes every
 * message of a sendmsg even after one fails; later rounds are not sent after a failure.
 * Callers undo a failed batch at their level (a failed node's namespace is closed). */
#define _GNU_SOURCE
#include "patchbay.h"

#include <errno.h>
#include <libmnl/libmnl.h>
#include <linux/if.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/tc_act/tc_mirred.h>
#include <arpa/inet.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Room for the largest single message we build (a veth pair is ~200 bytes). */
#define PB_MSG_MAX 1024
/* Messages per sendmsg: keeps the acks of one round well inside the receive buffer. */
#define PB_ROUND 64

/* Sequence numbers are unique across every request of the process, so an answer left over
 * from an earlier request (one that stopped early) is never taken for a new one's. */
static atomic_uint next_seq = 1;

static uint32_t take_seqs(uint32_t n)
{
	return atomic_fetch_add(&next_seq, n);
}

struct pb_batch {
	char *buf;
	size_t len, cap;
	int count;
	uint32_t seq0; /* the sequence number of message 0, given when the batch is sent */
	/* Offsets of each message, to send in rounds of PB_ROUND. */
	size_t *offs;
	int offs_cap;
};

struct pb_batch *pb_batch_new(void)
{
	return calloc(1, sizeof(struct pb_batch));
}

void pb_batch_free(struct pb_batch *b)
{
	if (!b)
		return;
	free(b->buf);
	free(b->offs);
	free(b);
}

void pb_batch_reset(struct pb_batch *b)
{
	b->len = 0;
	b->count = 0;
}

int pb_batch_count(struct pb_batch *b)
{
	return b->count;
}

void pb_free(void *p)
{
	free(p);
}

/* Start a message: make room, put the header, number it by its position. */
static struct nlmsghdr *msg_start(struct pb_batch *b, int type, int flags)
{
	if (b->len + PB_MSG_MAX > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 16384;
		char *nb = realloc(b->buf, cap);
		if (!nb)
			return NULL;
		b->buf = nb;
		b->cap = cap;
	}
	if (b->count + 1 > b->offs_cap) {
		int cap = b->offs_cap ? b->offs_cap * 2 : 64;
		size_t *no = realloc(b->offs, (size_t)cap * sizeof(size_t));
		if (!no)
			return NULL;
		b->offs = no;
		b->offs_cap = cap;
	}
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(b->buf + b->len);
	nlh->nlmsg_type = (uint16_t)type;
	nlh->nlmsg_flags = (uint16_t)(NLM_F_REQUEST | NLM_F_ACK | flags);
	nlh->nlmsg_seq = (uint32_t)b->count;
	return nlh;
}

static int msg_end(struct pb_batch *b, struct nlmsghdr *nlh)
{
	b->offs[b->count] = b->len;
	b->len += nlh->nlmsg_len;
	return b->count++;
}

static void put_ifinfo(struct nlmsghdr *nlh, int ifindex, int up)
{
	struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifm));
	ifm->ifi_family = AF_UNSPEC;
	ifm->ifi_index = ifindex;
	if (up >= 0) {
		ifm->ifi_change = IFF_UP;
		ifm->ifi_flags = up ? IFF_UP : 0;
	}
}

int pb_batch_veth(struct pb_batch *b, const char *name, int ifindex, int ns_fd, int master,
		  int mtu, int up, const char *peer_name, int peer_ifindex, int peer_ns_fd,
		  int peer_mtu, int peer_up)
{
	struct nlmsghdr *nlh = msg_start(b, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
	if (!nlh)
		return -ENOMEM;
	put_ifinfo(nlh, ifindex, up ? 1 : 0);
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	if (ns_fd >= 0)
		mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, (uint32_t)ns_fd);
	if (mtu > 0)
		mnl_attr_put_u32(nlh, IFLA_MTU, (uint32_t)mtu);
	if (master > 0)
		mnl_attr_put_u32(nlh, IFLA_MASTER, (uint32_t)master);
	/* One queue each way: veth defaults to one per CPU, and every queue costs sysfs objects
	 * at creation and deletion. A lab link never needs more. */
	mnl_attr_put_u32(nlh, IFLA_NUM_TX_QUEUES, 1);
	mnl_attr_put_u32(nlh, IFLA_NUM_RX_QUEUES, 1);
	struct nlattr *linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
	mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
	struct nlattr *data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
	struct nlattr *peer = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
	/* The peer nest starts with its own ifinfomsg, then its attributes. */
	struct ifinfomsg *pifm = mnl_nlmsg_get_payload_tail(nlh);
	memset(pifm, 0, sizeof(*pifm));
	pifm->ifi_family = AF_UNSPEC;
	pifm->ifi_index = peer_ifindex;
	pifm->ifi_change = IFF_UP;
	pifm->ifi_flags = peer_up ? IFF_UP : 0;
	nlh->nlmsg_len += MNL_ALIGN(sizeof(*pifm));
	mnl_attr_put_strz(nlh, IFLA_IFNAME, peer_name);
	if (peer_ns_fd >= 0)
		mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, (uint32_t)peer_ns_fd);
	if (peer_mtu > 0)
		mnl_attr_put_u32(nlh, IFLA_MTU, (uint32_t)peer_mtu);
	mnl_attr_put_u32(nlh, IFLA_NUM_TX_QUEUES, 1);
	mnl_attr_put_u32(nlh, IFLA_NUM_RX_QUEUES, 1);
	mnl_attr_nest_end(nlh, peer);
	mnl_attr_nest_end(nlh, data);
	mnl_attr_nest_end(nlh, linkinfo);
	return msg_end(b, nlh);
}

int pb_batch_macvlan(struct pb_batch *b, const char *name, int ifindex, int ns_fd, int lower,
		     int mtu, const uint8_t *mac)
{
	struct nlmsghdr *nlh = msg_start(b, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
	if (!nlh)
		return -ENOMEM;
	/* Not up here: bring it up from inside its namespace, like a veth peer. */
	put_ifinfo(nlh, ifindex, -1);
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	mnl_attr_put_u32(nlh, IFLA_LINK, (uint32_t)lower);
	if (ns_fd >= 0)
		mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, (uint32_t)ns_fd);
	if (mtu > 0)
		mnl_attr_put_u32(nlh, IFLA_MTU, (uint32_t)mtu);
	if (mac)
		mnl_attr_put(nlh, IFLA_ADDRESS, 6, mac);
	struct nlattr *linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
	mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "macvlan");
	struct nlattr *data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
	mnl_attr_put_u32(nlh, IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE);
	mnl_attr_nest_end(nlh, data);
	mnl_attr_nest_end(nlh, linkinfo);
	return msg_end(b, nlh);
}

int pb_batch_bridge(struct pb_batch *b, const char *name, int ifindex, int mtu, int up)
{
	struct nlmsghdr *nlh = msg_start(b, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
	if (!nlh)
		return -ENOMEM;
	put_ifinfo(nlh, ifindex, up ? 1 : 0);
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	if (mtu > 0)
		mnl_attr_put_u32(nlh, IFLA_MTU, (uint32_t)mtu);
	struct nlattr *linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
	mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "bridge");
	struct nlattr *data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
	/* Ports forward at once (no STP listening/learning delay). */
	mnl_attr_put_u32(nlh, IFLA_BR_FORWARD_DELAY, 0);
	mnl_attr_put_u32(nlh, IFLA_BR_STP_STATE, 0);
	/* Flood multicast like a plain switch: LAN discovery (mDNS, SSDP) must just work. */
	mnl_attr_put_u8(nlh, IFLA_BR_MCAST_SNOOPING, 0);
	mnl_attr_nest_end(nlh, data);
	mnl_attr_nest_end(nlh, linkinfo);
	return msg_end(b, nlh);
}

int pb_batch_qdisc(struct pb_batch *b, int add, int replace, int ifindex, unsigned int handle,
		   unsigned int parent, const char *kind, const uint8_t *opts, size_t opts_len)
{
	if (opts_len > PB_MSG_MAX - 128)
		return -EMSGSIZE;
	int flags = add ? NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL) : 0;
	struct nlmsghdr *nlh = msg_start(b, add ? RTM_NEWQDISC : RTM_DELQDISC, flags);
	if (!nlh)
		return -ENOMEM;
	struct tcmsg *tcm = mnl_nlmsg_put_extra_header(nlh, sizeof(*tcm));
	tcm->tcm_family = AF_UNSPEC;
	tcm->tcm_ifindex = ifindex;
	tcm->tcm_handle = handle;
	tcm->tcm_parent = parent ? parent : TC_H_ROOT;
	if (kind)
		mnl_attr_put_strz(nlh, TCA_KIND, kind);
	if (opts && opts_len)
		mnl_attr_put(nlh, TCA_OPTIONS, opts_len, opts);
	return msg_end(b, nlh);
}

/* The redirect's match, as a classic BPF program for cls_bpf (no bpf(2) call, so it also works
 * in an unprivileged user namespace): packets with the wire's mark never match (the wire sends
 * them back out of the same interface through the normal path, where packet captures see
 * them); the others match when `dst` (an IPv4 or IPv6 destination, from the Ethernet header
 * on) is theirs, or always. Returns the number of instructions. */
static int redirect_program(struct sock_filter *f, const uint8_t *dst, int dst_len)
{
	int n = 0;
	int words = dst_len / 4;
	/* The "no match" return is the last instruction: jumps to it count from their own slot. */
	int last = 2 + (dst_len ? 2 + 2 * words : 0) + 1;
	f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_AD_OFF + SKF_AD_MARK));
	f[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PB_WIRE_MARK, 0, 0);
	f[n].jt = (uint8_t)(last - n - 1);
	n++;
	if (dst_len) {
		f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 12); /* EtherType */
		f[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, dst_len == 4 ? ETH_P_IP : ETH_P_IPV6, 0, 0);
		f[n].jf = (uint8_t)(last - n - 1);
		n++;
		uint32_t off = dst_len == 4 ? 14 + 16 : 14 + 24; /* the destination address */
		for (int i = 0; i < words; i++) {
			uint32_t word;
			memcpy(&word, dst + 4 * i, 4);
			f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, off + 4 * (uint32_t)i);
			f[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ntohl(word), 0, 0);
			f[n].jf = (uint8_t)(last - n - 1);
			n++;
		}
	}
	f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0xffffffff); /* match: run the action */
	f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0);	   /* no match */
	return n;
}

int pb_batch_redirect(struct pb_batch *b, int add, int ifindex, unsigned int parent, int prio,
		      const uint8_t *dst, int dst_len, int target_ifindex)
{
	if (dst_len != 0 && dst_len != 4 && dst_len != 16)
		return -EINVAL;
	uint16_t proto = ETH_P_ALL;
	struct nlmsghdr *nlh = msg_start(b, add ? RTM_NEWTFILTER : RTM_DELTFILTER,
					 add ? NLM_F_CREATE | NLM_F_EXCL : 0);
	if (!nlh)
		return -ENOMEM;
	struct tcmsg *tcm = mnl_nlmsg_put_extra_header(nlh, sizeof(*tcm));
	tcm->tcm_family = AF_UNSPEC;
	tcm->tcm_ifindex = ifindex;
	tcm->tcm_parent = parent;
	tcm->tcm_info = TC_H_MAKE((uint32_t)prio << 16, htons(proto));
	if (!add)
		return msg_end(b, nlh);
	mnl_attr_put_strz(nlh, TCA_KIND, "bpf");
	struct nlattr *opts = mnl_attr_nest_start(nlh, TCA_OPTIONS);
	struct sock_filter prog[16];
	int len = redirect_program(prog, dst, dst_len);
	mnl_attr_put_u16(nlh, TCA_BPF_OPS_LEN, (uint16_t)len);
	mnl_attr_put(nlh, TCA_BPF_OPS, (size_t)len * sizeof(prog[0]), prog);
	struct nlattr *acts = mnl_attr_nest_start(nlh, TCA_BPF_ACT);
	struct nlattr *act = mnl_attr_nest_start(nlh, 1);
	mnl_attr_put_strz(nlh, TCA_ACT_KIND, "mirred");
	struct nlattr *aopts = mnl_attr_nest_start(nlh, TCA_ACT_OPTIONS);
	struct tc_mirred m = {0};
	m.action = TC_ACT_STOLEN;
	m.eaction = TCA_EGRESS_REDIR;
	m.ifindex = (uint32_t)target_ifindex;
	mnl_attr_put(nlh, TCA_MIRRED_PARMS, sizeof(m), &m);
	mnl_attr_nest_end(nlh, aopts);
	mnl_attr_nest_end(nlh, act);
	mnl_attr_nest_end(nlh, acts);
	mnl_attr_nest_end(nlh, opts);
	return msg_end(b, nlh);
}

int pb_batch_link_set(struct pb_batch *b, int ifindex, int up, int mtu, int master)
{
	struct nlmsghdr *nlh = msg_start(b, RTM_NEWLINK, 0);
	if (!nlh)
		return -ENOMEM;
	put_ifinfo(nlh, ifindex, up);
	if (mtu > 0)
		mnl_attr_put_u32(nlh, IFLA_MTU, (uint32_t)mtu);
	if (master >= 0)
		mnl_attr_put_u32(nlh, IFLA_MASTER, (uint32_t)master);
	return msg_end(b, nlh);
}

int pb_batch_link_del(struct pb_batch *b, int ifindex)
{
	struct nlmsghdr *nlh = msg_start(b, RTM_DELLINK, 0);
	if (!nlh)
		return -ENOMEM;
	put_ifinfo(nlh, ifindex, -1);
	return msg_end(b, nlh);
}

static int addr_len(int family)
{
	return family == AF_INET ? 4 : family == AF_INET6 ? 16 : -1;
}

int pb_batch_addr(struct pb_batch *b, int add, int family, int ifindex, const uint8_t *addr,
		  int prefixlen, int nodad)
{
	int alen = addr_len(family);
	if (alen < 0)
		return -EAFNOSUPPORT;
	struct nlmsghdr *nlh = msg_start(b, add ? RTM_NEWADDR : RTM_DELADDR,
					 add ? NLM_F_CREATE | NLM_F_EXCL : 0);
	if (!nlh)
		return -ENOMEM;
	struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
	ifa->ifa_family = (uint8_t)family;
	ifa->ifa_prefixlen = (uint8_t)prefixlen;
	ifa->ifa_index = (uint32_t)ifindex;
	ifa->ifa_flags = nodad ? IFA_F_NODAD : 0;
	mnl_attr_put(nlh, IFA_LOCAL, (size_t)alen, addr);
	mnl_attr_put(nlh, IFA_ADDRESS, (size_t)alen, addr);
	return msg_end(b, nlh);
}

int pb_batch_route(struct pb_batch *b, int op, int family, const uint8_t *dst, int dst_len,
		   const uint8_t *gw, int oif, int metric, int blackhole)
{
	int alen = addr_len(family);
	if (alen < 0)
		return -EAFNOSUPPORT;
	int type = op ? RTM_NEWROUTE : RTM_DELROUTE;
	int flags = op == 1 ? NLM_F_CREATE | NLM_F_EXCL : op == 2 ? NLM_F_CREATE | NLM_F_REPLACE : 0;
	struct nlmsghdr *nlh = msg_start(b, type, flags);
	if (!nlh)
		return -ENOMEM;
	struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = (uint8_t)family;
	rtm->rtm_dst_len = (uint8_t)dst_len;
	rtm->rtm_table = RT_TABLE_MAIN;
	/* Deleting matches routes of any origin (static ones, and those learnt from RAs). */
	rtm->rtm_protocol = op ? RTPROT_STATIC : RTPROT_UNSPEC;
	rtm->rtm_type = blackhole ? RTN_BLACKHOLE : RTN_UNICAST;
	/* A route with no gateway reaches its destination directly on the link. */
	rtm->rtm_scope = op && !gw && !blackhole ? RT_SCOPE_LINK : op ? RT_SCOPE_UNIVERSE : RT_SCOPE_NOWHERE;
	if (dst && dst_len > 0)
		mnl_attr_put(nlh, RTA_DST, (size_t)alen, dst);
	if (gw)
		mnl_attr_put(nlh, RTA_GATEWAY, (size_t)alen, gw);
	if (oif > 0)
		mnl_attr_put_u32(nlh, RTA_OIF, (uint32_t)oif);
	if (metric > 0)
		mnl_attr_put_u32(nlh, RTA_PRIORITY, (uint32_t)metric);
	return msg_end(b, nlh);
}

/* Pull the kernel's extended-ack message (NLMSGERR_ATTR_MSG) out of an error answer. */
static void extack_text(const struct nlmsghdr *nlh, char *out, size_t outlen)
{
	if (!out || !outlen)
		return;
	out[0] = 0;
	if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS))
		return;
	const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);
	size_t off = sizeof(*e);
	/* Without NLM_F_CAPPED the kernel echoed the whole request before the TLVs. */
	if (!(nlh->nlmsg_flags & NLM_F_CAPPED))
		off += e->msg.nlmsg_len - sizeof(struct nlmsghdr);
	const char *tlv = (const char *)e + off;
	const char *end = (const char *)nlh + nlh->nlmsg_len;
	while (tlv + sizeof(struct nlattr) <= end) {
		const struct nlattr *a = (const struct nlattr *)tlv;
		if (a->nla_len < sizeof(*a) || tlv + a->nla_len > end)
			break;
		if ((a->nla_type & NLA_TYPE_MASK) == NLMSGERR_ATTR_MSG) {
			size_t n = a->nla_len - sizeof(*a);
			if (n >= outlen)
				n = outlen - 1;
			memcpy(out, tlv + sizeof(*a), n);
			out[n] = 0;
			return;
		}
		tlv += MNL_ALIGN(a->nla_len);
	}
}

/* Read acks until every message in [first, last) of the batch (numbered from seq0) answered. */
static int collect_acks(int fd, uint32_t seq0, int first, int last, int *failed_index, char *extack,
			size_t extack_len, int *first_err)
{
	static __thread char rbuf[65536];
	int answered = 0, want = last - first;
	while (answered < want) {
		ssize_t n = recv(fd, rbuf, sizeof(rbuf), 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		const struct nlmsghdr *nlh = (const struct nlmsghdr *)rbuf;
		int len = (int)n;
		while (mnl_nlmsg_ok(nlh, len)) {
			if (nlh->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);
				int seq = (int)(nlh->nlmsg_seq - seq0);
				if (seq >= first && seq < last) {
					answered++;
					if (e->error && !*first_err) {
						*first_err = e->error;
						*failed_index = seq;
						extack_text(nlh, extack, extack_len);
					}
				}
			}
			nlh = mnl_nlmsg_next(nlh, &len);
		}
	}
	return 0;
}

int pb_batch_send(struct pb_batch *b, int fd, int *failed_index, char *extack,
		  size_t extack_len)
{
	int first_err = 0;
	*failed_index = -1;
	if (extack && extack_len)
		extack[0] = 0;
	b->seq0 = take_seqs((uint32_t)b->count);
	for (int i = 0; i < b->count; i++)
		((struct nlmsghdr *)(b->buf + b->offs[i]))->nlmsg_seq = b->seq0 + (uint32_t)i;
	for (int first = 0; first < b->count; first += PB_ROUND) {
		int last = first + PB_ROUND < b->count ? first + PB_ROUND : b->count;
		size_t start = b->offs[first];
		size_t end = last < b->count ? b->offs[last] : b->len;
		struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
		ssize_t sent;
		do
			sent = sendto(fd, b->buf + start, end - start, 0, (struct sockaddr *)&sa,
				      sizeof(sa));
		while (sent < 0 && errno == EINTR);
		if (sent < 0) {
			*failed_index = first;
			return -errno;
		}
		int r = collect_acks(fd, b->seq0, first, last, failed_index, extack, extack_len, &first_err);
		if (r)
			return r;
		/* Later rounds usually depend on earlier ones: stop at the first failure. */
		if (first_err)
			break;
	}
	return first_err;
}

/* Send a dump request whose body is `hdr` and collect every answer until NLMSG_DONE. */
static int dump_request(int fd, int msg_type, const void *hdr, size_t hdr_len, uint8_t **out,
			size_t *out_len)
{
	char req[64];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(req);
	nlh->nlmsg_type = (uint16_t)msg_type;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	uint32_t seq = take_seqs(1);
	nlh->nlmsg_seq = seq;
	memcpy(mnl_nlmsg_put_extra_header(nlh, hdr_len), hdr, hdr_len);
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
	if (sendto(fd, req, nlh->nlmsg_len, 0, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -errno;

	size_t cap = 65536, len = 0;
	uint8_t *acc = malloc(cap);
	static __thread char rbuf[65536];
	if (!acc)
		return -ENOMEM;
	for (;;) {
		ssize_t n = recv(fd, rbuf, sizeof(rbuf), 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			free(acc);
			return -errno;
		}
		const struct nlmsghdr *m = (const struct nlmsghdr *)rbuf;
		int left = (int)n;
		while (mnl_nlmsg_ok(m, left)) {
			if (m->nlmsg_seq != seq) {
				/* A stale answer from an earlier request: skip it. */
			} else if (m->nlmsg_type == NLMSG_DONE) {
				*out = acc;
				*out_len = len;
				return 0;
			} else if (m->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = mnl_nlmsg_get_payload(m);
				free(acc);
				return e->error ? e->error : -EIO;
			} else {
				if (len + m->nlmsg_len > cap) {
					while (len + m->nlmsg_len > cap)
						cap *= 2;
					uint8_t *na = realloc(acc, cap);
					if (!na) {
						free(acc);
						return -ENOMEM;
					}
					acc = na;
				}
				memcpy(acc + len, m, m->nlmsg_len);
				len += MNL_ALIGN(m->nlmsg_len);
			}
			m = mnl_nlmsg_next(m, &left);
		}
	}
}

int pb_rtnl_dump(int fd, int msg_type, int family, uint8_t **out, size_t *out_len)
{
	struct ifinfomsg hdr = {.ifi_family = (unsigned char)family};
	return dump_request(fd, msg_type, &hdr, sizeof(hdr), out, out_len);
}

int pb_ct_dump(int fd, int family, uint8_t **out, size_t *out_len)
{
	struct nfgenmsg hdr = {.nfgen_family = (uint8_t)family, .version = NFNETLINK_V0};
	return dump_request(fd, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, &hdr, sizeof(hdr),
			    out, out_len);
}

int pb_ct_flush(int fd, int family)
{
	char req[64];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(req);
	nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	uint32_t seq = take_seqs(1);
	nlh->nlmsg_seq = seq;
	struct nfgenmsg *g = mnl_nlmsg_put_extra_header(nlh, sizeof(*g));
	g->nfgen_family = (uint8_t)family;
	g->version = NFNETLINK_V0;
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
	if (sendto(fd, req, nlh->nlmsg_len, 0, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -errno;
	char rbuf[4096];
	for (;;) {
		ssize_t n = recv(fd, rbuf, sizeof(rbuf), 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		const struct nlmsghdr *m = (const struct nlmsghdr *)rbuf;
		int left = (int)n;
		for (; mnl_nlmsg_ok(m, left); m = mnl_nlmsg_next(m, &left))
			if (m->nlmsg_type == NLMSG_ERROR && m->nlmsg_seq == seq)
				return ((const struct nlmsgerr *)mnl_nlmsg_get_payload(m))->error;
	}
}

/* ---- for link conditions on the netem backend ---- */

int pb_batch_link_kind(struct pb_batch *b, const char *kind, const char *name, int ifindex, int up)
{
	struct nlmsghdr *nlh = msg_start(b, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
	if (!nlh)
		return -ENOMEM;
	put_ifinfo(nlh, ifindex, up ? 1 : 0);
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	struct nlattr *linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
	mnl_attr_put_strz(nlh, IFLA_INFO_KIND, kind);
	mnl_attr_nest_end(nlh, linkinfo);
	return msg_end(b, nlh);
}

int pb_tc_dump(int fd, int msg_type, int ifindex, unsigned int parent, uint8_t **out, size_t *out_len)
{
	/* tc dumps take a whole tcmsg (a filter dump needs the device and the parent). */
	struct tcmsg hdr = {.tcm_family = AF_UNSPEC, .tcm_ifindex = ifindex, .tcm_parent = parent};
	return dump_request(fd, msg_type, &hdr, sizeof(hdr), out, out_len);
}
