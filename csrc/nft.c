/* nftables through libnftables: one context per namespace, created inside it so its netlink
 * socket belongs there; each command text is one transaction. libnftables keeps global state
 * (interface cache, symbol tables), so calls from different labs are serialized. */
#define _GNU_SOURCE
#include "patchbay.h"

#include <errno.h>
#include <nftables/libnftables.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct pb_nft {
	struct nft_ctx *ctx;
};

static pthread_mutex_t nft_lock = PTHREAD_MUTEX_INITIALIZER;

struct pb_nft *pb_nft_new(int ns_fd, int home_fd, int *err)
{
	struct pb_nft *n = calloc(1, sizeof(*n));
	*err = 0;
	if (!n) {
		*err = ENOMEM;
		return NULL;
	}
	pthread_mutex_lock(&nft_lock);
	if (setns(ns_fd, CLONE_NEWNET) == 0) {
		n->ctx = nft_ctx_new(NFT_CTX_DEFAULT);
		if (!n->ctx)
			*err = ENOMEM;
		if (setns(home_fd, CLONE_NEWNET)) {
			*err = EIO;
			if (n->ctx) {
				nft_ctx_free(n->ctx);
				n->ctx = NULL;
			}
		}
	} else {
		*err = errno;
	}
	pthread_mutex_unlock(&nft_lock);
	if (!n->ctx) {
		free(n);
		return NULL;
	}
	nft_ctx_buffer_output(n->ctx);
	nft_ctx_buffer_error(n->ctx);
	return n;
}

void pb_nft_free(struct pb_nft *n)
{
	if (!n)
		return;
	pthread_mutex_lock(&nft_lock);
	nft_ctx_free(n->ctx);
	pthread_mutex_unlock(&nft_lock);
	free(n);
}

/* Multi-line text runs from a memfd: libnftables 1.0.6 quotes the wrong line when an error
 * is in buffer input, while file input gets "path:line:col" right. */
static int run_text(struct nft_ctx *ctx, const char *cmd)
{
	if (!strchr(cmd, '\n'))
		return nft_run_cmd_from_buffer(ctx, cmd) ? -EINVAL : 0;
	int fd = memfd_create("patchbay-nft", MFD_CLOEXEC);
	if (fd < 0)
		return nft_run_cmd_from_buffer(ctx, cmd) ? -EINVAL : 0;
	size_t len = strlen(cmd), off = 0;
	while (off < len) {
		ssize_t w = write(fd, cmd + off, len - off);
		if (w < 0) {
			close(fd);
			return -errno;
		}
		off += (size_t)w;
	}
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int ret = nft_run_cmd_from_filename(ctx, path) ? -EINVAL : 0;
	close(fd);
	return ret;
}

static char *dup_or_null(const char *s)
{
	return s && *s ? strdup(s) : NULL;
}

int pb_nft_run(struct pb_nft *n, int ns_fd, int home_fd, const char *cmd, int json,
	       int dry_run, char **out, char **errmsg)
{
	int ret;
	*out = NULL;
	*errmsg = NULL;
	pthread_mutex_lock(&nft_lock);
	/* Commands resolve interface names through a netlink dump of the calling thread's
	 * namespace, so run them from inside. */
	if (setns(ns_fd, CLONE_NEWNET)) {
		ret = -errno;
		pthread_mutex_unlock(&nft_lock);
		return ret;
	}
	unsigned int flags = nft_ctx_output_get_flags(n->ctx);
	if (json)
		nft_ctx_output_set_flags(n->ctx, flags | NFT_CTX_OUTPUT_JSON);
	nft_ctx_set_dry_run(n->ctx, dry_run != 0);
	ret = run_text(n->ctx, cmd);
	nft_ctx_set_dry_run(n->ctx, false);
	nft_ctx_output_set_flags(n->ctx, flags);
	*out = dup_or_null(nft_ctx_get_output_buffer(n->ctx));
	*errmsg = dup_or_null(nft_ctx_get_error_buffer(n->ctx));
	if (setns(home_fd, CLONE_NEWNET))
		ret = -EIO;
	pthread_mutex_unlock(&nft_lock);
	return ret;
}

struct pb_nft_job {
	pthread_t thread;
	struct pb_nft *n;
	int ns_fd, home_fd;
	char *cmd;
	int ret;
	char *out, *errmsg;
};

static void *job_main(void *arg)
{
	struct pb_nft_job *job = arg;
	if (!job->n) {
		int err = 0;
		job->n = pb_nft_new(job->ns_fd, job->home_fd, &err);
		if (!job->n) {
			job->ret = -(err ? err : ENOMEM);
			return NULL;
		}
	}
	job->ret = pb_nft_run(job->n, job->ns_fd, job->home_fd, job->cmd, 0, 0, &job->out, &job->errmsg);
	return NULL;
}

struct pb_nft_job *pb_nft_start(struct pb_nft *n, int ns_fd, int home_fd, const char *cmd, int *err)
{
	struct pb_nft_job *job = calloc(1, sizeof(*job));
	*err = 0;
	if (!job || !(job->cmd = strdup(cmd))) {
		free(job);
		*err = ENOMEM;
		return NULL;
	}
	job->n = n;
	job->ns_fd = ns_fd;
	job->home_fd = home_fd;
	/* The thread starts in the caller's namespace and steps into ns_fd like any caller. */
	int rc = pthread_create(&job->thread, NULL, job_main, job);
	if (rc) {
		free(job->cmd);
		free(job);
		*err = rc;
		return NULL;
	}
	return job;
}

int pb_nft_finish(struct pb_nft_job *job, struct pb_nft **n, char **out, char **errmsg)
{
	pthread_join(job->thread, NULL);
	int ret = job->ret;
	*n = job->n;
	*out = job->out;
	*errmsg = job->errmsg;
	free(job->cmd);
	free(job);
	return ret;
}
