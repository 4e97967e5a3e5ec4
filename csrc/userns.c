/* Enter an unprivileged user namespace in which we are uid/gid 0, so that network and PID
 * namespaces can be made without root. unshare(CLONE_NEWUSER) only works while the process
 * has a single thread. */
#define _GNU_SOURCE
#include "patchbay.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int write_file(const char *path, const char *text, char *err, size_t errlen)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n = -1;
	if (fd >= 0) {
		n = write(fd, text, strlen(text));
		if (n < 0)
			n = -errno;
		close(fd);
	}
	if (fd < 0 || n < 0) {
		int e = fd < 0 ? errno : (int)-n;
		snprintf(err, errlen, "writing %s: %s", path, strerror(e));
		return -e;
	}
	return 0;
}

int pb_userns_enter(unsigned int outer_uid, unsigned int outer_gid, char *err, size_t errlen)
{
	char map[64];
	if (unshare(CLONE_NEWUSER)) {
		int e = errno;
		snprintf(err, errlen, "unshare(CLONE_NEWUSER): %s", strerror(e));
		return -e;
	}
	int r = write_file("/proc/self/setgroups", "deny", err, errlen);
	if (r && r != -ENOENT)
		return r;
	snprintf(map, sizeof(map), "0 %u 1\n", outer_uid);
	if ((r = write_file("/proc/self/uid_map", map, err, errlen)))
		return r;
	snprintf(map, sizeof(map), "0 %u 1\n", outer_gid);
	return write_file("/proc/self/gid_map", map, err, errlen);
}
