/* patchbay C core: the stateful NAT64 translator (RFC 6146 bindings, RFC 7915 headers).
 *
 * Read twice, like patchbay.h: by the C compiler and by cffi (csrc/build_native.py), which
 * drops every line starting with '#'. Plain C declarations only; array sizes are literals.
 *
 * One engine holds a configuration, a bounded binding table and counters. It can be driven
 * two ways:
 *   - directly, packet by packet (pb_nat64_process), with the caller's clock: for tests and
 *     for anyone who wants the translation without a device;
 *   - by its own thread over a TUN device inside a namespace (pb_nat64_start): the fast path,
 *     no Python per packet.
 * Both take the engine's lock, so Python may list bindings or read counters while the thread
 * runs. Conventions as in patchbay.h: 0 or a negative errno; `err` gets the text.
 */
#include <stddef.h>
#include <stdint.h>

/* Addresses are in network byte order (as on the wire); ports and times in host order. */
struct pb_nat64_config {
    uint8_t prefix[16];        /* the RFC 6052 prefix (bits past prefix_len are ignored) */
    uint32_t prefix_len;       /* 32, 40, 48, 56, 64 or 96 */
    uint8_t pool4[64];         /* up to 16 IPv4 addresses the v6 clients are mapped to */
    uint32_t pool4_count;      /* 1..16 */
    uint8_t self6[16];         /* source of ICMPv6 errors the translator emits itself;
                                  all-zero: the pool's first address embedded in the prefix */
    uint16_t udp_min, udp_max; /* the v4 port range of each protocol (inclusive) */
    uint16_t tcp_min, tcp_max;
    uint16_t icmp_min, icmp_max; /* ICMP echo identifiers, which stand in for ports */
    uint32_t udp_timeout_s;    /* RFC 6146: UDP >= 120 s, default 300 s */
    uint32_t tcp_est_timeout_s;   /* established TCP, default 7200 s */
    uint32_t tcp_trans_timeout_s; /* TCP being opened or closed (TCP_TRANS), default 240 s */
    uint32_t icmp_timeout_s;   /* ICMP echo, default 60 s */
    uint32_t max_bindings;     /* the table's bound; when full, new flows are dropped */
    uint32_t mtu4;             /* MTU of the IPv4 egress (the WAN); default 1500 */
    uint32_t mtu6;             /* MTU of the IPv6 egress (the LAN), also the TUN's MTU; 1500 */
    uint32_t decrement_ttl;    /* 1: the translator decrements TTL/hop limit itself (for a
                                  translator whose pool is routed to it); 0: leave it to the
                                  kernel's forwarding out of the TUN (see nat64.c) */
};

/* Drop reasons: pb_nat64_process sets *reason to one of them (0 = translated). Names from
 * pb_nat64_reason_name ("truncated", "bad_checksum", ...). */
int pb_nat64_reason_count(void);
const char *pb_nat64_reason_name(int reason);

/* Counters: a fixed list, names from pb_nat64_counter_name ("translated.v6_to_v4",
 * "dropped.<reason>", "bindings", "bindings.max", ...). */
int pb_nat64_counter_count(void);
const char *pb_nat64_counter_name(int index);

struct pb_nat64;
/* An engine for `cfg` (checked: prefix length, pool, ranges, timeouts). NULL on bad input or
 * no memory, with the text in err. */
struct pb_nat64 *pb_nat64_new(const struct pb_nat64_config *cfg, char *err, size_t errlen);
/* Stops the thread if one runs (the TUN goes with its fd) and frees everything. */
void pb_nat64_free(struct pb_nat64 *e);

/* Change the timeouts of new and refreshed bindings (seconds; 0 keeps a value). */
void pb_nat64_set_timeouts(struct pb_nat64 *e, uint32_t udp_s, uint32_t tcp_est_s,
                           uint32_t tcp_trans_s, uint32_t icmp_s);

/* The engine's clock: CLOCK_MONOTONIC in milliseconds (what the thread uses). */
uint64_t pb_nat64_now_ms(void);

/* Translate one IP packet (IPv6 or IPv4, no link header) at time now_ms. Writes every
 * resulting packet to out, one after another (each delimited by its own IP length field):
 * the translated packet, or IPv6 fragments of it, or an ICMP error the translator answers
 * the sender with. vnet=1: the input begins with a struct virtio_net_hdr (10 bytes) and so
 * does every output packet (GSO and partial checksums as a TUN with offloads carries them).
 * Returns the bytes written (0: nothing), or -ENOSPC when outcap is too small. *reason is 0
 * when the packet was translated, else why it was dropped (and counted). */
int pb_nat64_process(struct pb_nat64 *e, const uint8_t *in, size_t inlen, uint8_t *out,
                     size_t outcap, uint64_t now_ms, int vnet, int *reason);

/* Translate n packets as the thread does with one read batch: each input begins with a
 * virtio-net header (in: the inputs one after another, lens[i] bytes each, header included),
 * and consecutive UDP datagrams of one flow leave as one UDP GSO packet. Outputs as with
 * pb_nat64_process(vnet=1); reasons[i] for each input. Returns the bytes written or -ENOSPC. */
int pb_nat64_process_batch(struct pb_nat64 *e, const uint8_t *in, const uint32_t *lens, int n,
                           uint8_t *out, size_t outcap, uint64_t now_ms, int *reasons);

/* Remove expired bindings (the thread does this by itself once a second). Returns how many. */
int pb_nat64_expire(struct pb_nat64 *e, uint64_t now_ms);

/* Counters, in pb_nat64_counter_name order, into out[0..n). Returns how many were written. */
int pb_nat64_counters(struct pb_nat64 *e, uint64_t *out, int n);

/* The binding table, for diagnostics. proto: 6, 17 or 1 (ICMP echo, ports are identifiers);
 * remote: the last v4 peer; expires_ms: ms from now_ms (pb_nat64_now_ms() for the thread's
 * clock). Bindings expired at now_ms are left out. */
struct pb_nat64_binding {
    uint8_t proto;
    uint8_t tcp_state;         /* 0 opening, 1 established, 2 closing (TCP only) */
    uint8_t addr6[16];
    uint16_t port6;
    uint8_t addr4[4];
    uint16_t port4;
    uint8_t remote4[4];
    uint16_t remote_port;
    int64_t expires_ms;
};
/* Fills up to max entries; returns how many bindings exist (may be more than max). */
int pb_nat64_bindings(struct pb_nat64 *e, uint64_t now_ms, struct pb_nat64_binding *out, int max);

/* Run the engine's thread inside ns_fd over a new TUN named tun_name (IFF_TUN|IFF_NO_PI with
 * a virtio-net header: offloads on, so TCP passes as GSO super-packets). `sysctls`
 * ("path=value\n...", paths relative to /proc/sys, may be NULL) are written once the TUN
 * exists and before it comes up. The TUN is up with MTU cfg.mtu6 when this returns;
 * addresses and routes are the caller's. Returns the TUN's ifindex, or a negative errno with
 * the text in err. One thread per engine. The TUN's fd keeps the namespace alive until
 * pb_nat64_stop. */
int pb_nat64_start(struct pb_nat64 *e, int ns_fd, int home_fd, const char *tun_name,
                   const char *sysctls, char *err, size_t errlen);
/* The thread's kernel thread id (for /proc/self/task/<tid>/stat), 0 before it runs. */
int pb_nat64_thread_tid(struct pb_nat64 *e);
/* Stop the thread and close the TUN; the engine (bindings, counters) stays usable. */
void pb_nat64_stop(struct pb_nat64 *e);
