/* The stateful NAT64 translator: RFC 6146 bindings, RFC 7915 header translation.
 *
 * IPv6 clients reach IPv4 hosts through addresses of an RFC 6052 prefix (64:ff9b::/96 by
 * default; any of the lengths 32/40/48/56/64/96, with any IPv4 address embedded, lab ranges
 * such as 198.18.0.0/15 included). A v6 flow (protocol, source address, source port) gets a
 * binding to (pool address, v4 port) on its first packet, endpoint-independent: the same
 * binding for every remote, and any remote may answer it (endpoint-independent filtering).
 * ICMP echo identifiers stand in for ports.
 *
 * Each packet is parsed with explicit bounds, translated in place where it can be (the IPv4
 * header is written over the tail of the IPv6 one and the other way round: the buffer keeps
 * headroom for the 20 bytes IPv6 needs more), checksums are updated incrementally (RFC 1624)
 * or, for packets whose checksum the kernel left partial, rewritten as the new pseudo-header
 * sum. Every packet that is not translated is counted under one drop reason.
 *
 * TTL and hop limit. The translator sits behind a TUN in a router namespace; the kernel
 * forwards every packet into the TUN and every translated packet out of it, and each of
 * those forwards decrements the TTL / hop limit. By default the translator therefore does
 * not decrement (the kernel's forward out of the TUN is the translation's one decrement,
 * which RFC 7915 allows "before or after" translating); it checks that the packet would
 * survive that forward and answers Time Exceeded itself when not (hop limit <= 1). That
 * matters because its pool address is usually the router's own WAN address: an ICMPv4 error
 * the kernel sent about a translated packet would go to that local address and be lost.
 * decrement_ttl=1 makes the translator decrement as a separate hop (a translator whose pool
 * is routed to it, not local).
 *
 * Sizes. The translator knows both egress MTUs. IPv6 to IPv4: a translated packet larger than
 * mtu4 is answered with an ICMPv6 Packet Too Big (mtu4 + 20) when it would carry DF (RFC 7915
 * sets DF above 1260 bytes); smaller ones leave DF clear and the kernel fragments them. IPv4
 * to IPv6: larger than mtu6 with DF: ICMPv4 Fragmentation Needed (mtu6 - 20); without DF the
 * translated packet is sent as IPv6 fragments. Incoming fragments (IPv6 Fragment headers
 * other than atomic ones, IPv4 MF/offset) are not reassembled: they are counted drops
 * ("dropped.fragment"). Hosts that run path MTU discovery (Linux does for TCP and UDP) do not
 * send them.
 *
 * Offloads. Over the TUN, packets carry a virtio-net header. TCP (and UDP GSO) arrive as GSO
 * super-packets with a partial checksum; they are translated as one packet and written back
 * as one (the kernel segments them later, or never, if the receiver takes GRO packets).
 *
 * The thread. A TUN gives one packet per read and takes one per write, and each write runs
 * the kernel's whole forwarding path for that packet in the writer's context: that, and the
 * wake-up per handful of packets, is where a translator's CPU goes (TAYGA: read, writev and a
 * poll per packet). So: reads drain the TUN in rounds of up to 64 packets without polling in
 * between; consecutive translated UDP datagrams of one flow in a round leave as one UDP GSO
 * write (a "train", what TSO does for TCP; the kernel forwards it once and segments it only
 * where needed, for a socket without UDP GRO or a link without the offload); and after a
 * round that found a burst of small packets the thread waits 100 us before the next instead of
 * sleeping until the next packet (interrupt moderation; single packets and TCP never wait). The whole round runs
 * under the engine's lock, taken once. Counters: "udp.coalesced" datagrams sent in trains,
 * "tun.tx" writes.
 *
 * The TUN's fd holds a reference to the namespace it was made in: stop the thread before
 * expecting that namespace to disappear.
 */
#define _GNU_SOURCE
#include "nat64.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif
#ifndef VIRTIO_NET_HDR_GSO_UDP_L4
#define VIRTIO_NET_HDR_GSO_UDP_L4 5
#endif

#define VNET_LEN ((uint32_t)sizeof(struct virtio_net_hdr))
/* Before every packet buffer: room for the 20 bytes IPv6 needs more than IPv4 and for the
 * virtio-net header written in front of it. */
#define HEADROOM 64u
/* The largest packet a TUN with offloads hands over (a 64 KiB GSO packet and its headers). */
#define PKT_MAX 65600u
#define BUF_SIZE (HEADROOM + PKT_MAX + 64u)
#define READ_BATCH 64
/* Interrupt moderation: when a read round found a burst of small packets (at least
 * MODERATE_MIN, none of them a GSO super-packet), the next round waits MODERATE_US before
 * reading instead of sleeping in poll until the first packet. Under load one wake-up then
 * serves tens of packets (and UDP trains get longer): a context switch per handful of packets
 * was a quarter of the thread's time. A packet waits at most MODERATE_US more, and only right
 * after such a burst; single packets (a ping, request/response traffic) and TCP streams
 * (whose rounds carry GSO packets, and which gain nothing from waiting) never wait. */
#ifndef MODERATE_US
#define MODERATE_US 100
#endif
#define MODERATE_MIN 2
#define MAX_POOL 16
#define MAX_EXT_HEADERS 8
#define ICMP6_ERR_MAX 1280u /* RFC 4443: an ICMPv6 error fits the minimum MTU */
#define ICMP4_ERR_MAX 576u  /* RFC 1812 */

/* ---- reasons and counters ---------------------------------------------------------- */

enum reason {
	R_NONE,
	R_TRUNCATED,	   /* shorter than its headers or its length field says */
	R_BAD_VERSION,	   /* neither IPv4 nor IPv6 */
	R_BAD_LENGTH,	   /* length fields that contradict each other (or a jumbogram) */
	R_BAD_HEADER,	   /* IPv4 IHL < 5, TCP data offset < 5, ... */
	R_BAD_CHECKSUM,	   /* an IPv4 header, TCP, UDP or ICMP checksum that does not verify */
	R_EXT_HEADERS,	   /* an IPv6 extension header chain we do not walk (too long, misplaced
			      hop-by-hop, a routing header with segments left, ESP/AH) */
	R_FRAGMENT,	   /* a fragment: not reassembled */
	R_UNKNOWN_PROTOCOL,/* not TCP, UDP or ICMP: a stateful NAT64 has no port to map */
	R_NOT_PREFIX,	   /* IPv6 destination outside the NAT64 prefix */
	R_BAD_SRC,	   /* source address that must not be translated (multicast, loopback, ...) */
	R_BAD_DST,	   /* IPv4 destination that must not be reached (0/8, 127/8, multicast,
			      broadcast, our own pool) */
	R_NOT_POOL,	   /* IPv4 destination not one of our pool addresses */
	R_HOP_LIMIT,	   /* TTL / hop limit exhausted: Time Exceeded was sent */
	R_TOO_BIG,	   /* larger than the egress MTU with DF: Packet Too Big / Frag Needed sent */
	R_NO_BINDING,	   /* IPv4 packet (or ICMP error) for no live binding */
	R_TCP_NOT_SYN,	   /* IPv6 TCP segment that is not a SYN and has no binding */
	R_TABLE_FULL,	   /* a new flow while the binding table is at its bound */
	R_PORTS_EXHAUSTED, /* a new flow while every pool port of its protocol is taken */
	R_ICMP_TYPE,	   /* an ICMP type or code RFC 7915 does not translate (ND, MLD, ...) */
	R_ICMP_INNER,	   /* an ICMP error whose quoted packet cannot be translated */
	R_GSO,		   /* a virtio-net header we cannot honour (unknown GSO type, bad offsets) */
	R_NO_SPACE,	   /* the caller's output buffer was too small (direct calls only) */
	R_COUNT
};

static const char *const reason_names[R_COUNT] = {
	"none",	       "truncated",    "bad_version",	   "bad_length",   "bad_header",
	"bad_checksum", "ext_headers",  "fragment",	   "unknown_protocol", "not_prefix",
	"bad_src",     "bad_dst",      "not_pool",	   "hop_limit",	   "too_big",
	"no_binding",  "tcp_not_syn",  "table_full",	   "ports_exhausted", "icmp_type",
	"icmp_inner",  "gso",	       "no_space",
};

enum counter {
	C_V6_TO_V4,
	C_V4_TO_V6,
	C_ICMP_ERRORS_TRANSLATED,
	C_GSO,
	C_FRAGMENTS_SENT,
	C_ICMP_SENT,
	C_BINDINGS,
	C_BINDINGS_MAX,
	C_BINDINGS_CREATED,
	C_BINDINGS_EXPIRED,
	C_TUN_RX,
	C_TUN_TX,
	C_TUN_WRITE_ERRORS,
	C_COALESCED,
	C_DROPPED, /* C_DROPPED + reason, for reasons 1.. */
	C_COUNT = C_DROPPED + R_COUNT - 1
};

static const char *const counter_names[C_DROPPED] = {
	"translated.v6_to_v4", "translated.v4_to_v6", "translated.icmp_errors", "translated.gso",
	"fragments.sent",      "icmp_errors.sent",    "bindings",		"bindings.max",
	"bindings.created",    "bindings.expired",    "tun.rx",			"tun.tx",
	"tun.write_errors",    "udp.coalesced",
};

static const char *const dropped_names[R_COUNT] = {
	"dropped.none",	       "dropped.truncated",	 "dropped.bad_version",
	"dropped.bad_length",  "dropped.bad_header",	 "dropped.bad_checksum",
	"dropped.ext_headers", "dropped.fragment",	 "dropped.unknown_protocol",
	"dropped.not_prefix",  "dropped.bad_src",	 "dropped.bad_dst",
	"dropped.not_pool",    "dropped.hop_limit",	 "dropped.too_big",
	"dropped.no_binding",  "dropped.tcp_not_syn",	 "dropped.table_full",
	"dropped.ports_exhausted", "dropped.icmp_type", "dropped.icmp_inner",
	"dropped.gso",	       "dropped.no_space",
};

int pb_nat64_reason_count(void) { return R_COUNT; }

const char *pb_nat64_reason_name(int reason)
{
	return reason >= 0 && reason < R_COUNT ? reason_names[reason] : "unknown";
}

int pb_nat64_counter_count(void) { return C_COUNT; }

const char *pb_nat64_counter_name(int index)
{
	if (index >= 0 && index < C_DROPPED)
		return counter_names[index];
	if (index >= C_DROPPED && index < C_COUNT)
		return dropped_names[index - C_DROPPED + 1];
	return "unknown";
}

/* ---- the engine ---------------------------------------------------------------------- */

enum { TCP_OPENING, TCP_ESTABLISHED, TCP_CLOSING };

struct binding {
	uint8_t addr6[16];
	uint32_t addr4;	  /* pool address, network order */
	uint32_t remote4; /* last remote, network order */
	uint16_t port6, port4, rport;
	uint8_t proto, in_use;
	uint8_t tcp_state, syn, fin, rst; /* syn/fin: bit 0 seen from v6, bit 1 from v4 */
	uint32_t next6, next4;		  /* hash chains: index + 1, 0 ends */
	uint64_t expires_ms;
};

/* Consecutive translated UDP datagrams of one flow, one size (the last may be shorter), held
 * to go out as one UDP GSO packet (VIRTIO_NET_HDR_GSO_UDP_L4): the kernel then forwards one
 * packet for the lot, and segments it only where it must (a socket without UDP GRO, a link
 * without the offload). The same thing a TCP stream gets from TSO. */
#define TRAIN_MAX 64 /* below the kernel's UDP_MAX_SEGMENTS */
struct train {
	uint8_t *buf;	/* HEADROOM, then the first datagram's headers and every payload */
	uint32_t len;	/* bytes from buf + HEADROOM */
	uint32_t hdr;	/* IP header length: 20 or 40 */
	uint32_t seg;	/* payload bytes of each datagram */
	uint32_t count;
	int closed;	/* a shorter datagram ended it */
	struct virtio_net_hdr vh0; /* the first datagram's, for a train of one */
};

struct pb_nat64 {
	struct pb_nat64_config cfg;
	uint32_t pool[MAX_POOL]; /* network order */
	uint8_t self6[16];
	pthread_mutex_t lock;
	uint64_t counters[C_COUNT];
	uint64_t seed;
	uint16_t ip_id;
	uint32_t frag_id;
	uint32_t port_cursor[3];

	struct binding *b;
	uint32_t cap, used;
	uint32_t free_head; /* index + 1 through next6 */
	uint32_t *h6, *h4, hmask;
	uint32_t sweep_pos;

	/* Buffers: one for direct calls, one scratch for packets the translator builds itself
	 * (ICMP errors, fragments, the second half of a split GSO packet). */
	uint8_t *api_buf, *scratch;

	/* The thread. */
	int tun_fd, wake_fd, running;
	pthread_t thread;
	atomic_int stop;
	atomic_int tid;
	uint8_t *slots; /* READ_BATCH buffers of BUF_SIZE */
	int uso;	/* the kernel takes UDP GSO packets from a TUN (6.2+) */
	struct train train;
};

/* A packet being translated: data has at least HEADROOM bytes before it. */
struct pkt {
	uint8_t *data;
	uint32_t len;
	struct virtio_net_hdr vh; /* all zero when the packet came without one */
};

/* Where translated packets go: the TUN, or the caller's buffer. */
struct sink {
	struct pb_nat64 *e;
	int to_tun;
	uint8_t *out;
	size_t cap, used;
	int vnet, overflow;
	struct train *train; /* NULL: no coalescing */
};

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static uint32_t rd32n(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* ---- checksums: one's complement sums in native byte order (RFC 1071) --------------- */

static uint64_t sum_bytes(uint64_t s, const uint8_t *p, size_t n)
{
	while (n >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		s += (v & 0xffffffffu) + (v >> 32);
		p += 8;
		n -= 8;
	}
	while (n >= 2) {
		uint16_t v;
		memcpy(&v, p, 2);
		s += v;
		p += 2;
		n -= 2;
	}
	if (n) {
		uint16_t v = 0;
		memcpy(&v, p, 1); /* an odd byte is padded with a zero after it */
		s += v;
	}
	return s;
}

static uint16_t fold(uint64_t s)
{
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)s;
}

static uint16_t get_csum(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static void put_csum(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), m and m' the sums of what changed. */
static uint16_t csum_update(uint16_t check, uint64_t old_sum, uint64_t new_sum)
{
	uint64_t s = (uint16_t)~check;
	s += (uint16_t)~fold(old_sum);
	s += fold(new_sum);
	return (uint16_t)~fold(s);
}

static uint64_t pseudo6(const uint8_t *src, const uint8_t *dst, uint32_t len, uint8_t proto)
{
	uint64_t s = sum_bytes(0, src, 16);
	s = sum_bytes(s, dst, 16);
	uint8_t t[8] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len, 0, 0, 0, proto};
	return sum_bytes(s, t, 8);
}

static uint64_t pseudo4(uint32_t src, uint32_t dst, uint32_t len, uint8_t proto)
{
	uint8_t t[12];
	memcpy(t, &src, 4);
	memcpy(t + 4, &dst, 4);
	t[8] = 0;
	t[9] = proto;
	wr16(t + 10, (uint16_t)len);
	return sum_bytes(0, t, 12);
}

static void ip4_header_csum(uint8_t *h)
{
	put_csum(h + 10, 0);
	put_csum(h + 10, (uint16_t)~fold(sum_bytes(0, h, (size_t)(h[0] & 15u) * 4u)));
}

/* ---- addresses --------------------------------------------------------------------------- */

/* RFC 6052 section 2.2: where the 4 bytes go for each prefix length (bits 64..71, byte 8,
 * stay zero). */
static const uint8_t embed_pos[6][4] = {
	{4, 5, 6, 7}, {5, 6, 7, 9}, {6, 7, 9, 10}, {7, 9, 10, 11}, {9, 10, 11, 12}, {12, 13, 14, 15},
};

static int prefix_slot(uint32_t len)
{
	switch (len) {
	case 32: return 0;
	case 40: return 1;
	case 48: return 2;
	case 56: return 3;
	case 64: return 4;
	case 96: return 5;
	}
	return -1;
}

static void embed(const struct pb_nat64 *e, uint32_t v4, uint8_t *out)
{
	const uint8_t *pos = embed_pos[prefix_slot(e->cfg.prefix_len)];
	uint8_t a[4];
	memcpy(a, &v4, 4);
	memset(out, 0, 16);
	memcpy(out, e->cfg.prefix, e->cfg.prefix_len / 8);
	for (int i = 0; i < 4; i++)
		out[pos[i]] = a[i];
}

static int in_prefix(const struct pb_nat64 *e, const uint8_t *a)
{
	return memcmp(a, e->cfg.prefix, e->cfg.prefix_len / 8) == 0;
}

static uint32_t extract(const struct pb_nat64 *e, const uint8_t *a)
{
	const uint8_t *pos = embed_pos[prefix_slot(e->cfg.prefix_len)];
	uint8_t v[4] = {a[pos[0]], a[pos[1]], a[pos[2]], a[pos[3]]};
	return rd32n(v);
}

static int pool_index(const struct pb_nat64 *e, uint32_t a)
{
	for (uint32_t i = 0; i < e->cfg.pool4_count; i++)
		if (e->pool[i] == a)
			return (int)i;
	return -1;
}

/* IPv4 addresses no translated packet may come from or go to. */
static int bad_v4(uint32_t a)
{
	uint8_t b[4];
	memcpy(b, &a, 4);
	return b[0] == 0 || b[0] == 127 || b[0] >= 224;
}

static int bad_v6_src(const uint8_t *a)
{
	static const uint8_t zero[16];
	if (a[0] == 0xff) /* multicast */
		return 1;
	if (memcmp(a, zero, 15) == 0 && (a[15] == 0 || a[15] == 1)) /* :: and ::1 */
		return 1;
	return 0;
}

/* ---- the binding table -------------------------------------------------------------------- */

static uint32_t hash6(const struct pb_nat64 *e, uint8_t proto, const uint8_t *a, uint16_t port)
{
	uint64_t x, y;
	memcpy(&x, a, 8);
	memcpy(&y, a + 8, 8);
	return (uint32_t)mix(e->seed ^ x ^ mix(y ^ ((uint64_t)port << 8 | proto))) & e->hmask;
}

static uint32_t hash4(const struct pb_nat64 *e, uint8_t proto, uint32_t a, uint16_t port)
{
	return (uint32_t)mix(e->seed ^ ((uint64_t)a << 24 | (uint64_t)port << 8 | proto)) & e->hmask;
}

static void unlink_binding(struct pb_nat64 *e, uint32_t idx)
{
	struct binding *b = &e->b[idx];
	uint32_t *pp = &e->h6[hash6(e, b->proto, b->addr6, b->port6)];
	while (*pp && *pp != idx + 1)
		pp = &e->b[*pp - 1].next6;
	if (*pp)
		*pp = b->next6;
	pp = &e->h4[hash4(e, b->proto, b->addr4, b->port4)];
	while (*pp && *pp != idx + 1)
		pp = &e->b[*pp - 1].next4;
	if (*pp)
		*pp = b->next4;
	b->in_use = 0;
	b->next6 = e->free_head;
	e->free_head = idx + 1;
	e->used--;
	e->counters[C_BINDINGS] = e->used;
}

static void expire_binding(struct pb_nat64 *e, uint32_t idx)
{
	unlink_binding(e, idx);
	e->counters[C_BINDINGS_EXPIRED]++;
}

/* A live binding for a v6 flow; an expired one met on the way is removed. */
static struct binding *lookup6(struct pb_nat64 *e, uint8_t proto, const uint8_t *a, uint16_t port, uint64_t now)
{
	uint32_t i = e->h6[hash6(e, proto, a, port)];
	while (i) {
		struct binding *b = &e->b[i - 1];
		uint32_t next = b->next6;
		if (b->proto == proto && b->port6 == port && memcmp(b->addr6, a, 16) == 0) {
			if (b->expires_ms > now)
				return b;
			expire_binding(e, i - 1);
		}
		i = next;
	}
	return NULL;
}

static struct binding *lookup4(struct pb_nat64 *e, uint8_t proto, uint32_t a, uint16_t port, uint64_t now)
{
	uint32_t i = e->h4[hash4(e, proto, a, port)];
	while (i) {
		struct binding *b = &e->b[i - 1];
		uint32_t next = b->next4;
		if (b->proto == proto && b->port4 == port && b->addr4 == a) {
			if (b->expires_ms > now)
				return b;
			expire_binding(e, i - 1);
		}
		i = next;
	}
	return NULL;
}

static int sweep(struct pb_nat64 *e, uint64_t now, uint32_t count)
{
	int n = 0;
	if (!e->used)
		return 0;
	for (uint32_t k = 0; k < count && k < e->cap; k++) {
		uint32_t i = e->sweep_pos++;
		if (e->sweep_pos >= e->cap)
			e->sweep_pos = 0;
		if (e->b[i].in_use && e->b[i].expires_ms <= now) {
			expire_binding(e, i);
			n++;
		}
	}
	return n;
}

static uint64_t proto_timeout_ms(const struct pb_nat64 *e, uint8_t proto, uint8_t tcp_state)
{
	uint32_t s = proto == 17 ? e->cfg.udp_timeout_s
		   : proto == 1	 ? e->cfg.icmp_timeout_s
		   : tcp_state == TCP_ESTABLISHED ? e->cfg.tcp_est_timeout_s
						  : e->cfg.tcp_trans_timeout_s;
	return (uint64_t)s * 1000u;
}

static int proto_slot(uint8_t proto) { return proto == 17 ? 0 : proto == 6 ? 1 : 2; }

/* A new binding for (proto, a, port): the v6 source port where it is free on one of the pool
 * addresses (port preservation), else the next free port of the protocol's range. The first
 * pool address tried is a hash of the v6 address, so one client keeps one v4 address
 * ("paired" pooling, RFC 6146 section 3.5.1.1). */
static struct binding *create_binding(struct pb_nat64 *e, uint8_t proto, const uint8_t *a, uint16_t port,
				      uint64_t now, int *reason)
{
	if (e->used >= e->cap) {
		sweep(e, now, e->cap); /* full: reclaim what has expired before refusing */
		if (e->used >= e->cap) {
			*reason = R_TABLE_FULL;
			return NULL;
		}
	}
	uint16_t lo = proto == 17 ? e->cfg.udp_min : proto == 6 ? e->cfg.tcp_min : e->cfg.icmp_min;
	uint16_t hi = proto == 17 ? e->cfg.udp_max : proto == 6 ? e->cfg.tcp_max : e->cfg.icmp_max;
	uint32_t n = (uint32_t)hi - lo + 1u, pools = e->cfg.pool4_count;
	uint32_t first = (uint32_t)(mix(e->seed ^ rd32n(a + 12) ^ rd32n(a + 8)) % pools);
	uint32_t addr4 = 0;
	uint16_t port4 = 0;
	int found = 0;
	if (port >= lo && port <= hi) {
		for (uint32_t k = 0; k < pools && !found; k++) {
			uint32_t cand = e->pool[(first + k) % pools];
			if (!lookup4(e, proto, cand, port, now)) {
				addr4 = cand;
				port4 = port;
				found = 1;
			}
		}
	}
	uint32_t *cursor = &e->port_cursor[proto_slot(proto)];
	for (uint32_t k = 0; k < n * pools && !found; k++) {
		uint32_t off = (*cursor)++ % n;
		uint32_t cand = e->pool[(first + k / n) % pools];
		if (!lookup4(e, proto, cand, (uint16_t)(lo + off), now)) {
			addr4 = cand;
			port4 = (uint16_t)(lo + off);
			found = 1;
		}
	}
	if (!found) {
		*reason = R_PORTS_EXHAUSTED;
		return NULL;
	}
	uint32_t idx = e->free_head - 1;
	struct binding *b = &e->b[idx];
	e->free_head = b->next6;
	memset(b, 0, sizeof(*b));
	memcpy(b->addr6, a, 16);
	b->port6 = port;
	b->addr4 = addr4;
	b->port4 = port4;
	b->proto = proto;
	b->in_use = 1;
	uint32_t h = hash6(e, proto, a, port);
	b->next6 = e->h6[h];
	e->h6[h] = idx + 1;
	h = hash4(e, proto, addr4, port4);
	b->next4 = e->h4[h];
	e->h4[h] = idx + 1;
	e->used++;
	e->counters[C_BINDINGS] = e->used;
	e->counters[C_BINDINGS_CREATED]++;
	return b;
}

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04

/* RFC 6146 section 3.5.2, condensed: a binding is opening until both sides sent a SYN,
 * established until both sent a FIN or one an RST, then closing (TCP_TRANS, not refreshed).
 * Traffic other than an RST after an RST re-establishes it; a new SYN on a closed binding
 * reopens it (the client reuses its port). */
static void tcp_track(struct pb_nat64 *e, struct binding *b, uint8_t flags, int from_v6, uint64_t now)
{
	uint8_t side = from_v6 ? 1 : 2;
	if (flags & TH_RST) {
		if (b->tcp_state != TCP_CLOSING) {
			b->tcp_state = TCP_CLOSING;
			b->expires_ms = now + (uint64_t)e->cfg.tcp_trans_timeout_s * 1000u;
		}
		b->rst = 1;
		return;
	}
	if ((flags & TH_SYN) && b->tcp_state == TCP_CLOSING) {
		b->tcp_state = TCP_OPENING; /* a new connection on the same binding */
		b->syn = b->fin = b->rst = 0;
	} else if (b->rst) {
		b->rst = 0;
		b->tcp_state = b->syn == 3 ? TCP_ESTABLISHED : TCP_OPENING;
	}
	if (flags & TH_SYN)
		b->syn |= side;
	if (flags & TH_FIN)
		b->fin |= side;
	if (b->tcp_state == TCP_CLOSING)
		return;
	if (b->fin == 3) {
		b->tcp_state = TCP_CLOSING;
		b->expires_ms = now + (uint64_t)e->cfg.tcp_trans_timeout_s * 1000u;
		return;
	}
	if (b->tcp_state == TCP_OPENING && b->syn == 3)
		b->tcp_state = TCP_ESTABLISHED;
	b->expires_ms = now + proto_timeout_ms(e, 6, b->tcp_state);
}

static void refresh(struct pb_nat64 *e, struct binding *b, uint64_t now)
{
	b->expires_ms = now + proto_timeout_ms(e, b->proto, b->tcp_state);
}

/* ---- output ------------------------------------------------------------------------------ */

static void put_out(struct sink *s, uint8_t *data, uint32_t len, const struct virtio_net_hdr *vh)
{
	if (s->to_tun) {
		/* Every buffer has headroom: the header goes right in front of the packet. */
		memcpy(data - VNET_LEN, vh, VNET_LEN);
		for (;;) {
			ssize_t n = write(s->e->tun_fd, data - VNET_LEN, len + VNET_LEN);
			if (n >= 0) {
				s->e->counters[C_TUN_TX]++;
				return;
			}
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				/* The kernel takes what we write at once; EAGAIN is a full socket queue
				 * somewhere behind it. Wait a moment rather than lose the packet. */
				struct pollfd p = {.fd = s->e->tun_fd, .events = POLLOUT};
				if (poll(&p, 1, 10) > 0)
					continue;
			}
			s->e->counters[C_TUN_WRITE_ERRORS]++;
			return;
		}
	}
	size_t need = len + (s->vnet ? VNET_LEN : 0);
	if (s->used + need > s->cap) {
		s->overflow = 1;
		return;
	}
	if (s->vnet) {
		memcpy(s->out + s->used, vh, VNET_LEN);
		s->used += VNET_LEN;
	}
	memcpy(s->out + s->used, data, len);
	s->used += len;
}

static void train_flush(struct sink *s)
{
	struct train *t = s->train;
	if (!t || !t->count)
		return;
	uint8_t *d = t->buf + HEADROOM;
	if (t->count == 1) { /* alone: as it was */
		t->count = 0;
		put_out(s, d, t->len, &t->vh0);
		return;
	}
	uint32_t l4len = t->len - t->hdr;
	struct virtio_net_hdr vh = {.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM, .csum_start = (uint16_t)t->hdr, .csum_offset = 6};
	uint8_t *u = d + t->hdr;
	wr16(u + 4, (uint16_t)l4len);
	if (t->hdr == 20) {
		wr16(d + 2, (uint16_t)t->len);
		ip4_header_csum(d);
		put_csum(u + 6, fold(pseudo4(rd32n(d + 12), rd32n(d + 16), l4len, 17)));
	} else {
		wr16(d + 4, (uint16_t)l4len);
		put_csum(u + 6, fold(pseudo6(d + 8, d + 24, l4len, 17)));
	}
	vh.gso_type = VIRTIO_NET_HDR_GSO_UDP_L4;
	vh.gso_size = (uint16_t)t->seg;
	vh.hdr_len = (uint16_t)(t->hdr + 8);
	s->e->counters[C_COALESCED] += t->count;
	t->count = 0;
	put_out(s, d, t->len, &vh);
}

/* Can (data, len), a translated packet, join the train, or start one? */
static int train_fits(const struct train *t, const uint8_t *d, uint32_t len)
{
	uint32_t hdr = (d[0] >> 4) == 6 ? 40u : 20u;
	if (hdr != t->hdr || len <= hdr + 8 || len - hdr - 8 > t->seg || t->closed || t->count >= TRAIN_MAX ||
	    t->len + (len - hdr - 8) > 65000)
		return 0;
	const uint8_t *f = t->buf + HEADROOM;
	if (hdr == 20) /* all but the length, ID and checksum */
		return memcmp(d, f, 2) == 0 && memcmp(d + 6, f + 6, 4) == 0 && memcmp(d + 12, f + 12, 12) == 0;
	return memcmp(d, f, 4) == 0 && memcmp(d + 6, f + 6, 38) == 0;
}

/* Every packet the translator sends goes through here. */
static void emit_pkt(struct sink *s, uint8_t *data, uint32_t len, const struct virtio_net_hdr *vh, int udp)
{
	static const struct virtio_net_hdr none;
	if (!vh)
		vh = &none;
	struct train *t = s->train;
	if (!t || !udp || vh->gso_type != VIRTIO_NET_HDR_GSO_NONE) {
		train_flush(s); /* keep the order */
		put_out(s, data, len, vh);
		return;
	}
	if (t->count && train_fits(t, data, len)) {
		uint32_t hdr = t->hdr, n = len - hdr - 8;
		memcpy(t->buf + HEADROOM + t->len, data + hdr + 8, n);
		t->len += n;
		t->count++;
		t->closed = n < t->seg;
		return;
	}
	train_flush(s);
	uint32_t hdr = (data[0] >> 4) == 6 ? 40u : 20u;
	if (len <= hdr + 8) {
		put_out(s, data, len, vh);
		return;
	}
	memcpy(t->buf + HEADROOM, data, len);
	t->len = len;
	t->hdr = hdr;
	t->seg = len - hdr - 8;
	t->count = 1;
	t->closed = 0;
	t->vh0 = *vh;
}

static void emit(struct sink *s, uint8_t *data, uint32_t len, const struct virtio_net_hdr *vh)
{
	emit_pkt(s, data, len, vh, 0);
}

/* ICMP errors the translator answers with itself. `orig` is the packet that caused it. */
static void send_icmp6_error(struct pb_nat64 *e, struct sink *s, uint8_t type, uint8_t code, uint32_t param,
			     const uint8_t *orig, uint32_t origlen)
{
	uint8_t *p = e->scratch + HEADROOM;
	uint32_t quote = origlen < ICMP6_ERR_MAX - 48 ? origlen : ICMP6_ERR_MAX - 48;
	uint32_t plen = 8 + quote;
	memset(p, 0, 48);
	p[0] = 0x60;
	wr16(p + 4, (uint16_t)plen);
	p[6] = 58;
	p[7] = 64;
	memcpy(p + 8, e->self6, 16);
	memcpy(p + 24, orig + 8, 16); /* back to the sender */
	p[40] = type;
	p[41] = code;
	p[44] = (uint8_t)(param >> 24);
	p[45] = (uint8_t)(param >> 16);
	p[46] = (uint8_t)(param >> 8);
	p[47] = (uint8_t)param;
	memcpy(p + 48, orig, quote);
	uint64_t sum = pseudo6(p + 8, p + 24, plen, 58);
	put_csum(p + 42, (uint16_t)~fold(sum_bytes(sum, p + 40, plen)));
	e->counters[C_ICMP_SENT]++;
	emit(s, p, 40 + plen, NULL);
}

static void send_icmp4_error(struct pb_nat64 *e, struct sink *s, uint8_t type, uint8_t code, uint32_t param,
			     const uint8_t *orig, uint32_t origlen)
{
	uint8_t *p = e->scratch + HEADROOM;
	uint32_t quote = origlen < ICMP4_ERR_MAX - 28 ? origlen : ICMP4_ERR_MAX - 28;
	uint32_t tot = 28 + quote;
	memset(p, 0, 28);
	p[0] = 0x45;
	wr16(p + 2, (uint16_t)tot);
	wr16(p + 4, e->ip_id++);
	p[8] = 64;
	p[9] = 1;
	memcpy(p + 12, orig + 16, 4); /* from the pool address it was sent to */
	memcpy(p + 16, orig + 12, 4);
	ip4_header_csum(p);
	p[20] = type;
	p[21] = code;
	p[24] = (uint8_t)(param >> 24);
	p[25] = (uint8_t)(param >> 16);
	p[26] = (uint8_t)(param >> 8);
	p[27] = (uint8_t)param;
	memcpy(p + 28, orig, quote);
	put_csum(p + 22, (uint16_t)~fold(sum_bytes(0, p + 20, 8 + quote)));
	e->counters[C_ICMP_SENT]++;
	emit(s, p, tot, NULL);
}

/* ---- IPv6 extension headers --------------------------------------------------------------- */

/* Walks the chain from `off` (the byte after the fixed header) to the upper-layer header.
 * Returns its protocol and sets *l4; an atomic fragment header (offset 0, no more fragments)
 * is skipped as RFC 8021 asks. Bounded by MAX_EXT_HEADERS and by `len`: every header moves
 * the offset forward by at least 8 bytes, so the walk ends. */
static int walk_ext(const uint8_t *d, uint32_t len, uint8_t nh, uint32_t *l4, int *reason, int quoted)
{
	uint32_t off = 40;
	for (int count = 0;; count++) {
		if (nh != 0 && nh != 43 && nh != 60 && nh != 44)
			break;
		if (count >= MAX_EXT_HEADERS || (nh == 0 && count != 0)) {
			*reason = R_EXT_HEADERS;
			return -1;
		}
		if (off + 8 > len) {
			*reason = R_TRUNCATED;
			return -1;
		}
		uint32_t hlen;
		if (nh == 44) {
			uint16_t fo = rd16(d + off + 2);
			if ((fo & 0xfff9) != 0 && !(quoted && (fo & 0xfff8) == 0)) {
				/* a real fragment (a quoted first fragment still has its ports) */
				*reason = R_FRAGMENT;
				return -1;
			}
			hlen = 8;
		} else {
			hlen = ((uint32_t)d[off + 1] + 1u) * 8u;
			if (nh == 43 && d[off + 3] != 0) { /* segments left: not ours to route */
				*reason = R_EXT_HEADERS;
				return -1;
			}
		}
		nh = d[off];
		off += hlen;
		if (off > len) {
			*reason = R_TRUNCATED;
			return -1;
		}
	}
	*l4 = off;
	return nh;
}

/* Complete a partial checksum in software (for packets we slice or whose checksum we rebuild). */
static int complete_csum(struct pkt *p)
{
	if (!(p->vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM))
		return 0;
	uint32_t start = p->vh.csum_start, off = p->vh.csum_offset;
	if (start >= p->len || start + off + 2 > p->len)
		return -1;
	put_csum(p->data + start + off, (uint16_t)~fold(sum_bytes(0, p->data + start, p->len - start)));
	p->vh.flags &= (uint8_t)~VIRTIO_NET_HDR_F_NEEDS_CSUM;
	return 0;
}

/* What a TUN's virtio-net header may say, checked against the parsed packet. */
static int check_vnet(struct pkt *p, int v6, uint8_t proto, uint32_t l4, uint32_t l4len, int *reason)
{
	uint8_t g = p->vh.gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;
	if (p->vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
		uint32_t want = proto == 6 ? 16u : proto == 17 ? 6u : 2u;
		if (p->vh.csum_start != l4 || p->vh.csum_offset != want || (proto != 6 && proto != 17)) {
			/* unusual, but legal: finish it here and go on as with a full checksum */
			if (g != VIRTIO_NET_HDR_GSO_NONE || complete_csum(p)) {
				*reason = R_GSO;
				return -1;
			}
		}
	}
	if (g == VIRTIO_NET_HDR_GSO_NONE)
		return 0;
	int ok = (proto == 6 && g == (v6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4)) ||
		 (proto == 17 && g == VIRTIO_NET_HDR_GSO_UDP_L4);
	if (!ok || !p->vh.gso_size || !(p->vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) || l4len < 8) {
		*reason = R_GSO;
		return -1;
	}
	return 0;
}

static int csum_trusted(const struct pkt *p)
{
	return (p->vh.flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)) != 0;
}

/* The size of one wire packet of p: GSO packets are cut into segments of gso_size. */
static uint32_t wire_size(const struct pkt *p, uint32_t ip_hdr, uint32_t l4_hdr, uint32_t l4len)
{
	if ((p->vh.gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN) == VIRTIO_NET_HDR_GSO_NONE)
		return ip_hdr + l4len;
	uint32_t seg = l4_hdr + p->vh.gso_size;
	return ip_hdr + (seg < l4len ? seg : l4len);
}

/* ---- IPv4 output of a GSO packet over 64 KiB ---------------------------------------------- */

/* A v6 GSO packet may carry up to 65535 bytes of payload, 20 more than an IPv4 packet can
 * hold. Cut it in two GSO packets at a segment boundary; the first goes out at once. */
static void emit_v4_gso(struct pb_nat64 *e, struct sink *s, uint8_t *h, uint32_t tot, struct virtio_net_hdr *vh,
			uint32_t l4hdr)
{
	if (tot <= 65535) {
		emit(s, h, tot, vh);
		return;
	}
	uint32_t mss = vh->gso_size, payload = tot - 20 - l4hdr;
	uint32_t first = ((65535 - 20 - l4hdr) / mss) * mss;
	uint8_t proto = h[9];
	uint32_t src = rd32n(h + 12), dst = rd32n(h + 16);
	/* the second half, headers copied, into the scratch buffer */
	uint8_t *q = e->scratch + HEADROOM;
	uint32_t rest = payload - first;
	memcpy(q, h, 20 + l4hdr);
	memcpy(q + 20 + l4hdr, h + 20 + l4hdr + first, rest);
	/* the first half */
	wr16(h + 2, (uint16_t)(20 + l4hdr + first));
	ip4_header_csum(h);
	if (proto == 6) {
		h[20 + 13] &= (uint8_t)~(TH_FIN | 0x08); /* FIN and PSH go with the last byte */
		put_csum(h + 20 + 16, fold(pseudo4(src, dst, l4hdr + first, 6)));
	} else {
		wr16(h + 20 + 4, (uint16_t)(8 + first));
		put_csum(h + 20 + 6, fold(pseudo4(src, dst, 8 + first, 17)));
	}
	emit(s, h, 20 + l4hdr + first, vh);
	wr16(q + 2, (uint16_t)(20 + l4hdr + rest));
	wr16(q + 4, (uint16_t)(rd16(q + 4) + first / mss));
	ip4_header_csum(q);
	if (proto == 6) {
		uint32_t seq = (uint32_t)q[24] << 24 | (uint32_t)q[25] << 16 | (uint32_t)q[26] << 8 | q[27];
		seq += first;
		q[24] = (uint8_t)(seq >> 24);
		q[25] = (uint8_t)(seq >> 16);
		q[26] = (uint8_t)(seq >> 8);
		q[27] = (uint8_t)seq;
		q[20 + 13] &= (uint8_t)~0x80; /* CWR only on the first */
		put_csum(q + 20 + 16, fold(pseudo4(src, dst, l4hdr + rest, 6)));
	} else {
		wr16(q + 20 + 4, (uint16_t)(8 + rest));
		put_csum(q + 20 + 6, fold(pseudo4(src, dst, 8 + rest, 17)));
	}
	struct virtio_net_hdr v2 = *vh;
	if (rest <= mss)
		v2.gso_type = VIRTIO_NET_HDR_GSO_NONE, v2.gso_size = 0;
	emit(s, q, 20 + l4hdr + rest, &v2);
}

/* ---- ICMP error translation ---------------------------------------------------------------- */

/* RFC 7915 figure 6 (ICMPv6 parameter problem pointer -> ICMPv4), -1: untranslatable. */
static int pointer6to4(uint32_t p)
{
	if (p == 0 || p == 1)
		return (int)p;
	if (p == 4 || p == 5)
		return 2;
	if (p == 6)
		return 9;
	if (p == 7)
		return 8;
	if (p >= 8 && p <= 23)
		return 12;
	if (p >= 24 && p <= 39)
		return 16;
	return -1;
}

/* RFC 7915 figure 3 (ICMPv4 parameter problem pointer -> ICMPv6). */
static int pointer4to6(uint32_t p)
{
	if (p == 0 || p == 1)
		return (int)p;
	if (p == 2 || p == 3)
		return 4;
	if (p == 8)
		return 7;
	if (p == 9)
		return 6;
	if (p >= 12 && p <= 15)
		return 8;
	if (p >= 16 && p <= 19)
		return 24;
	return -1;
}

/* An ICMPv6 error (its v6 header at d, ICMPv6 at d + l4, l4len bytes) about a packet we sent
 * to a v6 client, into the ICMPv4 error the v4 remote understands. Built in scratch. */
static int xlate_icmp6_error(struct pb_nat64 *e, struct sink *s, const uint8_t *d, uint32_t l4, uint32_t l4len,
			     uint64_t now, int *reason)
{
	const uint8_t *icmp = d + l4;
	uint8_t type = icmp[0], code = icmp[1], t4, c4;
	uint32_t param = 0; /* bytes 4..7 of the ICMPv4 header */
	uint32_t v = (uint32_t)icmp[4] << 24 | (uint32_t)icmp[5] << 16 | (uint32_t)icmp[6] << 8 | icmp[7];
	switch (type) {
	case 1: /* destination unreachable */
		t4 = 3;
		if (code == 0 || code == 2 || code == 3)
			c4 = 1;
		else if (code == 1)
			c4 = 10;
		else if (code == 4)
			c4 = 3;
		else
			goto untranslatable;
		break;
	case 2: { /* packet too big -> fragmentation needed */
		t4 = 3;
		c4 = 4;
		uint32_t mtu = v >= 20 ? v - 20 : 0;
		if (mtu > e->cfg.mtu4)
			mtu = e->cfg.mtu4;
		if (mtu > e->cfg.mtu6 - 20)
			mtu = e->cfg.mtu6 - 20;
		if (mtu < 68)
			mtu = 68;
		param = mtu;
		break;
	}
	case 3:
		t4 = 11;
		c4 = code;
		if (code > 1)
			goto untranslatable;
		break;
	case 4:
		if (code == 0) {
			int ptr = pointer6to4(v);
			if (ptr < 0)
				goto untranslatable;
			t4 = 12;
			c4 = 0;
			param = (uint32_t)ptr << 24;
		} else if (code == 1) {
			t4 = 3;
			c4 = 2;
		} else {
			goto untranslatable;
		}
		break;
	default:
		goto untranslatable;
	}

	/* The quoted packet: the one we translated v4 -> v6, from embed(remote) to the client. */
	const uint8_t *in = icmp + 8;
	uint32_t inlen = l4len - 8;
	if (inlen < 48 || (in[0] >> 4) != 6) {
		*reason = R_ICMP_INNER;
		return -1;
	}
	uint32_t il4;
	int iproto = walk_ext(in, inlen, in[6], &il4, reason, 1);
	if (iproto < 0 || il4 + 8 > inlen || !in_prefix(e, in + 8)) {
		*reason = R_ICMP_INNER;
		return -1;
	}
	uint8_t p4 = iproto == 58 ? 1 : (uint8_t)iproto;
	if (iproto != 6 && iproto != 17 && iproto != 58) {
		*reason = R_ICMP_INNER;
		return -1;
	}
	const uint8_t *il = in + il4;
	uint16_t iport;
	if (iproto == 58) {
		if (il[0] != 128 && il[0] != 129) { /* never an error about an error */
			*reason = R_ICMP_INNER;
			return -1;
		}
		iport = rd16(il + 4);
	} else {
		iport = rd16(il + 2); /* the client's port is the destination of the quoted packet */
	}
	struct binding *b = lookup6(e, p4, in + 24, iport, now);
	if (!b) {
		*reason = R_NO_BINDING;
		return -1;
	}
	uint32_t remote4 = extract(e, in + 8), outer_dst4 = extract(e, d + 24);
	uint32_t hlim = d[7];
	if (hlim <= 1) { /* no Time Exceeded about an error: just drop it */
		*reason = R_HOP_LIMIT;
		return -1;
	}

	/* outer IPv4 + ICMPv4 + inner IPv4 + the quoted transport bytes */
	uint32_t quote = inlen - il4;
	if (quote > ICMP4_ERR_MAX - 48)
		quote = ICMP4_ERR_MAX - 48;
	uint8_t *o = e->scratch + HEADROOM;
	uint32_t tot = 48 + quote;
	memset(o, 0, 48);
	o[0] = 0x45;
	o[1] = d[0] << 4 | d[1] >> 4;
	wr16(o + 2, (uint16_t)tot);
	wr16(o + 4, e->ip_id++);
	o[8] = (uint8_t)(e->cfg.decrement_ttl ? hlim - 1 : hlim);
	o[9] = 1;
	memcpy(o + 12, &b->addr4, 4);
	memcpy(o + 16, &outer_dst4, 4);
	ip4_header_csum(o);
	o[20] = t4;
	o[21] = c4;
	o[24] = (uint8_t)(param >> 24);
	o[25] = (uint8_t)(param >> 16);
	o[26] = (uint8_t)(param >> 8);
	o[27] = (uint8_t)param;
	uint8_t *ih = o + 28;
	uint32_t ipay = rd16(in + 4) >= il4 - 40 ? rd16(in + 4) - (il4 - 40) : 0;
	ih[0] = 0x45;
	ih[1] = in[0] << 4 | in[1] >> 4;
	wr16(ih + 2, (uint16_t)(20 + ipay));
	ih[8] = in[7];
	ih[9] = p4;
	memcpy(ih + 12, &remote4, 4);
	memcpy(ih + 16, &b->addr4, 4);
	ip4_header_csum(ih);
	uint8_t *it = ih + 20;
	memcpy(it, il, quote);
	/* the quoted transport header as the remote sent it: its destination was pool:port4 */
	uint8_t p4b[2];
	wr16(p4b, b->port4);
	if (iproto == 58) {
		it[0] = il[0] == 128 ? 8 : 0;
		uint8_t oldw[2] = {il[0], il[1]}, neww[2] = {it[0], it[1]};
		memcpy(it + 4, p4b, 2);
		uint64_t olds = sum_bytes(pseudo6(in + 8, in + 24, ipay, 58), oldw, 2);
		olds = sum_bytes(olds, il + 4, 2);
		uint64_t news = sum_bytes(sum_bytes(0, neww, 2), p4b, 2);
		put_csum(it + 2, csum_update(get_csum(il + 2), olds, news));
	} else {
		memcpy(it + 2, p4b, 2);
		uint32_t coff = iproto == 6 ? 16u : 6u;
		if (coff + 2 <= quote && !(iproto == 17 && get_csum(il + 6) == 0)) {
			uint64_t olds = sum_bytes(pseudo6(in + 8, in + 24, ipay, (uint8_t)iproto), il + 2, 2);
			uint64_t news = sum_bytes(pseudo4(remote4, b->addr4, ipay, p4), p4b, 2);
			put_csum(it + coff, csum_update(get_csum(il + coff), olds, news));
		}
	}
	put_csum(o + 22, (uint16_t)~fold(sum_bytes(0, o + 20, tot - 20)));
	e->counters[C_ICMP_ERRORS_TRANSLATED]++;
	e->counters[C_V6_TO_V4]++;
	emit(s, o, tot, NULL);
	return 0;
untranslatable:
	*reason = R_ICMP_TYPE;
	return -1;
}

/* RFC 1191 plateaus, for routers that report an MTU of zero. */
static uint32_t plateau_below(uint32_t len)
{
	static const uint32_t p[] = {65535, 32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68};
	for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
		if (p[i] < len)
			return p[i];
	return 68;
}

/* An ICMPv4 error (v4 header at d of ihl bytes, ICMP at d + l4) about a packet we translated
 * from a v6 client, into the ICMPv6 error for that client. */
static int xlate_icmp4_error(struct pb_nat64 *e, struct sink *s, const uint8_t *d, uint32_t l4, uint32_t l4len,
			     uint64_t now, int *reason)
{
	const uint8_t *icmp = d + l4;
	uint8_t type = icmp[0], code = icmp[1], t6, c6;
	uint32_t param = 0;
	int plateau = 0; /* an MTU of zero: estimate it from the quoted packet below */
	switch (type) {
	case 3:
		t6 = 1;
		switch (code) {
		case 0: case 1: case 5: case 6: case 7: case 8: case 11: case 12:
			c6 = 0;
			break;
		case 2:
			t6 = 4;
			c6 = 1;
			param = 6;
			break;
		case 3:
			c6 = 4;
			break;
		case 4: {
			t6 = 2;
			c6 = 0;
			param = rd16(icmp + 6);
			plateau = param == 0;
			break;
		}
		case 9: case 10: case 13: case 15:
			c6 = 1;
			break;
		default:
			goto untranslatable;
		}
		break;
	case 11:
		if (code > 1)
			goto untranslatable;
		t6 = 3;
		c6 = code;
		break;
	case 12: {
		if (code != 0 && code != 2)
			goto untranslatable;
		int ptr = pointer4to6(icmp[4]);
		if (ptr < 0)
			goto untranslatable;
		t6 = 4;
		c6 = 0;
		param = (uint32_t)ptr;
		break;
	}
	default:
		goto untranslatable;
	}

	/* The quoted packet: one we translated from a v6 client, from pool:port4 to the remote. */
	const uint8_t *in = icmp + 8;
	uint32_t inlen = l4len - 8;
	if (inlen < 28 || (in[0] >> 4) != 4 || (in[0] & 15u) < 5) {
		*reason = R_ICMP_INNER;
		return -1;
	}
	uint32_t ihl = (in[0] & 15u) * 4u;
	if (ihl + 8 > inlen || (rd16(in + 6) & 0x1fff) != 0) {
		*reason = R_ICMP_INNER;
		return -1;
	}
	uint32_t itot = rd16(in + 2);
	if (t6 == 2) {
		/* RFC 7915 4.2: min(mtu + 20, mtu6, mtu4 + 20), the RFC 1191 plateau below the quoted
		 * packet's length when a router reports 0; never below 1280, which hosts ignore
		 * (RFC 8201) and which v4 packets of up to 1260 bytes meet anyway (no DF). */
		uint32_t mtu = (plateau ? plateau_below(itot) : param) + 20;
		if (mtu > e->cfg.mtu6)
			mtu = e->cfg.mtu6;
		if (mtu > e->cfg.mtu4 + 20)
			mtu = e->cfg.mtu4 + 20;
		param = mtu < 1280 ? 1280 : mtu;
	}

	uint8_t iproto = in[9];
	const uint8_t *il = in + ihl;
	uint16_t iport;
	if (iproto == 1) {
		if (il[0] != 8 && il[0] != 0) {
			*reason = R_ICMP_INNER;
			return -1;
		}
		iport = rd16(il + 4);
	} else if (iproto == 6 || iproto == 17) {
		iport = rd16(il); /* our translated packet's source port */
	} else {
		*reason = R_ICMP_INNER;
		return -1;
	}
	uint32_t isrc = rd32n(in + 12), idst = rd32n(in + 16);
	struct binding *b = lookup4(e, iproto, isrc, iport, now);
	if (!b) {
		*reason = R_NO_BINDING;
		return -1;
	}
	if (d[8] <= 1) {
		*reason = R_HOP_LIMIT;
		return -1;
	}
	uint32_t quote = inlen - ihl;
	if (quote > ICMP6_ERR_MAX - 88)
		quote = ICMP6_ERR_MAX - 88;
	uint8_t *o = e->scratch + HEADROOM;
	uint32_t plen = 8 + 40 + quote;
	memset(o, 0, 88);
	o[0] = 0x60 | d[1] >> 4;
	o[1] = (uint8_t)(d[1] << 4);
	wr16(o + 4, (uint16_t)plen);
	o[6] = 58;
	o[7] = (uint8_t)(e->cfg.decrement_ttl ? d[8] - 1 : d[8]);
	embed(e, rd32n(d + 12), o + 8);
	memcpy(o + 24, b->addr6, 16);
	o[40] = t6;
	o[41] = c6;
	o[44] = (uint8_t)(param >> 24);
	o[45] = (uint8_t)(param >> 16);
	o[46] = (uint8_t)(param >> 8);
	o[47] = (uint8_t)param;
	uint8_t *ih = o + 48;
	uint32_t ipay = itot >= ihl ? itot - ihl : 0;
	ih[0] = 0x60 | in[1] >> 4;
	ih[1] = (uint8_t)(in[1] << 4);
	wr16(ih + 4, (uint16_t)ipay);
	ih[6] = iproto == 1 ? 58 : iproto;
	ih[7] = in[8];
	memcpy(ih + 8, b->addr6, 16);
	embed(e, idst, ih + 24);
	uint8_t *it = ih + 40;
	memcpy(it, il, quote);
	uint8_t p6b[2];
	wr16(p6b, b->port6);
	if (iproto == 1) {
		it[0] = il[0] == 8 ? 128 : 129;
		memcpy(it + 4, p6b, 2);
		uint8_t oldw[2] = {il[0], il[1]}, neww[2] = {it[0], it[1]};
		uint64_t olds = sum_bytes(sum_bytes(0, oldw, 2), il + 4, 2);
		uint64_t news = sum_bytes(sum_bytes(pseudo6(ih + 8, ih + 24, ipay, 58), neww, 2), p6b, 2);
		put_csum(it + 2, csum_update(get_csum(il + 2), olds, news));
	} else {
		memcpy(it, p6b, 2);
		uint32_t coff = iproto == 6 ? 16u : 6u;
		if (coff + 2 <= quote && !(iproto == 17 && get_csum(il + 6) == 0)) {
			uint64_t olds = sum_bytes(pseudo4(isrc, idst, ipay, iproto), il, 2);
			uint64_t news = sum_bytes(pseudo6(ih + 8, ih + 24, ipay, iproto), p6b, 2);
			put_csum(it + coff, csum_update(get_csum(il + coff), olds, news));
		}
	}
	uint64_t sum = pseudo6(o + 8, o + 24, plen, 58);
	put_csum(o + 42, (uint16_t)~fold(sum_bytes(sum, o + 40, plen)));
	e->counters[C_ICMP_ERRORS_TRANSLATED]++;
	e->counters[C_V4_TO_V6]++;
	emit(s, o, 40 + plen, NULL);
	return 0;
untranslatable:
	*reason = R_ICMP_TYPE;
	return -1;
}

/* The virtio header of a packet just translated, whose new IP header is iphdr bytes (20: IPv4,
 * 40: IPv6): a checksum left to finish starts past it, a super-packet's headers are that much
 * longer or shorter, and a TCP one is now of the new family. */
static inline void translated_vnet(struct pb_nat64 *e, struct virtio_net_hdr *vh, uint32_t iphdr, uint32_t l4hdr,
				   int partial, int gso)
{
	if (partial)
		vh->csum_start = (uint16_t)iphdr;
	if (!gso)
		return;
	uint8_t g = vh->gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;
	if (g == VIRTIO_NET_HDR_GSO_TCPV4 || g == VIRTIO_NET_HDR_GSO_TCPV6)
		vh->gso_type = (uint8_t)((iphdr == 20 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6) |
					 (vh->gso_type & VIRTIO_NET_HDR_GSO_ECN));
	vh->hdr_len = (uint16_t)(iphdr + l4hdr);
	e->counters[C_GSO]++;
}

/* ---- IPv6 -> IPv4 ---------------------------------------------------------------------- */

static int xlate6(struct pb_nat64 *e, struct pkt *p, uint64_t now, struct sink *s, int *reason)
{
	uint8_t *d = p->data;
	if (p->len < 40) {
		*reason = R_TRUNCATED;
		return -1;
	}
	uint32_t plen = rd16(d + 4);
	if (plen == 0) { /* a jumbogram, or nothing */
		*reason = R_BAD_LENGTH;
		return -1;
	}
	if (40 + plen > p->len) {
		*reason = R_TRUNCATED;
		return -1;
	}
	p->len = 40 + plen; /* anything past the payload length is padding */
	if (bad_v6_src(d + 8)) {
		*reason = R_BAD_SRC;
		return -1;
	}
	if (!in_prefix(e, d + 24)) {
		*reason = R_NOT_PREFIX;
		return -1;
	}
	uint32_t dst4 = extract(e, d + 24);
	if (bad_v4(dst4) || pool_index(e, dst4) >= 0) {
		*reason = R_BAD_DST;
		return -1;
	}
	uint32_t l4;
	int proto = walk_ext(d, p->len, d[6], &l4, reason, 0);
	if (proto < 0)
		return -1;
	if (proto != 6 && proto != 17 && proto != 58) {
		*reason = R_UNKNOWN_PROTOCOL;
		return -1;
	}
	uint32_t l4len = p->len - l4;
	uint8_t *t = d + l4;
	uint32_t l4hdr = proto == 6 ? 20u : 8u;
	if (l4len < l4hdr) {
		*reason = R_TRUNCATED;
		return -1;
	}
	if (proto == 6) {
		l4hdr = (uint32_t)(t[12] >> 4) * 4u;
		if (l4hdr < 20) {
			*reason = R_BAD_HEADER;
			return -1;
		}
		if (l4hdr > l4len) {
			*reason = R_TRUNCATED;
			return -1;
		}
	}
	if (check_vnet(p, 1, (uint8_t)proto, l4, l4len, reason))
		return -1;
	int gso = (p->vh.gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN) != VIRTIO_NET_HDR_GSO_NONE;
	int partial = (p->vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0;

	/* Checksums: verify what the kernel has not vouched for. ICMP is rebuilt below, so it is
	 * always verified (a corrupt message must not come out with a good checksum). */
	uint64_t ph6 = pseudo6(d + 8, d + 24, l4len, (uint8_t)proto);
	if (proto == 58 || !csum_trusted(p)) {
		if (proto == 17 && get_csum(t + 6) == 0) { /* RFC 8200: mandatory over IPv6 */
			*reason = R_BAD_CHECKSUM;
			return -1;
		}
		if (partial && complete_csum(p)) {
			*reason = R_GSO;
			return -1;
		}
		partial = 0;
		if (fold(sum_bytes(ph6, t, l4len)) != 0xffff) {
			*reason = R_BAD_CHECKSUM;
			return -1;
		}
	}
	if (proto == 17 && !gso && rd16(t + 4) != l4len) {
		*reason = R_BAD_LENGTH;
		return -1;
	}

	uint8_t hlim = d[7];
	int is_error = proto == 58 && t[0] < 128;
	if (hlim <= 1) {
		if (!is_error)
			send_icmp6_error(e, s, 3, 0, 0, d, p->len);
		*reason = R_HOP_LIMIT;
		return -1;
	}
	if (is_error)
		return xlate_icmp6_error(e, s, d, l4, l4len, now, reason);

	/* Too big for the v4 side with DF (which RFC 7915 sets above 1260 bytes)? */
	uint32_t tot = 20 + l4len;
	uint32_t seg = wire_size(p, 20, l4hdr, l4len);
	int df = gso || tot > 1260;
	if (seg > e->cfg.mtu4 && (df || gso)) {
		send_icmp6_error(e, s, 2, 0, e->cfg.mtu4 + 20, d, p->len);
		*reason = R_TOO_BIG;
		return -1;
	}
	if (!gso && tot > 65535) { /* cannot happen with plen <= 65535 and l4 >= 40, kept honest */
		*reason = R_BAD_LENGTH;
		return -1;
	}

	/* The binding. */
	uint8_t p4 = proto == 58 ? 1 : (uint8_t)proto;
	uint16_t sport;
	if (proto == 58) {
		if (t[0] != 128 && t[0] != 129) {
			*reason = R_ICMP_TYPE;
			return -1;
		}
		sport = rd16(t + 4);
	} else {
		sport = rd16(t);
	}
	struct binding *b = lookup6(e, p4, d + 8, sport, now);
	if (!b) {
		if (proto == 6 && !(t[13] & TH_SYN)) {
			*reason = R_TCP_NOT_SYN;
			return -1;
		}
		if (proto == 58 && t[0] != 128) {
			*reason = R_NO_BINDING;
			return -1;
		}
		b = create_binding(e, p4, d + 8, sport, now, reason);
		if (!b)
			return -1;
	}
	b->remote4 = dst4;
	b->rport = proto == 58 ? 0 : rd16(t + 2);
	if (proto == 6)
		tcp_track(e, b, t[13], 1, now);
	else
		refresh(e, b, now);

	/* The IPv4 header over the tail of the IPv6 one. */
	uint8_t tos = (uint8_t)(d[0] << 4 | d[1] >> 4);
	uint8_t src6[16], dst6[16];
	memcpy(src6, d + 8, 16);
	memcpy(dst6, d + 24, 16);
	uint8_t *h = t - 20;
	h[0] = 0x45;
	h[1] = tos;
	wr16(h + 2, (uint16_t)(tot > 65535 ? 0 : tot));
	wr16(h + 4, e->ip_id++);
	wr16(h + 6, df ? 0x4000 : 0);
	h[8] = (uint8_t)(e->cfg.decrement_ttl ? hlim - 1 : hlim);
	h[9] = p4;
	memcpy(h + 12, &b->addr4, 4);
	memcpy(h + 16, &dst4, 4);
	ip4_header_csum(h);

	uint8_t port4[2];
	wr16(port4, b->port4);
	if (proto == 58) {
		uint8_t oldw[2] = {t[0], t[1]};
		t[0] = t[0] == 128 ? 8 : 0;
		uint8_t neww[2] = {t[0], t[1]};
		uint64_t olds = sum_bytes(sum_bytes(ph6, oldw, 2), t + 4, 2);
		uint64_t news = sum_bytes(sum_bytes(0, neww, 2), port4, 2);
		memcpy(t + 4, port4, 2);
		put_csum(t + 2, csum_update(get_csum(t + 2), olds, news));
	} else {
		uint32_t coff = proto == 6 ? 16u : 6u;
		if (partial) {
			memcpy(t, port4, 2);
			put_csum(t + coff, fold(pseudo4(b->addr4, dst4, l4len, p4)));
		} else {
			uint64_t olds = sum_bytes(ph6, t, 2);
			uint64_t news = sum_bytes(pseudo4(b->addr4, dst4, l4len, p4), port4, 2);
			memcpy(t, port4, 2);
			uint16_t c = csum_update(get_csum(t + coff), olds, news);
			if (proto == 17 && c == 0)
				c = 0xffff;
			put_csum(t + coff, c);
		}
	}
	translated_vnet(e, &p->vh, 20, l4hdr, partial, gso);
	e->counters[C_V6_TO_V4]++;
	p->data = h;
	p->len = tot;
	if (gso)
		emit_v4_gso(e, s, h, tot, &p->vh, l4hdr);
	else
		emit_pkt(s, h, tot, &p->vh, proto == 17);
	return 0;
}

/* ---- IPv4 -> IPv6 ---------------------------------------------------------------------- */

/* A translated v6 packet too big for mtu6 but without DF: IPv6 fragments (RFC 7915 4.1). */
static void emit_fragments(struct pb_nat64 *e, struct sink *s, struct pkt *p, uint16_t v4id)
{
	if (complete_csum(p))
		return;
	const uint8_t *d = p->data;
	uint32_t payload = p->len - 40;
	uint32_t chunk = (e->cfg.mtu6 - 48) & ~7u;
	uint32_t id = (uint32_t)v4id | (uint32_t)(e->frag_id++ & 0xffff) << 16;
	uint8_t *q = e->scratch + HEADROOM;
	for (uint32_t off = 0; off < payload; off += chunk) {
		uint32_t n = payload - off < chunk ? payload - off : chunk;
		int more = off + n < payload;
		memcpy(q, d, 40);
		wr16(q + 4, (uint16_t)(8 + n));
		q[6] = 44;
		q[40] = d[6];
		q[41] = 0;
		wr16(q + 42, (uint16_t)(off | (uint32_t)more));
		q[44] = (uint8_t)(id >> 24);
		q[45] = (uint8_t)(id >> 16);
		q[46] = (uint8_t)(id >> 8);
		q[47] = (uint8_t)id;
		memcpy(q + 48, d + 40 + off, n);
		e->counters[C_FRAGMENTS_SENT]++;
		emit(s, q, 48 + n, NULL);
	}
}

static int xlate4(struct pb_nat64 *e, struct pkt *p, uint64_t now, struct sink *s, int *reason)
{
	uint8_t *d = p->data;
	if (p->len < 20) {
		*reason = R_TRUNCATED;
		return -1;
	}
	uint32_t ihl = (d[0] & 15u) * 4u;
	if (ihl < 20) {
		*reason = R_BAD_HEADER;
		return -1;
	}
	uint32_t tot = rd16(d + 2);
	if (ihl > p->len || tot > p->len) {
		*reason = R_TRUNCATED;
		return -1;
	}
	if (tot < ihl) {
		*reason = R_BAD_LENGTH;
		return -1;
	}
	p->len = tot;
	if (fold(sum_bytes(0, d, ihl)) != 0xffff) {
		*reason = R_BAD_CHECKSUM;
		return -1;
	}
	uint16_t frag = rd16(d + 6);
	if (frag & 0x3fff) { /* MF or an offset */
		*reason = R_FRAGMENT;
		return -1;
	}
	int df = (frag & 0x4000) != 0;
	uint32_t src4 = rd32n(d + 12), dst4 = rd32n(d + 16);
	if (bad_v4(src4) || src4 == 0xffffffffu) {
		*reason = R_BAD_SRC;
		return -1;
	}
	if (pool_index(e, dst4) < 0) {
		*reason = R_NOT_POOL;
		return -1;
	}
	uint8_t proto = d[9];
	if (proto != 6 && proto != 17 && proto != 1) {
		*reason = R_UNKNOWN_PROTOCOL;
		return -1;
	}
	uint32_t l4 = ihl, l4len = tot - ihl;
	uint8_t *t = d + l4;
	uint32_t l4hdr = proto == 6 ? 20u : 8u;
	if (l4len < l4hdr) {
		*reason = R_TRUNCATED;
		return -1;
	}
	if (proto == 6) {
		l4hdr = (uint32_t)(t[12] >> 4) * 4u;
		if (l4hdr < 20) {
			*reason = R_BAD_HEADER;
			return -1;
		}
		if (l4hdr > l4len) {
			*reason = R_TRUNCATED;
			return -1;
		}
	}
	if (check_vnet(p, 0, proto, l4, l4len, reason))
		return -1;
	int gso = (p->vh.gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN) != VIRTIO_NET_HDR_GSO_NONE;
	int partial = (p->vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0;
	int udp_zero = proto == 17 && get_csum(t + 6) == 0 && !partial;
	uint64_t ph4 = pseudo4(src4, dst4, l4len, proto);
	if (proto == 1 || (!csum_trusted(p) && !udp_zero)) {
		if (partial && complete_csum(p)) {
			*reason = R_GSO;
			return -1;
		}
		partial = 0;
		if (fold(sum_bytes(proto == 1 ? 0 : ph4, t, l4len)) != 0xffff) {
			*reason = R_BAD_CHECKSUM;
			return -1;
		}
	}
	if (proto == 17 && !gso && rd16(t + 4) != l4len) {
		*reason = R_BAD_LENGTH;
		return -1;
	}
	int is_error = proto == 1 && t[0] != 0 && t[0] != 8;
	if (d[8] <= 1) {
		if (!is_error)
			send_icmp4_error(e, s, 11, 0, 0, d, p->len);
		*reason = R_HOP_LIMIT;
		return -1;
	}
	if (is_error)
		return xlate_icmp4_error(e, s, d, l4, l4len, now, reason);

	/* Only packets for a live binding get this far (or an answer about their size). */
	uint16_t dport = proto == 1 ? rd16(t + 4) : rd16(t + 2);
	struct binding *b = lookup4(e, proto, dst4, dport, now);
	if (!b) {
		*reason = R_NO_BINDING;
		return -1;
	}
	uint32_t len6 = 40 + l4len;
	uint32_t seg = wire_size(p, 40, l4hdr, l4len);
	int fragment = 0;
	if (seg > e->cfg.mtu6) {
		if (df || gso) {
			send_icmp4_error(e, s, 3, 4, e->cfg.mtu6 - 20, d, p->len);
			*reason = R_TOO_BIG;
			return -1;
		}
		fragment = 1;
	}
	b->remote4 = src4;
	b->rport = proto == 1 ? 0 : rd16(t);
	if (proto == 6)
		tcp_track(e, b, t[13], 0, now);
	else
		refresh(e, b, now);

	uint8_t tos = d[1], ttl = d[8];
	uint16_t v4id = rd16(d + 4);
	uint8_t *h = t - 40; /* headroom covers the 20 bytes more */
	h[0] = (uint8_t)(0x60 | tos >> 4);
	h[1] = (uint8_t)(tos << 4);
	h[2] = h[3] = 0;
	wr16(h + 4, (uint16_t)l4len);
	h[6] = proto == 1 ? 58 : proto;
	h[7] = (uint8_t)(e->cfg.decrement_ttl ? ttl - 1 : ttl);
	embed(e, src4, h + 8);
	memcpy(h + 24, b->addr6, 16);

	uint8_t port6[2];
	wr16(port6, b->port6);
	uint64_t ph6 = pseudo6(h + 8, h + 24, l4len, h[6]);
	if (proto == 1) {
		uint8_t oldw[2] = {t[0], t[1]};
		t[0] = t[0] == 8 ? 128 : 129;
		uint8_t neww[2] = {t[0], t[1]};
		uint64_t olds = sum_bytes(sum_bytes(0, oldw, 2), t + 4, 2);
		uint64_t news = sum_bytes(sum_bytes(ph6, neww, 2), port6, 2);
		memcpy(t + 4, port6, 2);
		put_csum(t + 2, csum_update(get_csum(t + 2), olds, news));
	} else {
		uint32_t coff = proto == 6 ? 16u : 6u;
		memcpy(t + 2, port6, 2);
		if (partial) {
			put_csum(t + coff, fold(ph6));
		} else if (udp_zero) {
			/* IPv4 may omit the UDP checksum, IPv6 may not: compute it in full. */
			put_csum(t + 6, 0);
			uint16_t c = (uint16_t)~fold(sum_bytes(ph6, t, l4len));
			put_csum(t + 6, c ? c : 0xffff);
		} else {
			uint8_t oldp[2];
			wr16(oldp, dport);
			uint64_t olds = sum_bytes(ph4, oldp, 2);
			uint64_t news = sum_bytes(ph6, port6, 2);
			uint16_t c = csum_update(get_csum(t + coff), olds, news);
			if (proto == 17 && c == 0)
				c = 0xffff;
			put_csum(t + coff, c);
		}
	}
	translated_vnet(e, &p->vh, 40, l4hdr, partial, gso);
	e->counters[C_V4_TO_V6]++;
	p->data = h;
	p->len = len6;
	if (fragment)
		emit_fragments(e, s, p, v4id);
	else
		emit_pkt(s, h, len6, &p->vh, proto == 17);
	return 0;
}

static int xlate(struct pb_nat64 *e, struct pkt *p, uint64_t now, struct sink *s)
{
	int reason = R_NONE;
	int rc;
	if (p->len < 1) {
		reason = R_TRUNCATED;
		rc = -1;
	} else if ((p->data[0] >> 4) == 6) {
		rc = xlate6(e, p, now, s, &reason);
	} else if ((p->data[0] >> 4) == 4) {
		rc = xlate4(e, p, now, s, &reason);
	} else {
		reason = R_BAD_VERSION;
		rc = -1;
	}
	if (rc < 0) {
		if (reason <= R_NONE || reason >= R_COUNT)
			reason = R_BAD_HEADER;
		e->counters[C_DROPPED + reason - 1]++;
		return reason;
	}
	/* Amortized expiry: look at two entries per packet, so a busy table turns over without
	 * a pause; the thread also sweeps the whole table when idle. */
	sweep(e, now, 2);
	return R_NONE;
}

/* ---- public: engine -------------------------------------------------------------------- */

uint64_t pb_nat64_now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static int check_range(uint16_t lo, uint16_t hi) { return lo >= 1 && lo <= hi; }

struct pb_nat64 *pb_nat64_new(const struct pb_nat64_config *cfg, char *err, size_t errlen)
{
	if (prefix_slot(cfg->prefix_len) < 0) {
		snprintf(err, errlen, "prefix length %u: RFC 6052 allows 32, 40, 48, 56, 64 or 96", cfg->prefix_len);
		return NULL;
	}
	if (cfg->pool4_count < 1 || cfg->pool4_count > MAX_POOL) {
		snprintf(err, errlen, "pool: %u IPv4 addresses, need 1 to %d", cfg->pool4_count, MAX_POOL);
		return NULL;
	}
	if (!check_range(cfg->udp_min, cfg->udp_max) || !check_range(cfg->tcp_min, cfg->tcp_max) ||
	    !check_range(cfg->icmp_min, cfg->icmp_max)) {
		snprintf(err, errlen, "port ranges must be 1..65535 with min <= max");
		return NULL;
	}
	if (!cfg->udp_timeout_s || !cfg->tcp_est_timeout_s || !cfg->tcp_trans_timeout_s || !cfg->icmp_timeout_s) {
		snprintf(err, errlen, "timeouts must be at least 1 s");
		return NULL;
	}
	if (cfg->max_bindings < 1 || cfg->max_bindings > (1u << 24)) {
		snprintf(err, errlen, "max_bindings %u: need 1 to %u", cfg->max_bindings, 1u << 24);
		return NULL;
	}
	if (cfg->mtu4 < 68 || cfg->mtu4 > 65535 || cfg->mtu6 < 1280 || cfg->mtu6 > 65535) {
		snprintf(err, errlen, "MTUs: IPv4 68..65535, IPv6 1280..65535 (got %u, %u)", cfg->mtu4, cfg->mtu6);
		return NULL;
	}
	struct pb_nat64 *e = calloc(1, sizeof(*e));
	if (!e) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	e->cfg = *cfg;
	e->tun_fd = e->wake_fd = -1;
	for (uint32_t i = 0; i < cfg->pool4_count; i++) {
		memcpy(&e->pool[i], cfg->pool4 + 4 * i, 4);
		if (bad_v4(e->pool[i])) {
			snprintf(err, errlen, "pool address %u.%u.%u.%u cannot be a source", cfg->pool4[4 * i],
				 cfg->pool4[4 * i + 1], cfg->pool4[4 * i + 2], cfg->pool4[4 * i + 3]);
			free(e);
			return NULL;
		}
	}
	static const uint8_t zero[16];
	if (memcmp(cfg->self6, zero, 16) == 0)
		embed(e, e->pool[0], e->self6);
	else
		memcpy(e->self6, cfg->self6, 16);
	if (getrandom(&e->seed, sizeof(e->seed), 0) != sizeof(e->seed))
		e->seed = pb_nat64_now_ms() * 0x9e3779b97f4a7c15ull;
	e->ip_id = (uint16_t)e->seed;
	e->cap = cfg->max_bindings;
	uint32_t hsize = 16;
	while (hsize < 2 * e->cap)
		hsize <<= 1;
	e->hmask = hsize - 1;
	e->b = calloc(e->cap, sizeof(*e->b));
	e->h6 = calloc(hsize, sizeof(uint32_t));
	e->h4 = calloc(hsize, sizeof(uint32_t));
	e->api_buf = malloc(BUF_SIZE);
	e->scratch = malloc(BUF_SIZE);
	e->train.buf = malloc(BUF_SIZE);
	if (!e->b || !e->h6 || !e->h4 || !e->api_buf || !e->scratch || !e->train.buf) {
		snprintf(err, errlen, "out of memory for %u bindings", e->cap);
		pb_nat64_free(e);
		return NULL;
	}
	for (uint32_t i = 0; i < e->cap; i++)
		e->b[i].next6 = i + 2 <= e->cap ? i + 2 : 0;
	e->free_head = 1;
	for (int i = 0; i < 3; i++)
		e->port_cursor[i] = (uint32_t)mix(e->seed + (uint64_t)i);
	e->counters[C_BINDINGS_MAX] = e->cap;
	pthread_mutex_init(&e->lock, NULL);
	return e;
}

void pb_nat64_free(struct pb_nat64 *e)
{
	if (!e)
		return;
	pb_nat64_stop(e);
	if (e->b)
		pthread_mutex_destroy(&e->lock);
	free(e->b);
	free(e->h6);
	free(e->h4);
	free(e->api_buf);
	free(e->scratch);
	free(e->train.buf);
	free(e);
}

void pb_nat64_set_timeouts(struct pb_nat64 *e, uint32_t udp_s, uint32_t tcp_est_s, uint32_t tcp_trans_s,
			   uint32_t icmp_s)
{
	pthread_mutex_lock(&e->lock);
	if (udp_s)
		e->cfg.udp_timeout_s = udp_s;
	if (tcp_est_s)
		e->cfg.tcp_est_timeout_s = tcp_est_s;
	if (tcp_trans_s)
		e->cfg.tcp_trans_timeout_s = tcp_trans_s;
	if (icmp_s)
		e->cfg.icmp_timeout_s = icmp_s;
	pthread_mutex_unlock(&e->lock);
}

int pb_nat64_process(struct pb_nat64 *e, const uint8_t *in, size_t inlen, uint8_t *out, size_t outcap,
		     uint64_t now_ms, int vnet, int *reason)
{
	struct sink s = {.e = e, .out = out, .cap = outcap, .vnet = vnet};
	struct pkt p = {0};
	size_t hdr = vnet ? VNET_LEN : 0;
	if (inlen < hdr || inlen - hdr > PKT_MAX) {
		pthread_mutex_lock(&e->lock);
		e->counters[C_DROPPED + (inlen < hdr ? R_TRUNCATED : R_BAD_LENGTH) - 1]++;
		pthread_mutex_unlock(&e->lock);
		*reason = inlen < hdr ? R_TRUNCATED : R_BAD_LENGTH;
		return 0;
	}
	pthread_mutex_lock(&e->lock);
	if (vnet)
		memcpy(&p.vh, in, VNET_LEN);
	p.data = e->api_buf + HEADROOM;
	p.len = (uint32_t)(inlen - hdr);
	memcpy(p.data, in + hdr, p.len);
	*reason = xlate(e, &p, now_ms, &s);
	if (s.overflow) {
		e->counters[C_DROPPED + R_NO_SPACE - 1]++;
		*reason = R_NO_SPACE;
	}
	pthread_mutex_unlock(&e->lock);
	return s.overflow ? -ENOSPC : (int)s.used;
}

int pb_nat64_process_batch(struct pb_nat64 *e, const uint8_t *in, const uint32_t *lens, int n, uint8_t *out,
			   size_t outcap, uint64_t now_ms, int *reasons)
{
	struct sink s = {.e = e, .out = out, .cap = outcap, .vnet = 1, .train = &e->train};
	pthread_mutex_lock(&e->lock);
	size_t off = 0;
	for (int i = 0; i < n; i++) {
		struct pkt p = {0};
		if (lens[i] < VNET_LEN || lens[i] - VNET_LEN > PKT_MAX) {
			reasons[i] = lens[i] < VNET_LEN ? R_TRUNCATED : R_BAD_LENGTH;
			e->counters[C_DROPPED + reasons[i] - 1]++;
			off += lens[i];
			continue;
		}
		memcpy(&p.vh, in + off, VNET_LEN);
		p.data = e->api_buf + HEADROOM; /* what a train keeps it has copied */
		p.len = lens[i] - VNET_LEN;
		memcpy(p.data, in + off + VNET_LEN, p.len);
		off += lens[i];
		reasons[i] = xlate(e, &p, now_ms, &s);
	}
	train_flush(&s);
	pthread_mutex_unlock(&e->lock);
	return s.overflow ? -ENOSPC : (int)s.used;
}

int pb_nat64_expire(struct pb_nat64 *e, uint64_t now_ms)
{
	pthread_mutex_lock(&e->lock);
	int n = sweep(e, now_ms, e->cap);
	pthread_mutex_unlock(&e->lock);
	return n;
}

int pb_nat64_counters(struct pb_nat64 *e, uint64_t *out, int n)
{
	if (n > C_COUNT)
		n = C_COUNT;
	pthread_mutex_lock(&e->lock);
	memcpy(out, e->counters, (size_t)n * sizeof(uint64_t));
	pthread_mutex_unlock(&e->lock);
	return n;
}

int pb_nat64_bindings(struct pb_nat64 *e, uint64_t now_ms, struct pb_nat64_binding *out, int max)
{
	pthread_mutex_lock(&e->lock);
	int n = 0;
	for (uint32_t i = 0; i < e->cap; i++) {
		const struct binding *b = &e->b[i];
		if (!b->in_use || b->expires_ms <= now_ms)
			continue;
		if (n < max) {
			struct pb_nat64_binding *o = &out[n];
			o->proto = b->proto;
			o->tcp_state = b->tcp_state;
			memcpy(o->addr6, b->addr6, 16);
			o->port6 = b->port6;
			memcpy(o->addr4, &b->addr4, 4);
			o->port4 = b->port4;
			memcpy(o->remote4, &b->remote4, 4);
			o->remote_port = b->rport;
			o->expires_ms = (int64_t)(b->expires_ms - now_ms);
		}
		n++;
	}
	pthread_mutex_unlock(&e->lock);
	return n;
}

/* ---- public: the thread over a TUN ---------------------------------------------------- */

static void *nat64_main(void *arg)
{
	struct pb_nat64 *e = arg;
	prctl(PR_SET_NAME, "pb-nat64"); /* visible in top, perf and /proc/<pid>/task/<tid>/comm */
	prctl(PR_SET_TIMERSLACK, 1000UL); /* the moderation wait is 100 us, not up to 150 */
	atomic_store(&e->tid, (int)syscall(SYS_gettid));
	struct sink s = {.e = e, .to_tun = 1, .train = e->uso ? &e->train : NULL};
	uint64_t last_sweep = pb_nat64_now_ms();
	uint32_t lens[READ_BATCH];
	while (!atomic_load(&e->stop)) {
		/* Read what is there, up to a batch, then translate it under one lock. */
		int n = 0, gso = 0;
		while (n < READ_BATCH) {
			uint8_t *buf = e->slots + (size_t)n * BUF_SIZE + HEADROOM - VNET_LEN;
			ssize_t r = read(e->tun_fd, buf, PKT_MAX + VNET_LEN);
			if (r < 0) {
				if (errno == EINTR)
					continue;
				if (errno != EAGAIN) /* the device is gone (EBADFD): nothing more to do */
					atomic_store(&e->stop, 1);
				break; /* EAGAIN: drained */
			}
			if ((size_t)r <= VNET_LEN)
				continue;
			gso |= buf[1] != VIRTIO_NET_HDR_GSO_NONE; /* the header's gso_type */
			lens[n++] = (uint32_t)r - VNET_LEN;
		}
		uint64_t now = pb_nat64_now_ms();
		if (n) {
			pthread_mutex_lock(&e->lock);
			e->counters[C_TUN_RX] += (uint64_t)n;
			for (int i = 0; i < n; i++) {
				struct pkt p;
				uint8_t *buf = e->slots + (size_t)i * BUF_SIZE + HEADROOM;
				memcpy(&p.vh, buf - VNET_LEN, VNET_LEN);
				p.data = buf;
				p.len = lens[i];
				xlate(e, &p, now, &s);
			}
			train_flush(&s);
			if (now - last_sweep >= 1000) {
				sweep(e, now, e->cap);
				last_sweep = now;
			}
			pthread_mutex_unlock(&e->lock);
			if (n == READ_BATCH)
				continue; /* more may be waiting: read again before sleeping */
			if (n >= MODERATE_MIN && !gso) {
				struct timespec ts = {0, MODERATE_US * 1000L};
				nanosleep(&ts, NULL);
				continue;
			}
		}
		if (now - last_sweep >= 1000) {
			pthread_mutex_lock(&e->lock);
			sweep(e, now, e->cap);
			pthread_mutex_unlock(&e->lock);
			last_sweep = now;
		}
		struct pollfd fds[2] = {{.fd = e->tun_fd, .events = POLLIN}, {.fd = e->wake_fd, .events = POLLIN}};
		int r = poll(fds, 2, 1000);
		if ((r < 0 && errno != EINTR) || (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)))
			break;
		if (fds[1].revents & POLLIN) {
			uint64_t v;
			if (read(e->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				break;
		}
	}
	return NULL;
}

/* "path=value\n..." (paths relative to /proc/sys), written from inside the namespace. */
static int write_sysctls_here(const char *text, char *err, size_t errlen)
{
	while (text && *text) {
		const char *nl = strchr(text, '\n');
		size_t n = nl ? (size_t)(nl - text) : strlen(text);
		char line[512], path[600];
		if (n && n < sizeof(line)) {
			memcpy(line, text, n);
			line[n] = 0;
			char *eq = strchr(line, '=');
			if (eq) {
				*eq = 0;
				snprintf(path, sizeof(path), "/proc/sys/%s", line);
				int fd = open(path, O_WRONLY | O_CLOEXEC);
				ssize_t w = -1;
				if (fd >= 0) {
					w = write(fd, eq + 1, strlen(eq + 1));
					close(fd);
				}
				if (w < 0) {
					int x = errno;
					snprintf(err, errlen, "sysctl %s=%s: %s", line, eq + 1, strerror(x));
					return -x;
				}
			}
		}
		text = nl ? nl + 1 : NULL;
	}
	return 0;
}

static int open_tun_here(const char *name, uint32_t mtu, const char *sysctls, int *ifindex, int *uso,
			 char *err, size_t errlen)
{
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		snprintf(err, errlen, "open /dev/net/tun: %s", strerror(errno));
		return -errno;
	}
	struct ifreq ifr = {0};
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	int e = 0;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		e = errno;
		snprintf(err, errlen, "TUNSETIFF %s: %s", name, strerror(e));
		close(fd);
		return -e;
	}
	/* Offloads: partial checksums and TSO super-packets (UDP GSO too where the kernel has
	 * it, 6.2+). Without them every TCP segment would be one read and one write. */
	unsigned int base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
	*uso = ioctl(fd, TUNSETOFFLOAD, base | TUN_F_USO4 | TUN_F_USO6) == 0;
	if (!*uso && ioctl(fd, TUNSETOFFLOAD, base) < 0) {
		e = errno;
		snprintf(err, errlen, "TUNSETOFFLOAD %s: %s", name, strerror(e));
		close(fd);
		return -e;
	}
	/* Before it comes up: IPv6 settings decide whether the kernel gives it a link-local
	 * address (and sends DAD and MLD into it) at link-up. */
	e = write_sysctls_here(sysctls, err, errlen);
	if (e < 0) {
		close(fd);
		return e;
	}
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		e = errno;
		snprintf(err, errlen, "socket: %s", strerror(e));
		close(fd);
		return -e;
	}
	struct ifreq q = {0};
	snprintf(q.ifr_name, IFNAMSIZ, "%s", name);
	q.ifr_qlen = 10000; /* bursts queue while the thread translates the previous batch */
	ioctl(s, SIOCSIFTXQLEN, &q);
	struct ifreq m = {0};
	snprintf(m.ifr_name, IFNAMSIZ, "%s", name);
	m.ifr_mtu = (int)mtu;
	/* Up, and without IFF_MULTICAST: the kernel joins no multicast groups on it later (a
	 * forwarding change would join the all-routers groups and send MLD reports into it). */
	struct ifreq up = {0};
	snprintf(up.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(s, SIOCSIFMTU, &m) < 0 || ioctl(s, SIOCGIFFLAGS, &up) < 0 ||
	    (up.ifr_flags = (short)((up.ifr_flags | IFF_UP) & ~IFF_MULTICAST), ioctl(s, SIOCSIFFLAGS, &up) < 0) || ioctl(s, SIOCGIFINDEX, &up) < 0) {
		e = errno;
		snprintf(err, errlen, "configure %s (mtu %u, up): %s", name, mtu, strerror(e));
		close(s);
		close(fd);
		return -e;
	}
	*ifindex = up.ifr_ifindex;
	close(s);
	return fd;
}

int pb_nat64_start(struct pb_nat64 *e, int ns_fd, int home_fd, const char *tun_name, const char *sysctls,
		   char *err, size_t errlen)
{
	if (e->running) {
		snprintf(err, errlen, "the translator already runs");
		return -EBUSY;
	}
	if (setns(ns_fd, CLONE_NEWNET)) {
		int x = errno;
		snprintf(err, errlen, "setns: %s", strerror(x));
		return -x;
	}
	int ifindex = 0;
	int fd = open_tun_here(tun_name, e->cfg.mtu6, sysctls, &ifindex, &e->uso, err, errlen);
	if (setns(home_fd, CLONE_NEWNET)) {
		int x = errno;
		snprintf(err, errlen, "setns back home: %s", strerror(x));
		if (fd >= 0)
			close(fd);
		return -x;
	}
	if (fd < 0)
		return fd;
	e->slots = malloc((size_t)READ_BATCH * BUF_SIZE);
	e->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!e->slots || e->wake_fd < 0) {
		snprintf(err, errlen, "out of memory or eventfd");
		goto fail;
	}
	e->tun_fd = fd;
	atomic_store(&e->stop, 0);
	atomic_store(&e->tid, 0);
	int terr = pthread_create(&e->thread, NULL, nat64_main, e);
	if (terr) {
		snprintf(err, errlen, "start the translator thread: %s", strerror(terr));
		goto fail;
	}
	e->running = 1;
	/* Callers measure the thread's CPU time by its tid: have it before returning. */
	for (int i = 0; i < 1000 && !atomic_load(&e->tid); i++)
		usleep(1000);
	return ifindex;
fail:
	close(fd);
	e->tun_fd = -1;
	if (e->wake_fd >= 0)
		close(e->wake_fd);
	e->wake_fd = -1;
	free(e->slots);
	e->slots = NULL;
	return -ENOMEM;
}

int pb_nat64_thread_tid(struct pb_nat64 *e) { return atomic_load(&e->tid); }

void pb_nat64_stop(struct pb_nat64 *e)
{
	if (!e->running)
		return;
	atomic_store(&e->stop, 1);
	uint64_t one = 1;
	if (write(e->wake_fd, &one, sizeof(one)) < 0) {
		/* poll wakes within a second anyway */
	}
	pthread_join(e->thread, NULL);
	e->running = 0;
	close(e->tun_fd);
	close(e->wake_fd);
	e->tun_fd = e->wake_fd = -1;
	free(e->slots);
	e->slots = NULL;
}
