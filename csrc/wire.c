/* The wire: a userspace link emulator for kernels without sch_netem.
 *
 * One wire shapes one direction of one link. A tc filter redirects the link's packets into a
 * TAP device the wire reads; each packet then meets, in order:
 *   loss (correlated as a two-state Markov chain), corruption (one bit of the payload flipped after the
 *   checksums were made), duplication, a bottleneck of `rate_bps` with a bounded queue, and a
 *   delay of latency +- jitter (uniform). Departures keep arrival order unless the packet was
 *   picked for reordering, which sends it at once, ahead of the delayed ones.
 * At its departure time the frame goes out of the link with an AF_PACKET socket that bypasses
 * the qdisc layer (PACKET_QDISC_BYPASS), so it does not meet the redirecting filter again.
 *
 * Every random decision comes from the wire's own generator, keyed per flow (addresses, ports,
 * protocol) and per packet of that flow: with a fixed seed, a flow sees the same decisions on
 * every run, whatever else crosses the link.
 *
 * Frames carry a virtio-net header through the TAP and the packet socket. When a condition
 * needs per-packet decisions (loss, duplication, corruption, reordering, a rate), the TAP
 * advertises no offloads, so the kernel segments GSO packets and completes checksums before
 * handing them over: the wire sees real, checksummed wire packets. With only latency and
 * jitter, offloads are on and whole GSO packets (with partial checksums) pass through, as
 * they do through the kernel without the wire.
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
#include <time.h>
#include <unistd.h>

#define FLOW_SLOTS 4096
#define READ_BATCH 32
#define VNET_HDR_LEN ((uint32_t)sizeof(struct virtio_net_hdr))
#define MAX_FRAME 65600

struct packet {
	struct packet *next;
	uint64_t depart_ns;
	uint32_t len;
	unsigned char data[];
};

struct flow {
	uint64_t key;
	uint64_t count;
	int last_dropped;
};

struct pb_wire {
	int tap_fd, out_fd, wake_fd, tap_ifindex;
	int offload; /* TAP offloads on: whole GSO packets pass */
	pthread_t thread;
	atomic_int stop;
	pthread_mutex_t lock; /* guards params */
	struct pb_wire_params params;
	uint64_t seed;
	/* Delayed packets, in departure order. */
	struct packet *head, *tail;
	uint32_t queued_pkts;
	uint64_t queued_bytes;
	uint64_t link_free_ns; /* when the bottleneck finishes sending what it has */
	uint64_t last_depart_ns;
	struct flow flows[FLOW_SLOTS];
	struct pb_wire_stats stats;
	/* Frames read in one round, and the ones due now, go out with one sendmmsg. */
	uint32_t frame_max;
	unsigned char *rbuf;	     /* READ_BATCH read buffers of frame_max bytes */
	struct mmsghdr out[READ_BATCH];
	struct iovec iov[READ_BATCH];
	struct packet *sent[READ_BATCH]; /* queued packets in this send batch, freed after it */
	int nout;
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
 * ethertype for anything else. */
static uint64_t flow_key(const unsigned char *f, uint32_t len)
{
	if (len < 14)
		return 0;
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
	return h;
}

static struct flow *flow_of(struct pb_wire *w, uint64_t key)
{
	struct flow *slot = &w->flows[key % FLOW_SLOTS];
	if (slot->key != key) {
		/* A new flow (or one evicted by a collision) starts its draws from zero. */
		slot->key = key;
		slot->count = 0;
		slot->last_dropped = 0;
	}
	return slot;
}

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

static void flush_out(struct pb_wire *w)
{
	int done = 0;
	while (done < w->nout) {
		int n = sendmmsg(w->out_fd, w->out + done, (unsigned int)(w->nout - done), MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			/* The frame at `done` cannot go (a full socket buffer): count it, go on. */
			w->stats.send_errors++;
			n = 1;
		} else {
			w->stats.tx += (uint64_t)n;
		}
		done += n;
	}
	for (int i = 0; i < w->nout; i++) {
		free(w->sent[i]);
		w->sent[i] = NULL;
	}
	w->nout = 0;
}

/* Add a frame to the send batch. `owned` (a queued packet) is freed once the batch is sent;
 * otherwise `data` must stay valid until then (a read buffer of this round). */
static void send_frame(struct pb_wire *w, unsigned char *data, uint32_t len, struct packet *owned)
{
	if (w->nout == READ_BATCH)
		flush_out(w);
	int i = w->nout++;
	w->iov[i].iov_base = data;
	w->iov[i].iov_len = len;
	memset(&w->out[i], 0, sizeof(w->out[i]));
	w->out[i].msg_hdr.msg_iov = &w->iov[i];
	w->out[i].msg_hdr.msg_iovlen = 1;
	w->sent[i] = owned;
}

static void enqueue(struct pb_wire *w, const unsigned char *data, uint32_t len, uint64_t depart)
{
	struct packet *p = malloc(sizeof(*p) + len);
	if (!p) {
		w->stats.dropped_queue++;
		return;
	}
	memcpy(p->data, data, len);
	p->len = len;
	p->depart_ns = depart;
	p->next = NULL;
	if (w->tail)
		w->tail->next = p;
	else
		w->head = p;
	w->tail = p;
	w->queued_pkts++;
	w->queued_bytes += len;
}

/* Send a frame of this round now: the first copy straight from the read buffer, a duplicate
 * from its own copy (the batch may hold both). */
static void send_now(struct pb_wire *w, unsigned char *data, uint32_t len, int copy)
{
	if (!copy) {
		send_frame(w, data, len, NULL);
		return;
	}
	struct packet *p = malloc(sizeof(*p) + len);
	if (!p) {
		w->stats.dropped_queue++;
		return;
	}
	memcpy(p->data, data, len);
	p->len = len;
	send_frame(w, p->data, len, p);
}

/* `data` is a virtio-net header and a frame, `len` both. */
static void process(struct pb_wire *w, const struct pb_wire_params *p, unsigned char *data, uint32_t len,
		    uint64_t now)
{
	if (len <= VNET_HDR_LEN)
		return;
	w->stats.rx++;
	unsigned char *frame = data + VNET_HDR_LEN;
	uint32_t flen = len - VNET_HDR_LEN;
	struct flow *fl = flow_of(w, flow_key(frame, flen));
	uint64_t n = fl->count++;
	uint64_t key = fl->key;

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
	int copies = 1;
	if (p->duplicate_ppm && draw(w->seed, key, n, 3) < p->duplicate_ppm / 1e6) {
		copies = 2;
		w->stats.duplicated++;
	}
	for (int c = 0; c < copies; c++) {
		/* The bottleneck: a frame leaves the shaper after the ones before it, at rate_bps. */
		uint64_t ready = now;
		if (p->rate_bps) {
			uint64_t start = w->link_free_ns > now ? w->link_free_ns : now;
			if (start - now > (uint64_t)p->queue_ms * 1000000ull) {
				w->stats.dropped_queue++;
				continue;
			}
			w->link_free_ns = start + (uint64_t)flen * 8ull * 1000000000ull / p->rate_bps;
			ready = w->link_free_ns;
		}
		if (p->reorder_ppm && draw(w->seed, key, n, 4 + (uint64_t)c) < p->reorder_ppm / 1e6) {
			/* Sent at once: it overtakes whatever is being delayed. */
			w->stats.reordered++;
			if (ready <= now)
				send_now(w, data, len, c);
			else
				enqueue(w, data, len, ready);
			continue;
		}
		int64_t delay = (int64_t)p->latency_us * 1000;
		if (p->jitter_us)
			delay += (int64_t)((draw(w->seed, key, n, 6 + (uint64_t)c) * 2.0 - 1.0) * p->jitter_us * 1000.0);
		if (delay < 0)
			delay = 0;
		uint64_t depart = ready + (uint64_t)delay;
		/* Jitter never reorders: a frame leaves no earlier than the one before it. */
		if (depart < w->last_depart_ns)
			depart = w->last_depart_ns;
		w->last_depart_ns = depart;
		if (depart <= now && !w->head)
			send_now(w, data, len, c);
		else
			enqueue(w, data, len, depart);
	}
}

static void send_due(struct pb_wire *w, uint64_t now, int all)
{
	while (w->head && (all || w->head->depart_ns <= now)) {
		struct packet *p = w->head;
		w->head = p->next;
		if (!w->head)
			w->tail = NULL;
		w->queued_pkts--;
		w->queued_bytes -= p->len;
		send_frame(w, p->data, p->len, p);
	}
	flush_out(w);
}

static void *wire_main(void *arg)
{
	struct pb_wire *w = arg;
	/* Timers of this thread fire when asked, not up to 50 us later. */
	prctl(PR_SET_TIMERSLACK, 1000UL);
	while (!atomic_load(&w->stop)) {
		struct pb_wire_params p;
		pthread_mutex_lock(&w->lock);
		p = w->params;
		pthread_mutex_unlock(&w->lock);

		uint64_t now = now_ns();
		send_due(w, now, 0);
		struct pollfd fds[2] = {{.fd = w->tap_fd, .events = POLLIN}, {.fd = w->wake_fd, .events = POLLIN}};
		struct timespec ts, *tsp = NULL;
		if (w->head) {
			uint64_t wait = w->head->depart_ns > now ? w->head->depart_ns - now : 0;
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
		if (fds[0].revents & POLLIN) {
			now = now_ns();
			for (int i = 0; i < READ_BATCH; i++) {
				/* Each frame of the round keeps its buffer until the batch is sent. */
				unsigned char *buf = w->rbuf + (size_t)i * w->frame_max;
				ssize_t n = read(w->tap_fd, buf, w->frame_max);
				if (n <= 0)
					break;
				process(w, &p, buf, (uint32_t)n, now);
			}
			flush_out(w);
		}
	}
	/* Removing a condition must not lose what is in flight: send it now. */
	send_due(w, 0, 1);
	return NULL;
}

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
	if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) ||
	    bind(fd, (struct sockaddr *)&sll, sizeof(sll))) {
		int e = -errno;
		close(fd);
		return e;
	}
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	return fd;
}

struct pb_wire *pb_wire_new(int ns_fd, int home_fd, const char *tap_name, int out_ifindex, int mtu,
			    uint64_t seed, char *err, size_t errlen)
{
	struct pb_wire *w = calloc(1, sizeof(*w));
	/* Whole GSO packets pass while offloads are on: room for the largest. */
	uint32_t frame_max = MAX_FRAME;
	(void)mtu;
	if (w)
		w->rbuf = malloc((size_t)READ_BATCH * frame_max);
	if (!w || !w->rbuf) {
		free(w);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	w->frame_max = frame_max;
	w->tap_fd = w->out_fd = w->wake_fd = -1;
	w->seed = seed;
	pthread_mutex_init(&w->lock, NULL);
	if (setns(ns_fd, CLONE_NEWNET)) {
		snprintf(err, errlen, "setns: %s", strerror(errno));
		goto fail;
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
		goto fail;
	}
	if (r < 0)
		goto fail;
	w->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->wake_fd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		goto fail;
	}
	int terr = pthread_create(&w->thread, NULL, wire_main, w);
	if (terr) {
		snprintf(err, errlen, "start the wire thread: %s", strerror(terr));
		goto fail;
	}
	return w;
fail:
	if (w->tap_fd >= 0)
		close(w->tap_fd);
	if (w->out_fd >= 0)
		close(w->out_fd);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	free(w->rbuf);
	free(w);
	return NULL;
}

int pb_wire_tap_ifindex(struct pb_wire *w)
{
	return w->tap_ifindex;
}

void pb_wire_set(struct pb_wire *w, const struct pb_wire_params *p)
{
	/* Per-packet decisions need real packets; delays alone can move GSO packets whole. */
	int offload = !(p->loss_ppm || p->reorder_ppm || p->duplicate_ppm || p->corrupt_ppm || p->rate_bps);
	if (offload != w->offload) {
		unsigned int flags = offload ? TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN : 0;
		if (ioctl(w->tap_fd, TUNSETOFFLOAD, flags) == 0)
			w->offload = offload;
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
	out->queued = w->queued_pkts;
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
	close(w->tap_fd);
	close(w->out_fd);
	close(w->wake_fd);
	pthread_mutex_destroy(&w->lock);
	free(w->rbuf);
	free(w);
}
