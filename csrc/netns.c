/* Network namespaces: create with unshare(2) on the calling thread, keep by fd, enter with
 * setns(2). Sysctls are written from inside the namespace: /proc/sys/net resolves against the
 * calling thread's namespace. */
#define _GNU_SOURCE
#include "patchbay.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int pb_setns(int fd, int nstype)
{
	return setns(fd, nstype) ? -errno : 0;
}

int pb_unshare(int flags)
{
	return unshare(flags) ? -errno : 0;
}

int pb_open_thread_netns(void)
{
	int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

static int netlink_socket_here(int protocol)
{
	int one = 1, rcvbuf = 1 << 20;
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
	if (fd < 0)
		return -errno;
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		int e = -errno;
		close(fd);
		return e;
	}
	/* Best effort: extended acks carry the kernel's own explanation of a failure. */
	setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
	setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	return fd;
}

/* Write "path=value\n..." lines below /proc/sys in the calling thread's namespace. */
static int write_sysctls_here(const char *sysctls, char *err, size_t errlen)
{
	const char *p = sysctls;
	while (p && *p) {
		const char *nl = strchr(p, '\n');
		size_t linelen = nl ? (size_t)(nl - p) : strlen(p);
		const char *eq = memchr(p, '=', linelen);
		if (eq) {
			char path[256];
			int n = snprintf(path, sizeof(path), "/proc/sys/%.*s", (int)(eq - p), p);
			if (n <= 0 || (size_t)n >= sizeof(path))
				return -ENAMETOOLONG;
			const char *val = eq + 1;
			size_t vlen = linelen - (size_t)(val - p);
			int fd = open(path, O_WRONLY | O_CLOEXEC);
			if (fd < 0 || write(fd, val, vlen) != (ssize_t)vlen) {
				int e = -errno;
				if (fd >= 0)
					close(fd);
				snprintf(err, errlen, "sysctl %.*s=%.*s: %s", (int)(eq - p), p,
					 (int)vlen, val, strerror(-e));
				return e;
			}
			close(fd);
		}
		p = nl ? nl + 1 : NULL;
	}
	return 0;
}

int pb_netns_new(int home_fd, const char *sysctls, int *ns_fd_out, int *rtnl_fd_out,
		 char *err, size_t errlen)
{
	int ns_fd = -1, rtnl_fd = -1, ret;

	if (unshare(CLONE_NEWNET)) {
		ret = -errno;
		snprintf(err, errlen, "unshare(CLONE_NEWNET): %s", strerror(errno));
		return ret;
	}
	ns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (ns_fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "open /proc/thread-self/ns/net: %s", strerror(errno));
		goto out;
	}
	rtnl_fd = netlink_socket_here(NETLINK_ROUTE);
	if (rtnl_fd < 0) {
		ret = rtnl_fd;
		snprintf(err, errlen, "rtnetlink socket: %s", strerror(-ret));
		goto out;
	}
	ret = write_sysctls_here(sysctls, err, errlen);
out:
	/* home_fd < 0: the calling thread stays in the new namespace (it becomes its home). */
	if (home_fd >= 0 && setns(home_fd, CLONE_NEWNET)) {
		/* The thread is stranded in the new namespace: report it loudly. */
		snprintf(err, errlen, "setns back to the home namespace: %s", strerror(errno));
		ret = -EIO;
	}
	if (ret) {
		if (ns_fd >= 0)
			close(ns_fd);
		if (rtnl_fd >= 0)
			close(rtnl_fd);
		return ret;
	}
	*ns_fd_out = ns_fd;
	*rtnl_fd_out = rtnl_fd;
	return 0;
}

int pb_sysctl_write(int ns_fd, int home_fd, const char *sysctls, char *err, size_t errlen)
{
	if (setns(ns_fd, CLONE_NEWNET)) {
		int e = errno;
		snprintf(err, errlen, "setns into the namespace: %s", strerror(e));
		return -e;
	}
	int ret = write_sysctls_here(sysctls, err, errlen);
	if (setns(home_fd, CLONE_NEWNET)) {
		snprintf(err, errlen, "setns back to the home namespace: %s", strerror(errno));
		return -EIO;
	}
	return ret;
}

int pb_sysctl_read(int ns_fd, int home_fd, const char *path, char *out, size_t outlen)
{
	char full[256];
	int ret = 0;
	if (snprintf(full, sizeof(full), "/proc/sys/%s", path) >= (int)sizeof(full))
		return -ENAMETOOLONG;
	if (setns(ns_fd, CLONE_NEWNET))
		return -errno;
	int fd = open(full, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
	} else {
		ssize_t n = read(fd, out, outlen - 1);
		ret = n < 0 ? -errno : 0;
		out[n < 0 ? 0 : n] = 0;
		close(fd);
	}
	if (setns(home_fd, CLONE_NEWNET))
		return -EIO;
	return ret;
}

int pb_netlink_socket_in(int ns_fd, int home_fd, int protocol)
{
	if (setns(ns_fd, CLONE_NEWNET))
		return -errno;
	int fd = netlink_socket_here(protocol);
	if (setns(home_fd, CLONE_NEWNET)) {
		if (fd >= 0)
			close(fd);
		return -EIO;
	}
	return fd;
}

int pb_socket_in(int ns_fd, int home_fd, int domain, int type, int protocol)
{
	if (setns(ns_fd, CLONE_NEWNET))
		return -errno;
	int fd = socket(domain, type | SOCK_CLOEXEC, protocol);
	int err = fd < 0 ? -errno : 0;
	if (setns(home_fd, CLONE_NEWNET)) {
		if (fd >= 0)
			close(fd);
		return -EIO;
	}
	return fd < 0 ? err : fd;
}
