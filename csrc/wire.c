/* The wire: a userspace link emulator for kernels without sch_netem.
 *
 * One wire shapes one direction of one link. A tc filter redirects the link's packets into a
 * TAP device the wire reads; each packet then meets, in order:
 *   loss (correlated as a two-state Markov chain), corruption (one bit of the payload flipped after the
 *   checksums were made), duplication, a bottleneck of `rate_bps` with a bounded queue, and a
 *   delay of latency +- jitter (uniform). A flow's packets keep their order unless one is
 *   picked for reordering, which skips the delay (not the bottleneck): it leaves ahead of the
 *   delayed ones. Different flows are independent (jitter may let one flow's packet pass
 *   another flow's).
 * At its departure time the frame goes out of the link with an AF_PACKET socket whose packets
 * carry PB_WIRE_MARK: the redirecting filter lets them pass, and they take the interface's
 * normal transmit path, where packet captures (and everything else watching) see them as
 * they leave, impaired.
 *
 * Every random decision comes from the wire's own generator, keyed per flow (addresses, ports,
 * protocol) and per packet of that flow: with a fixed seed, a flow sees the same decisions on
 * every run, whatever else crosses the link. Each flow has its own entry (packet counter, loss
 * state, last departure) in a hash table; only flows idle for FLOW_IDLE_NS are forgotten, and a
 * flow's idleness depends on its own packets alone.
 *
 * Frames carry a virtio-net header through the TAP and the packet socket. When a condition
 * needs per-packet decisions (loss, duplication, corruption, reordering, a rate), the TAP
 * advertises no segmentation offloads, so the kernel segments GSO packets before handing them
 * over: the wire sees real wire packets (checksums stay partial, carried in the virtio-net
 * header, unless corruption needs them complete). With only latency and jitter, offloads are on
 * and whole GSO packets pass through, as they do through the kernel without the wire.
 *
 * Threads: the wire thread reads the TAP, decides and keeps delayed packets in a heap ordered
 * by departure time. Sending a frame runs the kernel's whole forwarding path behind it (the
 * routers and the receiver's stack run in the sender's softirq), so once traffic is heavy the
 * sending moves to a second thread, which the scheduler can put on another CPU. Buffers come
 * from free lists (no malloc per packet once warm).
 */
#define _GNU_SOURCE
#include "patchbay.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
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
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define READ_BATCH 64	   /* frames read per round before the round's sends go out */
#define SEND_BATCH 64	   /* frames per sendmmsg */
#define VNET_HDR_LEN ((uint32_t)sizeof(struct virtio_net_hdr))
#define MAX_FRAME 65600	   /* a whole GSO packet and its virtio-net header */
#define FLOW_MIN_SLOTS 1024u
#define FLOW_MAX_SLOTS (1u << 20)
#define FLOW_IDLE_NS (60ull * 1000000000ull)
#define QUEUE_BYTES_MAX (256ull << 20) /* delayed bytes held at most; beyond: dropped_queue */
#define HANDOFF_MAX 8192u	       /* frames waiting for the send thread before the reader waits */
#define SPLIT_AT 16		       /* frames in one round that make sending move to its own thread */
#define KEEP_SMALL 1024u	       /* free buffers kept for reuse, per size class */
#define KEEP_LARGE 64u
#define TX_SPIN_NS 20000ull /* the send thread's look for work before it sleeps */
#define SPIN_NS 20000ull /* after a busy round, poll the TAP this long before sleeping */

struct pkt {
	struct pkt *next; /* free list, hand-off chain */
	uint64_t depart_ns;
	uint64_t seq; /* among equal departures: arrival order */
	uint32_t len; /* bytes in data: virtio-net header and frame */
	uint32_t cap;
	unsigned char data[];
};

struct flow {
	uint64_t key; /* 0: an empty slot (keys are never 0) */
	uint64_t count; /* packets of the flow so far: the index of each packet's draws */
	uint64_t last_seen_ns;
	uint64_t last_depart_ns; /* the flow's packets leave in order: none before this */
	int last_dropped;
};

struct pool {
	struct pkt *free;
	uint32_t nfree, keep, cap;
};

struct pb_wire {
	int tap_fd, out_fd, wake_fd, tap_ifindex;
	atomic_int offload; /* TAP segmentation offloads on: whole GSO packets pass */
	unsigned int tun_flags;
	pthread_t thread;
	atomic_int stop;
	pthread_mutex_t lock; /* guards params */
	struct pb_wire_params params;
	uint64_t seed;

	/* Delayed packets: a binary min-heap on (depart_ns, seq). */
	struct pkt **heap;
	uint32_t heap_len, heap_cap;
	uint64_t seq;
	uint64_t queued_bytes;
	uint64_t link_free_ns; /* when the bottleneck finishes sending what it has */

	struct flow *flows;
	uint32_t flow_slots, flow_used;
	struct flow overflow; /* shared by new flows if the table is full of active ones */
	uint64_t flows_full_until; /* after a rebuild found no room: do not scan again before */

	struct pool small, large; /* owned by the wire thread */
	unsigned char *scratch;	  /* the tail of a frame larger than its buffer */
	struct pkt *out[SEND_BATCH]; /* this round's frames to send now, in order */
	int nout;

	/* Sending: directly from the wire thread until traffic is heavy, then by `sender`. */
	int split;
	pthread_t sender;
	pthread_mutex_t q_lock;
	pthread_cond_t q_ready, q_space;
	struct pkt *q_head, *q_tail; /* frames handed to the sender, in order */
	uint32_t q_len;
	atomic_int q_pending; /* q_head is set: read without the lock by the spinning sender */
	int q_stop, sender_waiting, reader_waiting;
	struct pkt *ret_small, *ret_large; /* sent buffers coming back (under q_lock) */
	/* The send batch of whichever thread sends. */
	struct mmsghdr msgs[SEND_BATCH];
	struct iovec iov[SEND_BATCH];

	struct pb_wire_stats stats;
};

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* splitmix64: a counter-based generator, so draws can be keyed rather than sequential. */
static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* A uniform draw in [0, 1) for one purpose of one packet of one flow. */
static double draw(uint64_t seed, uint64_t flow, uint64_t n, uint64_t purpose)
{
	uint64_t r = mix(seed ^ mix(flow ^ mix(n * 8 + purpose)));
	return (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

/* The flow a frame belongs to: addresses, protocol and ports of IPv4/IPv6 TCP/UDP; the
 * ethertype for anything else. Never 0. */
static uint64_t flow_key(const unsigned char *f, uint32_t len)
{
	if (len < 14)
		return 1;
	uint16_t type = (uint16_t)(f[12] << 8 | f[13]);
	const unsigned char *ip = f + 14;
	uint32_t left = len - 14;
	uint64_t h = mix(type);
	if (type == ETH_P_IP && left >= 20) {
		uint32_t ihl = (ip[0] & 15u) * 4u;
		uint8_t proto = ip[9];
		h = mix(h ^ ((uint64_t)proto << 32));
		for (int i = 12; i < 20; i += 4)
			h = mix(h ^ ((uint64_t)ip[i] << 24 | ip[i + 1] << 16 | ip[i + 2] << 8 | ip[i + 3]));
		if ((proto == 6 || proto == 17) && left >= ihl + 4)
			h = mix(h ^ ((uint64_t)ip[ihl] << 24 | ip[ihl + 1] << 16 | ip[ihl + 2] << 8 | ip[ihl + 3]));
	} else if (type == ETH_P_IPV6 && left >= 40) {
		uint8_t proto = ip[6];
		h = mix(h ^ proto);
		for (int i = 8; i < 40; i += 8) {
			uint64_t v = 0;
			memcpy(&v, ip + i, 8);
			h = mix(h ^ v);
		}
		if ((proto == 6 || proto == 17) && left >= 44)
			h = mix(h ^ ((uint64_t)ip[40] << 24 | ip[41] << 16 | ip[42] << 8 | ip[43]));
	}
	return h ? h : 1;
}

/* ---- the flow table: open addressing, linear probing ---------------------------------- */

static int flow_idle(const struct flow *f, uint64_t now)
{
	uint64_t last = f->last_seen_ns > f->last_depart_ns ? f->last_seen_ns : f->last_depart_ns;
	return now > last + FLOW_IDLE_NS;
}

static struct flow *probe(struct flow *slots, uint32_t nslots, uint64_t key)
{
	uint32_t mask = nslots - 1;
	for (uint32_t i = (uint32_t)(key ^ (key >> 32)) & mask;; i = (i + 1) & mask)
		if (slots[i].key == key || slots[i].key == 0)
			return &slots[i];
}

/* Rebuild the table without its idle flows, `grow`-times larger (1 or 2). Returns 0 on
 * success; on failure to allocate, the table stays as it was. */
static int flows_rebuild(struct pb_wire *w, uint64_t now, uint32_t grow)
{
	uint32_t nslots = w->flow_slots * grow;
	struct flow *n = calloc(nslots, sizeof(*n));
	if (!n)
		return -1;
	uint32_t used = 0;
	for (uint32_t i = 0; i < w->flow_slots; i++) {
		struct flow *f = &w->flows[i];
		if (f->key && !flow_idle(f, now)) {
			*probe(n, nslots, f->key) = *f;
			used++;
		}
	}
	free(w->flows);
	w->flows = n;
	w->flow_slots = nslots;
	w->flow_used = used;
	return 0;
}

static struct flow *flow_of(struct pb_wire *w, uint64_t key, uint64_t now)
{
	struct flow *f = probe(w->flows, w->flow_slots, key);
	if (f->key == key) {
		if (flow_idle(f, now)) {
			/* Forgotten after a long silence: it starts afresh, as if new. That depends
			 * on this flow's own timing only, never on other traffic. */
			f->count = 0;
			f->last_dropped = 0;
			f->last_depart_ns = 0;
		}
		f->last_seen_ns = now;
		return f;
	}
	if (w->flow_used + 1 > w->flow_slots / 2) {
		if (now < w->flows_full_until) {
			w->overflow.last_seen_ns = now;
			return &w->overflow;
		}
		/* Half full: drop the idle flows; grow if the live ones still fill a quarter. */
		uint32_t live = 0;
		for (uint32_t i = 0; i < w->flow_slots; i++)
			live += w->flows[i].key && !flow_idle(&w->flows[i], now);
		int ok;
		if (live + 1 > w->flow_slots / 4 && w->flow_slots < FLOW_MAX_SLOTS)
			ok = flows_rebuild(w, now, 2) == 0;
		else
			ok = flows_rebuild(w, now, 1) == 0;
		if (!ok || w->flow_used + 1 > w->flow_slots / 2) {
			/* Every slot holds an active flow (or memory ran out): new flows share one
			 * entry until some go idle (looked for again in a second, not per packet). */
			w->flows_full_until = now + 1000000000ull;
			w->overflow.last_seen_ns = now;
			return &w->overflow;
		}
		f = probe(w->flows, w->flow_slots, key);
	}
	memset(f, 0, sizeof(*f));
	f->key = key;
	f->last_seen_ns = now;
	w->flow_used++;
	return f;
}

/* ---- buffers ------------------------------------------------------------------------ */

static struct pkt *pool_get(struct pb_wire *w, struct pool *p)
{
	if (!p->free) {
		/* Take back what the send thread has sent. */
		pthread_mutex_lock(&w->q_lock);
		struct pkt **ret = p == &w->small ? &w->ret_small : &w->ret_large;
		p->free = *ret;
		*ret = NULL;
		pthread_mutex_unlock(&w->q_lock);
		p->nfree = 0;
		for (struct pkt *b = p->free; b; b = b->next)
			p->nfree++;
	}
	struct pkt *b = p->free;
	if (b) {
		p->free = b->next;
		p->nfree--;
		return b;
	}
	b = malloc(sizeof(*b) + p->cap);
	if (b)
		b->cap = p->cap;
	return b;
}

static void pool_put(struct pb_wire *w, struct pkt *b)
{
	struct pool *p = b->cap == w->small.cap ? &w->small : &w->large;
	if (p->nfree >= p->keep) {
		free(b);
		return;
	}
	b->next = p->free;
	p->free = b;
	p->nfree++;
}

static void pool_drain(struct pkt *b)
{
	while (b) {
		struct pkt *next = b->next;
		free(b);
		b = next;
	}
}

/* ---- the departure heap ------------------------------------------------------------- */

static int earlier(const struct pkt *a, const struct pkt *b)
{
	return a->depart_ns < b->depart_ns || (a->depart_ns == b->depart_ns && a->seq < b->seq);
}

static int heap_push(struct pb_wire *w, struct pkt *p)
{
	if (w->heap_len == w->heap_cap) {
		uint32_t cap = w->heap_cap ? w->heap_cap * 2 : 1024;
		struct pkt **h = realloc(w->heap, cap * sizeof(*h));
		if (!h)
			return -1;
		w->heap = h;
		w->heap_cap = cap;
	}
	p->seq = w->seq++;
	uint32_t i = w->heap_len++;
	while (i > 0) {
		uint32_t parent = (i - 1) / 2;
		if (!earlier(p, w->heap[parent]))
			break;
		w->heap[i] = w->heap[parent];
		i = parent;
	}
	w->heap[i] = p;
	w->queued_bytes += p->len;
	return 0;
}

static struct pkt *heap_pop(struct pb_wire *w)
{
	struct pkt *top = w->heap[0];
	struct pkt *last = w->heap[--w->heap_len];
	uint32_t i = 0, n = w->heap_len;
	for (;;) {
		uint32_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && earlier(w->heap[c + 1], w->heap[c]))
			c++;
		if (!earlier(w->heap[c], last))
			break;
		w->heap[i] = w->heap[c];
		i = c;
	}
	if (n)
		w->heap[i] = last;
	w->queued_bytes -= top->len;
	return top;
}

/* ---- sending ------------------------------------------------------------------------ */

/* Send `n` buffers with as few sendmmsg calls as the socket allows. Returns how many went. */
static uint64_t send_frames(struct pb_wire *w, struct pkt **bufs, int n, uint64_t *errors)
{
	uint64_t sent = 0;
	for (int i = 0; i < n; i++) {
		w->iov[i].iov_base = bufs[i]->data;
		w->iov[i].iov_len = bufs[i]->len;
		memset(&w->msgs[i], 0, sizeof(w->msgs[i]));
		w->msgs[i].msg_hdr.msg_iov = &w->iov[i];
		w->msgs[i].msg_hdr.msg_iovlen = 1;
	}
	int done = 0;
	while (done < n) {
		int r = sendmmsg(w->out_fd, w->msgs + done, (unsigned int)(n - done), MSG_DONTWAIT);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			/* The frame at `done` cannot go (a full socket buffer): count it, go on. */
			(*errors)++;
			r = 1;
		} else {
			sent += (uint64_t)r;
		}
		done += r;
	}
	return sent;
}

/* Return sent buffers to the wire thread's pools (it takes them when its own run out). */
static void give_back(struct pb_wire *w, struct pkt **bufs, int n)
{
	struct pkt *small = NULL, *large = NULL, *small_tail = NULL, *large_tail = NULL;
	for (int i = 0; i < n; i++) {
		struct pkt *b = bufs[i];
		struct pkt **head = b->cap == w->small.cap ? &small : &large;
		struct pkt **tail = b->cap == w->small.cap ? &small_tail : &large_tail;
		b->next = *head;
		if (!*head)
			*tail = b;
		*head = b;
	}
	pthread_mutex_lock(&w->q_lock);
	if (small) {
		small_tail->next = w->ret_small;
		w->ret_small = small;
	}
	if (large) {
		large_tail->next = w->ret_large;
		w->ret_large = large;
	}
	pthread_mutex_unlock(&w->q_lock);
}

static void *sender_main(void *arg)
{
	struct pb_wire *w = arg;
	struct pkt *batch[SEND_BATCH];
	for (;;) {
		/* Look for work a little before sleeping: a sleeping sender costs the reader a
		 * futex wake (an IPI) per hand-off. */
		for (uint64_t until = now_ns() + TX_SPIN_NS; !atomic_load_explicit(&w->q_pending, memory_order_acquire);)
			if (now_ns() > until)
				break;
		pthread_mutex_lock(&w->q_lock);
		while (!w->q_head && !w->q_stop) {
			w->sender_waiting = 1;
			pthread_cond_wait(&w->q_ready, &w->q_lock);
			w->sender_waiting = 0;
		}
		struct pkt *chain = w->q_head;
		w->q_head = w->q_tail = NULL;
		w->q_len = 0;
		atomic_store_explicit(&w->q_pending, 0, memory_order_relaxed);
		if (w->reader_waiting)
			pthread_cond_signal(&w->q_space);
		int stop = w->q_stop;
		pthread_mutex_unlock(&w->q_lock);
		if (!chain && stop)
			break;
		while (chain) {
			int n = 0;
			while (chain && n < SEND_BATCH) {
				batch[n++] = chain;
				chain = chain->next;
			}
			w->stats.tx += send_frames(w, batch, n, &w->stats.send_errors);
			give_back(w, batch, n);
		}
	}
	return NULL;
}

static void start_sender(struct pb_wire *w)
{
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 << 10);
	if (pthread_create(&w->sender, &attr, sender_main, w) == 0) {
		pthread_setname_np(w->sender, "pbwire-tx");
		w->split = 1;
	}
	pthread_attr_destroy(&attr);
}

/* Send this round's frames: here, or through the send thread (in order either way: once the
 * send thread exists, every frame goes through it). */
static void flush_out(struct pb_wire *w)
{
	if (!w->nout)
		return;
	if (!w->split) {
		w->stats.tx += send_frames(w, w->out, w->nout, &w->stats.send_errors);
		for (int i = 0; i < w->nout; i++)
			pool_put(w, w->out[i]);
		w->nout = 0;
		return;
	}
	for (int i = 0; i + 1 < w->nout; i++)
		w->out[i]->next = w->out[i + 1];
	w->out[w->nout - 1]->next = NULL;
	pthread_mutex_lock(&w->q_lock);
	while (w->q_len > HANDOFF_MAX && !w->q_stop) {
		/* The send thread is far behind: wait (the TAP's queue holds what arrives). */
		w->reader_waiting = 1;
		pthread_cond_wait(&w->q_space, &w->q_lock);
		w->reader_waiting = 0;
	}
	if (w->q_tail)
		w->q_tail->next = w->out[0];
	else
		w->q_head = w->out[0];
	w->q_tail = w->out[w->nout - 1];
	w->q_len += (uint32_t)w->nout;
	atomic_store_explicit(&w->q_pending, 1, memory_order_release);
	if (w->sender_waiting)
		pthread_cond_signal(&w->q_ready);
	pthread_mutex_unlock(&w->q_lock);
	w->nout = 0;
}

static void send_now(struct pb_wire *w, struct pkt *b)
{
	if (w->nout == SEND_BATCH)
		flush_out(w);
	w->out[w->nout++] = b;
}

static void send_due(struct pb_wire *w, uint64_t now, int all)
{
	while (w->heap_len && (all || w->heap[0]->depart_ns <= now))
		send_now(w, heap_pop(w));
}

/* ---- deciding ----------------------------------------------------------------------- */

/* Where the payload of a TCP/UDP/other IPv4 or IPv6 packet starts (0: not corruptible). */
static uint32_t payload_offset(const unsigned char *f, uint32_t len)
{
	if (len < 14)
		return 0;
	uint16_t type = (uint16_t)(f[12] << 8 | f[13]);
	uint32_t off = 14, l4 = 0;
	uint8_t proto;
	if (type == ETH_P_IP && len >= 34) {
		off += (f[14] & 15u) * 4u;
		proto = f[23];
	} else if (type == ETH_P_IPV6 && len >= 54) {
		off += 40;
		proto = f[20];
	} else {
		return 0;
	}
	if (proto == 17)
		l4 = 8;
	else if (proto == 6 && len >= off + 13)
		l4 = (uint32_t)(f[off + 12] >> 4) * 4u;
	else if (proto == 1 || proto == 58)
		l4 = 8;
	else
		return 0;
	return off + l4 < len ? off + l4 : 0;
}

static struct pkt *copy_of(struct pb_wire *w, const struct pkt *b)
{
	struct pkt *c = pool_get(w, b->len <= w->small.cap ? &w->small : &w->large);
	if (c) {
		memcpy(c->data, b->data, b->len);
		c->len = b->len;
	}
	return c;
}

/* Hold a frame until `depart`. A small frame read into a large buffer moves to a small one,
 * so that delayed ACKs do not hold 64 KiB each. */
static void hold(struct pb_wire *w, struct pkt *b, uint64_t depart)
{
	if (w->queued_bytes + b->len > QUEUE_BYTES_MAX) {
		w->stats.dropped_queue++;
		pool_put(w, b);
		return;
	}
	if (b->cap != w->small.cap && b->len <= w->small.cap) {
		struct pkt *c = copy_of(w, b);
		if (c) {
			pool_put(w, b);
			b = c;
		}
	}
	b->depart_ns = depart;
	if (heap_push(w, b)) {
		w->stats.dropped_queue++;
		pool_put(w, b);
	}
}

/* `b` holds a virtio-net header and a frame; this decides its fate and takes it over. */
static void process(struct pb_wire *w, const struct pb_wire_params *p, struct pkt *b, uint64_t now)
{
	if (b->len <= VNET_HDR_LEN) {
		pool_put(w, b);
		return;
	}
	w->stats.rx++;
	unsigned char *frame = b->data + VNET_HDR_LEN;
	uint32_t flen = b->len - VNET_HDR_LEN;
	uint64_t key = flow_key(frame, flen);
	struct flow *fl = flow_of(w, key, now);
	uint64_t n = fl->count++;

	if (p->loss_ppm) {
		/* A two-state Markov chain whose drops average `loss` and whose lag-1 correlation is
		 * `corr`: P(drop | last dropped) = loss + corr(1 - loss), P(drop | last kept) =
		 * loss(1 - corr). (netem's "lean towards the previous draw" barely lengthens runs
		 * and shifts the average.) */
		double loss = p->loss_ppm / 1e6, corr = p->loss_corr_ppm / 1e6;
		double threshold = fl->last_dropped ? loss + corr * (1.0 - loss) : loss * (1.0 - corr);
		fl->last_dropped = draw(w->seed, key, n, 0) < threshold;
		if (fl->last_dropped) {
			w->stats.dropped_loss++;
			pool_put(w, b);
			return;
		}
	}
	if (p->corrupt_ppm && draw(w->seed, key, n, 1) < p->corrupt_ppm / 1e6) {
		/* Offloads are off whenever corruption is asked for: the checksum is complete. */
		uint32_t off = payload_offset(frame, flen);
		if (off) {
			uint64_t r = mix(w->seed ^ mix(key ^ mix(n * 8 + 2)));
			uint32_t byte = off + (uint32_t)(r % (flen - off));
			frame[byte] ^= (unsigned char)(1u << ((r >> 32) & 7));
			w->stats.corrupted++;
		}
	}
	struct pkt *copies[2] = {b, NULL};
	if (p->duplicate_ppm && draw(w->seed, key, n, 3) < p->duplicate_ppm / 1e6) {
		copies[1] = copy_of(w, b);
		if (copies[1])
			w->stats.duplicated++;
	}
	for (int c = 0; c < 2 && copies[c]; c++) {
		struct pkt *pk = copies[c];
		/* The bottleneck: a frame leaves the shaper after the ones before it, at rate_bps. */
		uint64_t ready = now;
		if (p->rate_bps) {
			uint64_t start = w->link_free_ns > now ? w->link_free_ns : now;
			if (start - now > (uint64_t)p->queue_ms * 1000000ull) {
				w->stats.dropped_queue++;
				pool_put(w, pk);
				continue;
			}
			w->link_free_ns = start + (uint64_t)flen * 8ull * 1000000000ull / p->rate_bps;
			ready = w->link_free_ns;
		}
		uint64_t depart;
		if (p->reorder_ppm && draw(w->seed, key, n, 4 + (uint64_t)c) < p->reorder_ppm / 1e6) {
			/* Sent as soon as the bottleneck lets it: it overtakes whatever is being
			 * delayed (the heap orders by departure, not by arrival). */
			w->stats.reordered++;
			depart = ready;
		} else {
			int64_t delay = (int64_t)p->latency_us * 1000;
			if (p->jitter_us)
				delay += (int64_t)((draw(w->seed, key, n, 6 + (uint64_t)c) * 2.0 - 1.0) *
						   p->jitter_us * 1000.0);
			if (delay < 0)
				delay = 0;
			depart = ready + (uint64_t)delay;
			/* Jitter never reorders a flow: its frame leaves no earlier than its last one. */
			if (depart < fl->last_depart_ns)
				depart = fl->last_depart_ns;
			fl->last_depart_ns = depart;
		}
		/* Everything due by `now` left the heap at the start of this round, and what
		 * joined it since departs later: sending now keeps every flow's order. */
		if (depart <= now)
			send_now(w, pk);
		else
			hold(w, pk, depart);
	}
}

/* Read one frame into a buffer of this wire's current size class. */
static struct pkt *read_frame(struct pb_wire *w, int *again)
{
	int large = atomic_load(&w->offload);
	struct pkt *b = pool_get(w, large ? &w->large : &w->small);
	if (!b) {
		*again = 0;
		return NULL;
	}
	struct iovec iov[2] = {{b->data, b->cap}, {w->scratch, MAX_FRAME}};
	ssize_t n = readv(w->tap_fd, iov, large ? 1 : 2);
	if (n <= 0) {
		*again = 0;
		pool_put(w, b);
		return NULL;
	}
	if ((size_t)n > b->cap) {
		/* Larger than a frame of the link's MTU (a GSO packet read as offloads changed). */
		struct pkt *big = pool_get(w, &w->large);
		if (!big || (size_t)n > big->cap) {
			if (big)
				pool_put(w, big);
			pool_put(w, b);
			w->stats.dropped_queue++;
			return NULL;
		}
		memcpy(big->data, b->data, b->cap);
		memcpy(big->data + b->cap, w->scratch, (size_t)n - b->cap);
		pool_put(w, b);
		b = big;
	}
	b->len = (uint32_t)n;
	return b;
}

static void *wire_main(void *arg)
{
	struct pb_wire *w = arg;
	/* Timers of this thread fire when asked, not up to 50 us later. */
	prctl(PR_SET_TIMERSLACK, 1000UL);
	uint64_t busy_until = 0;
	while (!atomic_load(&w->stop)) {
		struct pb_wire_params p;
		pthread_mutex_lock(&w->lock);
		p = w->params;
		pthread_mutex_unlock(&w->lock);

		uint64_t now = now_ns();
		send_due(w, now, 0);
		flush_out(w);
		struct pollfd fds[2] = {{.fd = w->tap_fd, .events = POLLIN}, {.fd = w->wake_fd, .events = POLLIN}};
		struct timespec ts, *tsp = NULL;
		uint64_t wait = UINT64_MAX;
		if (w->heap_len)
			wait = w->heap[0]->depart_ns > now ? w->heap[0]->depart_ns - now : 0;
		if (now < busy_until)
			wait = 0; /* traffic is flowing: look again rather than sleep */
		if (wait != UINT64_MAX) {
			ts.tv_sec = (time_t)(wait / 1000000000ull);
			ts.tv_nsec = (long)(wait % 1000000000ull);
			tsp = &ts;
		}
		int r = ppoll(fds, 2, tsp, NULL);
		if (r < 0 && errno != EINTR)
			break;
		if (fds[1].revents & POLLIN) {
			uint64_t v;
			if (read(w->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				break;
		}
		if (!(fds[0].revents & POLLIN))
			continue;
		/* One timestamp for the round: the frames of a round arrived together. */
		now = now_ns();
		send_due(w, now, 0);
		int got = 0, again = 1;
		while (again && got < READ_BATCH) {
			struct pkt *b = read_frame(w, &again);
			if (!b)
				continue;
			got++;
			process(w, &p, b, now);
		}
		/* Heavy traffic of wire-sized frames: the forwarding behind them moves to a thread of
		 * its own. (Whole GSO packets cost little per byte; a hand-off would move each 64 KiB
		 * buffer across CPUs for nothing.) */
		if (got >= SPLIT_AT && !w->split && !atomic_load(&w->offload)) {
			flush_out(w); /* what this thread sends, it sends before the send thread starts */
			start_sender(w);
		}
		flush_out(w);
		if (got)
			busy_until = now + SPIN_NS;
	}
	/* Removing a condition must not lose what is in flight: send it now. */
	send_due(w, 0, 1);
	flush_out(w);
	return NULL;
}

/* ---- set-up ------------------------------------------------------------------------- */

static int open_tap_here(const char *name, int *ifindex)
{
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	struct ifreq ifr = {0};
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0)
		goto fail;
	/* Up, with a queue deep enough for bursts between two reads. */
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		goto fail;
	struct ifreq q = {0};
	snprintf(q.ifr_name, IFNAMSIZ, "%s", name);
	q.ifr_qlen = 10000;
	ioctl(s, SIOCSIFTXQLEN, &q);
	struct ifreq up = {0};
	snprintf(up.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(s, SIOCGIFFLAGS, &up) < 0 || (up.ifr_flags |= IFF_UP, ioctl(s, SIOCSIFFLAGS, &up) < 0) ||
	    ioctl(s, SIOCGIFINDEX, &up) < 0) {
		int e = -errno;
		close(s);
		close(fd);
		return e;
	}
	*ifindex = up.ifr_ifindex;
	close(s);
	return fd;
fail:;
	int e = -errno;
	close(fd);
	return e;
}

static int open_injector_here(int ifindex)
{
	int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1, sndbuf = 4 << 20;
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = ifindex};
	int mark = PB_WIRE_MARK;
	if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) ||
	    setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) ||
	    bind(fd, (struct sockaddr *)&sll, sizeof(sll))) {
		int e = -errno;
		close(fd);
		return e;
	}
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	return fd;
}

static void wire_release(struct pb_wire *w)
{
	if (w->tap_fd >= 0)
		close(w->tap_fd);
	if (w->out_fd >= 0)
		close(w->out_fd);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	while (w->heap_len)
		free(heap_pop(w));
	free(w->heap);
	pool_drain(w->small.free);
	pool_drain(w->large.free);
	pool_drain(w->ret_small);
	pool_drain(w->ret_large);
	free(w->flows);
	free(w->scratch);
	pthread_mutex_destroy(&w->lock);
	pthread_mutex_destroy(&w->q_lock);
	pthread_cond_destroy(&w->q_ready);
	pthread_cond_destroy(&w->q_space);
	free(w);
}

struct pb_wire *pb_wire_new(int ns_fd, int home_fd, const char *tap_name, int out_ifindex, int mtu,
			    uint64_t seed, char *err, size_t errlen)
{
	struct pb_wire *w = calloc(1, sizeof(*w));
	if (!w) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	w->tap_fd = w->out_fd = w->wake_fd = -1;
	w->seed = seed;
	pthread_mutex_init(&w->lock, NULL);
	pthread_mutex_init(&w->q_lock, NULL);
	pthread_cond_init(&w->q_ready, NULL);
	pthread_cond_init(&w->q_space, NULL);
	/* Per-packet frames fit the link's MTU (an Ethernet header, a VLAN tag, slack); whole GSO
	 * packets take a large buffer. */
	uint32_t link_mtu = mtu > 0 ? (uint32_t)mtu : 1500;
	w->small = (struct pool){.keep = KEEP_SMALL, .cap = (VNET_HDR_LEN + 14 + 4 + link_mtu + 63) & ~63u};
	w->large = (struct pool){.keep = KEEP_LARGE, .cap = MAX_FRAME};
	w->flow_slots = FLOW_MIN_SLOTS;
	w->flows = calloc(w->flow_slots, sizeof(*w->flows));
	w->scratch = malloc(MAX_FRAME);
	w->overflow.key = 1;
	if (!w->flows || !w->scratch) {
		snprintf(err, errlen, "out of memory");
		wire_release(w);
		return NULL;
	}
	if (setns(ns_fd, CLONE_NEWNET)) {
		snprintf(err, errlen, "setns: %s", strerror(errno));
		wire_release(w);
		return NULL;
	}
	int r = open_tap_here(tap_name, &w->tap_ifindex);
	if (r < 0) {
		snprintf(err, errlen, "open TAP %s through /dev/net/tun: %s", tap_name, strerror(-r));
	} else {
		w->tap_fd = r;
		r = open_injector_here(out_ifindex);
		if (r < 0)
			snprintf(err, errlen, "AF_PACKET socket on ifindex %d: %s", out_ifindex, strerror(-r));
		else
			w->out_fd = r;
	}
	if (setns(home_fd, CLONE_NEWNET)) {
		snprintf(err, errlen, "setns back home: %s", strerror(errno));
		wire_release(w);
		return NULL;
	}
	if (r < 0) {
		wire_release(w);
		return NULL;
	}
	w->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->wake_fd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		wire_release(w);
		return NULL;
	}
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 << 10);
	int terr = pthread_create(&w->thread, &attr, wire_main, w);
	pthread_attr_destroy(&attr);
	if (terr) {
		snprintf(err, errlen, "start the wire thread: %s", strerror(terr));
		wire_release(w);
		return NULL;
	}
	pthread_setname_np(w->thread, "pbwire");
	return w;
}

int pb_wire_tap_ifindex(struct pb_wire *w)
{
	return w->tap_ifindex;
}

void pb_wire_set(struct pb_wire *w, const struct pb_wire_params *p)
{
	/* Per-packet decisions need real packets; delays alone can move GSO packets whole. The
	 * checksum may stay partial (the receiver trusts it) unless corruption needs it made. */
	int offload = !(p->loss_ppm || p->reorder_ppm || p->duplicate_ppm || p->corrupt_ppm || p->rate_bps);
	unsigned int flags = offload ? TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
			   : p->corrupt_ppm ? 0 : TUN_F_CSUM;
	if (flags != w->tun_flags) {
		if (ioctl(w->tap_fd, TUNSETOFFLOAD, flags) == 0) {
			w->tun_flags = flags;
			atomic_store(&w->offload, offload);
		}
	}
	pthread_mutex_lock(&w->lock);
	w->params = *p;
	pthread_mutex_unlock(&w->lock);
	uint64_t one = 1;
	if (write(w->wake_fd, &one, sizeof(one)) < 0) {
		/* The wire picks the new parameters up on its next packet anyway. */
	}
}

void pb_wire_stats(struct pb_wire *w, struct pb_wire_stats *out)
{
	*out = w->stats;
	out->queued = w->heap_len;
}

void pb_wire_free(struct pb_wire *w)
{
	if (!w)
		return;
	atomic_store(&w->stop, 1);
	uint64_t one = 1;
	if (write(w->wake_fd, &one, sizeof(one)) < 0) {
		/* ppoll wakes on its timeout anyway */
	}
	pthread_join(w->thread, NULL);
	if (w->split) {
		pthread_mutex_lock(&w->q_lock);
		w->q_stop = 1;
		pthread_cond_signal(&w->q_ready);
		pthread_mutex_unlock(&w->q_lock);
		pthread_join(w->sender, NULL);
	}
	wire_release(w);
}
