/* Processes of a lab live in a PID namespace of their own. Its init is a tiny reaper forked
 * here; when the init exits the kernel kills every process left in the namespace, including
 * daemons that double-forked away from us. The init exits when the lab closes its lifeline
 * pipe, or when the lab's process dies for any reason (the kernel closes the pipe then, even
 * on SIGKILL), or when the forking thread dies (PR_SET_PDEATHSIG). */
#define _GNU_SOURCE
#include "patchbay.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap_all(void)
{
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

/* Runs in the forked child: only async-signal-safe calls from here on. */
static void init_main(int lifeline_fd)
{
	/* Keep only the lifeline, as fd 3: every other fd of the Python process (however many,
	 * labs raise the limit) would otherwise stay open here, among them the lifeline's write
	 * end, and the init would never see EOF. */
	if (lifeline_fd != 3) {
		dup2(lifeline_fd, 3);
		lifeline_fd = 3;
	}
	syscall(SYS_close_range, 4U, ~0U, 0U);
	sigset_t all, none;
	sigfillset(&all);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &all, NULL);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	struct pollfd p = {.fd = lifeline_fd, .events = POLLIN};
	for (;;) {
		int r = ppoll(&p, 1, NULL, &none);
		reap_all();
		if (r > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
			char c;
			if (read(lifeline_fd, &c, 1) <= 0)
				_exit(0);
		}
	}
}

static void on_sigchld(int sig)
{
	(void)sig;
}

int pb_pidns_start(int lifeline_read_fd, int *init_pid_out)
{
	if (unshare(CLONE_NEWPID))
		return -errno;
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		/* SIGCHLD needs a handler (not SIG_DFL, which discards it) to interrupt ppoll. */
		struct sigaction sa = {0};
		sa.sa_handler = on_sigchld;
		sigaction(SIGCHLD, &sa, NULL);
		init_main(lifeline_read_fd);
		_exit(0);
	}
	*init_pid_out = pid;
	return 0;
}

int pb_set_pdeathsig(int sig)
{
	return prctl(PR_SET_PDEATHSIG, sig) ? -errno : 0;
}
