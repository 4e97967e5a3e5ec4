/* The floor: the same lab wiring as patchbay_core, as a minimal C program over libmnl.
 *
 * IX namespace with a bridge; per router a namespace, a veth uplink into the IX bridge, a LAN
 * veth whose IX end is the lower of the devices' macvlans, a route for its pool in the IX;
 * per device a namespace with one macvlan. One netlink batch per namespace touched, acks
 * checked. Teardown: close every fd, wait until the IX holds nothing but lo and its bridge.
 *
 *   floor ROUTERS DEVICES_PER_ROUTER   ->  prints "build_ms teardown_ms"
 *
 * Build: gcc -O2 -o floor floor.c -lmnl
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char buf[1 << 16];
static size_t len;
static int count;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static struct nlmsghdr *msg(int type, int flags)
{
	struct nlmsghdr *n = mnl_nlmsg_put_header(buf + len);
	n->nlmsg_type = type;
	n->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
	n->nlmsg_seq = ++count;
	return n;
}

static void done(struct nlmsghdr *n)
{
	len += n->nlmsg_len;
}

static void send_batch(int fd)
{
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
	if (sendto(fd, buf, len, 0, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("sendto");
	int acks = 0;
	char rbuf[16384];
	while (acks < count) {
		int n = recv(fd, rbuf, sizeof(rbuf), 0);
		if (n < 0)
			die("recv");
		struct nlmsghdr *h = (struct nlmsghdr *)rbuf;
		for (; mnl_nlmsg_ok(h, n); h = mnl_nlmsg_next(h, &n)) {
			if (h->nlmsg_type != NLMSG_ERROR)
				continue;
			struct nlmsgerr *e = mnl_nlmsg_get_payload(h);
			if (e->error) {
				fprintf(stderr, "netlink op %u: %s\n", h->nlmsg_seq, strerror(-e->error));
				exit(1);
			}
			acks++;
		}
	}
	len = 0;
	count = 0;
}

static void ifinfo(struct nlmsghdr *n, int index, int up)
{
	struct ifinfomsg *i = mnl_nlmsg_put_extra_header(n, sizeof(*i));
	i->ifi_index = index;
	i->ifi_change = up ? IFF_UP : 0;
	i->ifi_flags = up ? IFF_UP : 0;
}

static void veth(const char *name, int index, int master, int mtu, const char *peer, int peer_index,
		 int peer_ns)
{
	struct nlmsghdr *n = msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
	ifinfo(n, index, 1);
	mnl_attr_put_strz(n, IFLA_IFNAME, name);
	if (master)
		mnl_attr_put_u32(n, IFLA_MASTER, master);
	if (mtu)
		mnl_attr_put_u32(n, IFLA_MTU, mtu);
	mnl_attr_put_u32(n, IFLA_NUM_TX_QUEUES, 1);
	mnl_attr_put_u32(n, IFLA_NUM_RX_QUEUES, 1);
	struct nlattr *li = mnl_attr_nest_start(n, IFLA_LINKINFO);
	mnl_attr_put_strz(n, IFLA_INFO_KIND, "veth");
	struct nlattr *d = mnl_attr_nest_start(n, IFLA_INFO_DATA);
	struct nlattr *p = mnl_attr_nest_start(n, VETH_INFO_PEER);
	struct ifinfomsg *pi = mnl_nlmsg_get_payload_tail(n);
	memset(pi, 0, sizeof(*pi));
	pi->ifi_index = peer_index;
	n->nlmsg_len += MNL_ALIGN(sizeof(*pi));
	mnl_attr_put_strz(n, IFLA_IFNAME, peer);
	mnl_attr_put_u32(n, IFLA_NET_NS_FD, peer_ns);
	mnl_attr_put_u32(n, IFLA_NUM_TX_QUEUES, 1);
	mnl_attr_put_u32(n, IFLA_NUM_RX_QUEUES, 1);
	mnl_attr_nest_end(n, p);
	mnl_attr_nest_end(n, d);
	mnl_attr_nest_end(n, li);
	done(n);
}

static void macvlan(const char *name, int index, int lower, int ns)
{
	struct nlmsghdr *n = msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
	ifinfo(n, index, 0);
	mnl_attr_put_strz(n, IFLA_IFNAME, name);
	mnl_attr_put_u32(n, IFLA_LINK, lower);
	mnl_attr_put_u32(n, IFLA_NET_NS_FD, ns);
	struct nlattr *li = mnl_attr_nest_start(n, IFLA_LINKINFO);
	mnl_attr_put_strz(n, IFLA_INFO_KIND, "macvlan");
	struct nlattr *d = mnl_attr_nest_start(n, IFLA_INFO_DATA);
	mnl_attr_put_u32(n, IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE);
	mnl_attr_nest_end(n, d);
	mnl_attr_nest_end(n, li);
	done(n);
}

static void bridge(const char *name, int index)
{
	struct nlmsghdr *n = msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
	ifinfo(n, index, 1);
	mnl_attr_put_strz(n, IFLA_IFNAME, name);
	struct nlattr *li = mnl_attr_nest_start(n, IFLA_LINKINFO);
	mnl_attr_put_strz(n, IFLA_INFO_KIND, "bridge");
	struct nlattr *d = mnl_attr_nest_start(n, IFLA_INFO_DATA);
	mnl_attr_put_u32(n, IFLA_BR_FORWARD_DELAY, 0);
	mnl_attr_nest_end(n, d);
	mnl_attr_nest_end(n, li);
	done(n);
}

static void up(int index)
{
	struct nlmsghdr *n = msg(RTM_NEWLINK, 0);
	ifinfo(n, index, 1);
	done(n);
}

static void addr(int index, uint32_t ip, int plen)
{
	struct nlmsghdr *n = msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
	struct ifaddrmsg *a = mnl_nlmsg_put_extra_header(n, sizeof(*a));
	a->ifa_family = AF_INET;
	a->ifa_prefixlen = plen;
	a->ifa_index = index;
	uint32_t be = htonl(ip);
	mnl_attr_put(n, IFA_LOCAL, 4, &be);
	mnl_attr_put(n, IFA_ADDRESS, 4, &be);
	done(n);
}

static void route(uint32_t dst, int dst_len, uint32_t gw)
{
	struct nlmsghdr *n = msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
	struct rtmsg *r = mnl_nlmsg_put_extra_header(n, sizeof(*r));
	r->rtm_family = AF_INET;
	r->rtm_dst_len = dst_len;
	r->rtm_table = RT_TABLE_MAIN;
	r->rtm_protocol = RTPROT_STATIC;
	r->rtm_type = RTN_UNICAST;
	uint32_t d = htonl(dst), g = htonl(gw);
	if (dst_len)
		mnl_attr_put(n, RTA_DST, 4, &d);
	mnl_attr_put(n, RTA_GATEWAY, 4, &g);
	done(n);
}

static int rtnl_socket(void)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)))
		die("socket");
	return fd;
}

static void sysctl(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, value, strlen(value)) < 0)
		die(path);
	close(fd);
}

/* A namespace, configured from inside, with its netlink socket; the thread returns home. */
static int netns(int home, int forward, int *sock)
{
	if (unshare(CLONE_NEWNET))
		die("unshare");
	int fd = open("/proc/thread-self/ns/net", O_RDONLY);
	*sock = rtnl_socket();
	sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
	if (forward)
		sysctl("/proc/sys/net/ipv4/ip_forward", "1");
	if (home >= 0 && setns(home, CLONE_NEWNET))
		die("setns");
	return fd;
}

static int ix_links(int ix_sock)
{
	char req[64];
	struct nlmsghdr *n = mnl_nlmsg_put_header(req);
	n->nlmsg_type = RTM_GETLINK;
	n->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	mnl_nlmsg_put_extra_header(n, sizeof(struct ifinfomsg));
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
	sendto(ix_sock, req, n->nlmsg_len, 0, (struct sockaddr *)&sa, sizeof(sa));
	int links = 0;
	for (;;) {
		int r = recv(ix_sock, buf, sizeof(buf), 0);
		struct nlmsghdr *h = (struct nlmsghdr *)buf;
		for (; mnl_nlmsg_ok(h, r); h = mnl_nlmsg_next(h, &r)) {
			if (h->nlmsg_type == NLMSG_DONE)
				return links;
			if (h->nlmsg_type == RTM_NEWLINK)
				links++;
		}
	}
}

int main(int argc, char **argv)
{
	int routers = argc > 1 ? atoi(argv[1]) : 10;
	int per = argc > 2 ? atoi(argv[2]) : 1;
	int nodes = routers * (1 + per);
	int *fds = calloc(nodes, sizeof(int)), *socks = calloc(nodes, sizeof(int));
	int nfd = 0;

	double t0 = now();
	int ix_sock;
	netns(-1, 1, &ix_sock); /* the thread stays in the IX */
	int home = open("/proc/thread-self/ns/net", O_RDONLY);
	up(1);
	bridge("br-ix", 16);
	addr(16, 0xC6120001, 24); /* 198.18.0.1/24 */
	send_batch(ix_sock);
	int ix_index = 100;
	for (int r = 0; r < routers; r++) {
		int rs, rfd = netns(home, 1, &rs);
		uint32_t wan = 0xC6120000 + 10 + r, pool = 0xC6120000 + ((r + 1) << 8);
		int lower = ix_index + 1;
		char port[16], low[16];
		snprintf(port, sizeof(port), "r%d", r);
		snprintf(low, sizeof(low), "l%d", r);
		veth(port, ix_index, 16, 0, "ix", 16, rfd);
		veth(low, lower, 0, 65535, "lan", 17, rfd);
		route(pool, 24, wan);
		send_batch(ix_sock);
		ix_index += 2;
		up(1);
		up(16);
		up(17);
		addr(16, wan, 24);
		addr(17, pool + 1, 24);
		route(0, 0, 0xC6120001);
		send_batch(rs);
		fds[nfd] = rfd;
		socks[nfd++] = rs;
		for (int d = 0; d < per; d++) {
			int ds, dfd = netns(home, 0, &ds);
			macvlan("eth0", 16, lower, dfd);
			send_batch(ix_sock);
			up(1);
			up(16);
			addr(16, pool + 2 + d, 24);
			route(0, 0, pool + 1);
			send_batch(ds);
			fds[nfd] = dfd;
			socks[nfd++] = ds;
		}
	}
	double t1 = now();
	for (int i = 0; i < nfd; i++) {
		close(socks[i]);
		close(fds[i]);
	}
	while (ix_links(ix_sock) > 2)
		usleep(1000);
	double t2 = now();
	printf("%.2f %.2f\n", (t1 - t0) * 1e3, (t2 - t1) * 1e3);
	return 0;
}
