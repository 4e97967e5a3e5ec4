/* Packet capture: one interface of one namespace into a pcapng file, no tcpdump.
 *
 * The socket: AF_PACKET, made inside the namespace (a socket belongs to the namespace it was
 * made in for its whole life, so only the set-up steps in; the capture thread lives wherever
 * its creator lived), bound to the interface with ETH_P_ALL, which delivers both what the
 * interface receives and what it sends (PACKET_OUTGOING). It is made with protocol 0 and only
 * starts receiving at bind(2), once the ring and the filter are in place: no packet of
 * another interface ever slips in.
 *
 * The ring: TPACKET_V3, blocks of variable-size frames the kernel fills and hands over whole
 * (a block is handed over when full or after BLOCK_TOV_MS), so the thread wakes per block,
 * not per packet, and copies each packet once, into the output buffer. The snap length is a
 * one-instruction classic BPF filter ("return snaplen"), which is how the kernel truncates
 * packets for libpcap too; the original length stays in the frame header.
 *
 * The file: pcapng (draft-ietf-opsawg-pcapng). The Section Header Block and the Interface
 * Description Block are written before start returns; then every handed-over block becomes
 * Enhanced Packet Blocks written with one write(2) per round, whole blocks only, so a reader
 * sees a valid file whenever it looks.
 */
#define _GNU_SOURCE
#include "capture.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h> /* before the linux/ headers, which then leave struct ifreq to it */
#include <net/if_arp.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BLOCK_SIZE (1u << 20) /* holds the largest GSO packet with room to spare */
#define BLOCK_NR 8u	      /* 8 MiB of ring: ~65 ms of a saturated gigabit link */
#define FRAME_SIZE 2048u      /* V3 frames are variable; the kernel only checks the arithmetic */
#define BLOCK_TOV_MS 16u      /* a partly filled block is handed over after this long */
#define OUT_CAP (2u << 20)    /* output buffer: flushed every round, or when full */
#define DEFAULT_SNAPLEN 262144u

/* pcapng block types and options */
#define PCAPNG_SHB 0x0A0D0D0Au
#define PCAPNG_IDB 0x00000001u
#define PCAPNG_EPB 0x00000006u
#define PCAPNG_BYTE_ORDER_MAGIC 0x1A2B3C4Du
#define OPT_ENDOFOPT 0
#define OPT_SHB_USERAPPL 4
#define OPT_IF_NAME 2
#define OPT_IF_TSRESOL 9
#define OPT_EPB_FLAGS 2
#define LINKTYPE_ETHERNET 1
#define LINKTYPE_RAW 101

struct pb_capture {
	int sock_fd, file_fd, wake_fd;
	int linktype;
	uint32_t snaplen;
	unsigned char *ring;
	size_t ring_len;
	uint32_t block; /* the next block to read */
	pthread_t thread;
	int thread_started;
	atomic_int stop;
	pthread_mutex_t stop_lock; /* pb_capture_stop may be called from two threads at once */
	int stopped;
	int result;

	unsigned char *out; /* Enhanced Packet Blocks not yet written */
	size_t out_len;
	uint64_t out_packets, out_bytes; /* what `out` holds */

	_Atomic uint64_t packets, bytes, dropped, write_errors;
	atomic_int last_errno;
};

static size_t pad4(size_t n)
{
	return (n + 3u) & ~(size_t)3u;
}

static void put32(unsigned char *p, uint32_t v)
{
	memcpy(p, &v, 4); /* pcapng is written in host byte order (the SHB's magic says which) */
}

static void put16(unsigned char *p, uint16_t v)
{
	memcpy(p, &v, 2);
}

/* Append an option (code, length, value padded to 4 bytes) at p; returns its size. */
static size_t put_opt(unsigned char *p, uint16_t code, const void *val, uint16_t len)
{
	put16(p, code);
	put16(p + 2, len);
	memcpy(p + 4, val, len);
	memset(p + 4 + len, 0, pad4(len) - len);
	return 4 + pad4(len);
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* The Section Header Block and the Interface Description Block. */
static int write_header(int fd, const char *ifname, int linktype, uint32_t snaplen)
{
	unsigned char buf[512];
	size_t n = 0;
	static const char appl[] = "patchbay";

	/* SHB: type, length, magic, version 1.0, section length unknown (-1), options, length */
	put32(buf, PCAPNG_SHB);
	put32(buf + 8, PCAPNG_BYTE_ORDER_MAGIC);
	put16(buf + 12, 1);
	put16(buf + 14, 0);
	memset(buf + 16, 0xff, 8);
	n = 24;
	n += put_opt(buf + n, OPT_SHB_USERAPPL, appl, (uint16_t)strlen(appl));
	n += put_opt(buf + n, OPT_ENDOFOPT, NULL, 0);
	put32(buf + n, (uint32_t)(n + 4));
	n += 4;
	put32(buf + 4, (uint32_t)n);

	/* IDB: type, length, link type, reserved, snaplen, if_name, if_tsresol (10^-9), length */
	size_t start = n;
	put32(buf + n, PCAPNG_IDB);
	put16(buf + n + 8, (uint16_t)linktype);
	put16(buf + n + 10, 0);
	put32(buf + n + 12, snaplen);
	n += 16;
	n += put_opt(buf + n, OPT_IF_NAME, ifname, (uint16_t)strnlen(ifname, IFNAMSIZ));
	uint8_t tsresol = 9;
	n += put_opt(buf + n, OPT_IF_TSRESOL, &tsresol, 1);
	n += put_opt(buf + n, OPT_ENDOFOPT, NULL, 0);
	uint32_t idb_len = (uint32_t)(n + 4 - start);
	put32(buf + n, idb_len);
	n += 4;
	put32(buf + start + 4, idb_len);
	return write_all(fd, buf, n);
}

static void flush_out(struct pb_capture *c)
{
	if (!c->out_len)
		return;
	int r = write_all(c->file_fd, c->out, c->out_len);
	if (r) {
		atomic_fetch_add(&c->write_errors, 1);
		atomic_store(&c->last_errno, -r);
		c->result = r;
	} else {
		/* Counted once they are in the file: `packets` is what a reader finds there. */
		atomic_fetch_add(&c->packets, c->out_packets);
		atomic_fetch_add(&c->bytes, c->out_bytes);
	}
	c->out_len = 0;
	c->out_packets = c->out_bytes = 0;
}

/* epb_flags: direction in bits 0-1 (1 inbound, 2 outbound), reception type in bits 2-4. */
static uint32_t epb_flags(unsigned char pkttype)
{
	switch (pkttype) {
	case PACKET_HOST:
		return 1u | 1u << 2;
	case PACKET_MULTICAST:
		return 1u | 2u << 2;
	case PACKET_BROADCAST:
		return 1u | 3u << 2;
	case PACKET_OTHERHOST:
		return 1u | 4u << 2;
	case PACKET_OUTGOING:
		return 2u;
	default:
		return 0;
	}
}

static void add_packet(struct pb_capture *c, const struct tpacket3_hdr *h)
{
	const struct sockaddr_ll *sll =
		(const struct sockaddr_ll *)((const unsigned char *)h + TPACKET_ALIGN(sizeof(*h)));
	const unsigned char *data = (const unsigned char *)h + h->tp_mac;
	uint32_t caplen = h->tp_snaplen;
	size_t need = 28 + pad4(caplen) + 8 + 4 + 4;
	if (need > OUT_CAP - c->out_len)
		flush_out(c);
	if (need > OUT_CAP) /* cannot happen: a ring block is smaller than the buffer */
		return;
	unsigned char *p = c->out + c->out_len;
	uint64_t ts = (uint64_t)h->tp_sec * 1000000000ull + h->tp_nsec;
	put32(p, PCAPNG_EPB);
	put32(p + 4, (uint32_t)need);
	put32(p + 8, 0); /* interface id: the only IDB */
	put32(p + 12, (uint32_t)(ts >> 32));
	put32(p + 16, (uint32_t)ts);
	put32(p + 20, caplen);
	put32(p + 24, h->tp_len);
	memcpy(p + 28, data, caplen);
	memset(p + 28 + caplen, 0, pad4(caplen) - caplen);
	size_t n = 28 + pad4(caplen);
	uint32_t flags = epb_flags(sll->sll_pkttype);
	n += put_opt(p + n, OPT_EPB_FLAGS, &flags, 4);
	n += put_opt(p + n, OPT_ENDOFOPT, NULL, 0);
	put32(p + n, (uint32_t)need);
	c->out_len += need;
	c->out_packets++;
	c->out_bytes += caplen;
}

static struct tpacket_block_desc *block_at(struct pb_capture *c, uint32_t i)
{
	return (struct tpacket_block_desc *)(c->ring + (size_t)i * BLOCK_SIZE);
}

/* Turn every block the kernel handed over into packet blocks, and give the blocks back. */
static void drain(struct pb_capture *c)
{
	for (;;) {
		struct tpacket_block_desc *bd = block_at(c, c->block);
		if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER))
			break;
		const unsigned char *p = (const unsigned char *)bd + bd->hdr.bh1.offset_to_first_pkt;
		for (uint32_t i = 0; i < bd->hdr.bh1.num_pkts; i++) {
			const struct tpacket3_hdr *h = (const struct tpacket3_hdr *)p;
			add_packet(c, h);
			p += h->tp_next_offset;
		}
		__atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
		c->block = (c->block + 1) % BLOCK_NR;
	}
}

/* Packets in the block the kernel is filling (not handed over yet). */
static uint32_t pending_in_current(struct pb_capture *c)
{
	return __atomic_load_n(&block_at(c, c->block)->hdr.bh1.num_pkts, __ATOMIC_ACQUIRE);
}

static void read_drops(struct pb_capture *c)
{
	struct tpacket_stats_v3 st;
	socklen_t len = sizeof(st);
	/* The kernel resets its counters on every read: add them up. */
	if (getsockopt(c->sock_fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0 && st.tp_drops)
		atomic_fetch_add(&c->dropped, st.tp_drops);
}

static uint64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static void *capture_main(void *arg)
{
	struct pb_capture *c = arg;
	uint64_t deadline = 0;
	for (;;) {
		drain(c);
		flush_out(c);
		read_drops(c);
		int timeout = 1000;
		if (atomic_load(&c->stop)) {
			/* Stopping: what the kernel still holds in its current block comes out within a
			 * block timeout; wait for it, but not forever. */
			if (!deadline)
				deadline = now_ms() + 3 * BLOCK_TOV_MS;
			if (!pending_in_current(c) || now_ms() >= deadline)
				break;
			timeout = (int)BLOCK_TOV_MS;
		}
		struct pollfd fds[2] = {{.fd = c->sock_fd, .events = POLLIN}, {.fd = c->wake_fd, .events = POLLIN}};
		int r = poll(fds, 2, timeout);
		if (r < 0 && errno != EINTR)
			break;
		if (fds[0].revents & POLLERR) {
			/* The interface went down (ENETDOWN) or away: clear the error and keep going, it
			 * may come back (the kernel re-attaches the socket when it is up again). */
			int e = 0;
			socklen_t len = sizeof(e);
			getsockopt(c->sock_fd, SOL_SOCKET, SO_ERROR, &e, &len);
		}
		if (fds[1].revents & POLLIN) {
			uint64_t v;
			if (read(c->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				break;
		}
	}
	drain(c);
	flush_out(c);
	read_drops(c);
	return NULL;
}

/* The names of the calling thread's namespace's interfaces, for an error message. */
static void list_ifaces(char *out, size_t outlen)
{
	struct if_nameindex *names = if_nameindex();
	size_t n = 0;
	out[0] = 0;
	if (!names)
		return;
	for (struct if_nameindex *i = names; i->if_index && n + 1 < outlen; i++) {
		int w = snprintf(out + n, outlen - n, "%s%s", n ? ", " : "", i->if_name);
		if (w < 0)
			break;
		n += (size_t)w;
	}
	if_freenameindex(names);
}

/* Inside the namespace: a packet socket on `ifname` with its ring mapped and its filter set,
 * not yet bound (returned in *ifindex). */
static int open_socket_here(struct pb_capture *c, const char *ifname, int *ifindex, char *err, size_t errlen)
{
	struct ifreq ifr = {0};
	if (strlen(ifname) >= IFNAMSIZ) {
		snprintf(err, errlen, "interface name %s is longer than %d bytes", ifname, IFNAMSIZ - 1);
		return -EINVAL;
	}
	int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		int e = -errno;
		snprintf(err, errlen, "AF_PACKET socket: %s (capturing needs CAP_NET_RAW)", strerror(errno));
		return e;
	}
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
	if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) {
		int e = -errno;
		char names[256];
		list_ifaces(names, sizeof(names));
		if (e == -ENODEV)
			snprintf(err, errlen, "no interface named %s in the namespace (it has: %s)", ifname,
				 names[0] ? names : "none");
		else
			snprintf(err, errlen, "look up interface %s: %s", ifname, strerror(-e));
		close(fd);
		return e;
	}
	*ifindex = ifr.ifr_ifindex;
	/* Ethernet-framed links (veth, bridges, macvlans, TAPs, lo) keep their link header; any
	 * other (TUN, tunnels) is captured from the network header on, as raw IP. */
	int type = ARPHRD_ETHER;
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) == 0)
		type = ifr.ifr_hwaddr.sa_family;
	if (type == ARPHRD_ETHER || type == ARPHRD_LOOPBACK) {
		c->linktype = LINKTYPE_ETHERNET;
	} else {
		close(fd);
		fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			int e = -errno;
			snprintf(err, errlen, "AF_PACKET socket: %s", strerror(errno));
			return e;
		}
		c->linktype = LINKTYPE_RAW;
	}
	int version = TPACKET_V3;
	struct tpacket_req3 req = {
		.tp_block_size = BLOCK_SIZE,
		.tp_block_nr = BLOCK_NR,
		.tp_frame_size = FRAME_SIZE,
		.tp_frame_nr = BLOCK_SIZE / FRAME_SIZE * BLOCK_NR,
		.tp_retire_blk_tov = BLOCK_TOV_MS,
	};
	struct sock_filter code[] = {BPF_STMT(BPF_RET | BPF_K, c->snaplen)};
	struct sock_fprog prog = {.len = 1, .filter = code};
	const char *what = "PACKET_VERSION (TPACKET_V3)";
	if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)))
		goto fail;
	what = "PACKET_RX_RING";
	if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)))
		goto fail;
	what = "SO_ATTACH_FILTER (snap length)";
	if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)))
		goto fail;
	what = "mmap of the packet ring";
	c->ring_len = (size_t)BLOCK_SIZE * BLOCK_NR;
	void *ring = mmap(NULL, c->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (ring == MAP_FAILED)
		goto fail;
	c->ring = ring;
	return fd;
fail:;
	int e = -errno;
	snprintf(err, errlen, "%s: %s", what, strerror(errno));
	close(fd);
	return e;
}

static void capture_release(struct pb_capture *c)
{
	if (c->ring)
		munmap(c->ring, c->ring_len);
	if (c->sock_fd >= 0)
		close(c->sock_fd);
	if (c->file_fd >= 0)
		close(c->file_fd);
	if (c->wake_fd >= 0)
		close(c->wake_fd);
	c->ring = NULL;
	c->sock_fd = c->file_fd = c->wake_fd = -1;
}

struct pb_capture *pb_capture_start(int ns_fd, int home_fd, const char *ifname, const char *path,
				    uint32_t snaplen, char *err, size_t errlen)
{
	struct pb_capture *c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	c->sock_fd = c->file_fd = c->wake_fd = -1;
	c->snaplen = snaplen ? snaplen : DEFAULT_SNAPLEN;
	pthread_mutex_init(&c->stop_lock, NULL);
	c->out = malloc(OUT_CAP);
	if (!c->out) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (setns(ns_fd, CLONE_NEWNET)) {
		snprintf(err, errlen, "setns into the namespace: %s", strerror(errno));
		goto fail;
	}
	int ifindex = 0;
	int r = open_socket_here(c, ifname, &ifindex, err, errlen);
	if (setns(home_fd, CLONE_NEWNET)) {
		/* The calling thread is stranded in the namespace: report it loudly. */
		snprintf(err, errlen, "setns back to the home namespace: %s", strerror(errno));
		if (r >= 0)
			close(r);
		goto fail;
	}
	if (r < 0)
		goto fail;
	c->sock_fd = r;
	c->file_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (c->file_fd < 0) {
		snprintf(err, errlen, "open %s for writing: %s", path, strerror(errno));
		goto fail;
	}
	r = write_header(c->file_fd, ifname, c->linktype, c->snaplen);
	if (r) {
		snprintf(err, errlen, "write %s: %s", path, strerror(-r));
		goto fail;
	}
	c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->wake_fd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		goto fail;
	}
	/* Reception starts here, with the ring and the snap-length filter already in place. */
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = ifindex};
	if (bind(c->sock_fd, (struct sockaddr *)&sll, sizeof(sll))) {
		snprintf(err, errlen, "bind the packet socket to %s: %s", ifname, strerror(errno));
		goto fail;
	}
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 128 << 10);
	int terr = pthread_create(&c->thread, &attr, capture_main, c);
	pthread_attr_destroy(&attr);
	if (terr) {
		snprintf(err, errlen, "start the capture thread: %s", strerror(terr));
		goto fail;
	}
	c->thread_started = 1;
	pthread_setname_np(c->thread, "pbcapture");
	return c;
fail:
	capture_release(c);
	free(c->out);
	pthread_mutex_destroy(&c->stop_lock);
	free(c);
	return NULL;
}

void pb_capture_stats(struct pb_capture *c, struct pb_capture_stats *out)
{
	out->packets = atomic_load(&c->packets);
	out->bytes = atomic_load(&c->bytes);
	out->dropped = atomic_load(&c->dropped);
	out->write_errors = atomic_load(&c->write_errors);
	out->last_errno = atomic_load(&c->last_errno);
}

int pb_capture_linktype(struct pb_capture *c)
{
	return c->linktype;
}

int pb_capture_stop(struct pb_capture *c)
{
	pthread_mutex_lock(&c->stop_lock);
	if (!c->stopped) {
		atomic_store(&c->stop, 1);
		uint64_t one = 1;
		if (write(c->wake_fd, &one, sizeof(one)) < 0) {
			/* poll wakes on its own timeout anyway */
		}
		if (c->thread_started)
			pthread_join(c->thread, NULL);
		capture_release(c);
		c->stopped = 1;
	}
	int result = c->result;
	pthread_mutex_unlock(&c->stop_lock);
	return result;
}

void pb_capture_free(struct pb_capture *c)
{
	if (!c)
		return;
	pb_capture_stop(c);
	free(c->out);
	pthread_mutex_destroy(&c->stop_lock);
	free(c);
}
