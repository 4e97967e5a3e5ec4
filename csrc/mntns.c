/* Mount namespaces that give a node its own /etc/hosts and /etc/resolv.conf.
 *
 * A node's threads and children see the lab's name entries (Lab.dns_entry, Device.dns_entry,
 * Lab.set_nameserver) through bind mounts of per-node files over the host's. The mounts live
 * in a mount namespace of the node's own, so the host's files never change. The namespace is
 * made on a short-lived thread of its own (unshare(CLONE_NEWNS) implies CLONE_FS, which
 * only that thread then loses) and kept by fd; node threads and children enter it with
 * setns(2). Propagation from the host stays on (MS_SLAVE): what the host mounts later is
 * seen inside, nothing mounted inside leaks out. */
#define _GNU_SOURCE
#include "patchbay.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

struct mntns_job {
	const char *binds;
	int fd;
	int ret;
	char *err;
	size_t errlen;
};

/* Bind every "source=target\n" line of `binds`. */
static int bind_all(const char *binds, char *err, size_t errlen)
{
	const char *p = binds;
	while (p && *p) {
		const char *nl = strchr(p, '\n');
		size_t linelen = nl ? (size_t)(nl - p) : strlen(p);
		const char *eq = memchr(p, '=', linelen);
		if (eq) {
			char src[512], dst[512];
			int ns = snprintf(src, sizeof(src), "%.*s", (int)(eq - p), p);
			int nd = snprintf(dst, sizeof(dst), "%.*s", (int)(linelen - (size_t)(eq - p) - 1), eq + 1);
			if (ns <= 0 || nd <= 0 || (size_t)ns >= sizeof(src) || (size_t)nd >= sizeof(dst))
				return -ENAMETOOLONG;
			if (mount(src, dst, NULL, MS_BIND, NULL)) {
				int e = errno;
				snprintf(err, errlen, "bind-mount %s over %s: %s", src, dst, strerror(e));
				return -e;
			}
		}
		p = nl ? nl + 1 : NULL;
	}
	return 0;
}

static void *mntns_main(void *arg)
{
	struct mntns_job *job = arg;
	if (unshare(CLONE_NEWNS)) {
		job->ret = -errno;
		snprintf(job->err, job->errlen, "unshare(CLONE_NEWNS): %s", strerror(errno));
		return NULL;
	}
	if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL)) {
		job->ret = -errno;
		snprintf(job->err, job->errlen, "make / a slave mount: %s", strerror(errno));
		return NULL;
	}
	job->ret = bind_all(job->binds, job->err, job->errlen);
	if (job->ret)
		return NULL;
	job->fd = open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC);
	if (job->fd < 0) {
		job->ret = -errno;
		snprintf(job->err, job->errlen, "open /proc/thread-self/ns/mnt: %s", strerror(errno));
	}
	return NULL;
}

int pb_mntns_new(const char *binds, int *fd_out, char *err, size_t errlen)
{
	struct mntns_job job = {.binds = binds, .fd = -1, .ret = 0, .err = err, .errlen = errlen};
	pthread_t thread;
	int rc = pthread_create(&thread, NULL, mntns_main, &job);
	if (rc) {
		snprintf(err, errlen, "start a thread: %s", strerror(rc));
		return -rc;
	}
	pthread_join(thread, NULL);
	if (job.ret)
		return job.ret;
	*fd_out = job.fd;
	return 0;
}

int pb_mntns_enter(int fd)
{
	/* A thread sharing its filesystem attributes (CLONE_FS) with others may not change its
	 * mount namespace: give it its own first. setns(2) moves the working directory to the
	 * new namespace's root; come back to where the caller was (as nsenter --wd does). */
	if (unshare(CLONE_FS))
		return -errno;
	int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	int ret = setns(fd, CLONE_NEWNS) ? -errno : 0;
	if (cwd >= 0) {
		if (fchdir(cwd) && !ret)
			ret = -errno;
		close(cwd);
	}
	return ret;
}
