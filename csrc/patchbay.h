/* patchbay C core: the only code that talks to the kernel.
 *
 * This header is read twice: by the C compiler, and by cffi (csrc/build_native.py), which
 * drops every line starting with '#'. Keep the declarations plain C that cffi can parse.
 *
 * Conventions: functions return 0 or a negative errno; where a message helps, they fill
 * `err` (a caller buffer of `errlen` bytes) with text naming what failed. Functions that
 * must run inside a namespace take the namespace fd and the fd of the namespace to return
 * to (`home_fd`), enter, work, and always go back home before returning.
 */
#include <stddef.h>
#include <stdint.h>

/* ---- namespaces (netns.c) ---- */
int pb_setns(int fd, int nstype);
int pb_unshare(int flags);
int pb_open_thread_netns(void);
/* Create a network namespace on the calling thread and configure it from the inside:
 * `sysctls` is "path=value\n..." with paths relative to /proc/sys. Returns the namespace fd
 * and an rtnetlink socket bound inside it. home_fd -1: stay inside (the namespace becomes the
 * thread's home; unprivileged threads cannot go back to the host namespace anyway). */
int pb_netns_new(int home_fd, const char *sysctls, int *ns_fd_out, int *rtnl_fd_out,
                 char *err, size_t errlen);
int pb_sysctl_write(int ns_fd, int home_fd, const char *sysctls, char *err, size_t errlen);
int pb_sysctl_read(int ns_fd, int home_fd, const char *path, char *out, size_t outlen);
/* A netlink socket (NETLINK_ROUTE 0, NETLINK_NETFILTER 12, ...) bound inside ns_fd. */
int pb_netlink_socket_in(int ns_fd, int home_fd, int protocol);
/* Any socket(2) made inside ns_fd (it stays there for its whole life). */
int pb_socket_in(int ns_fd, int home_fd, int domain, int type, int protocol);

/* ---- mount namespaces (mntns.c) ---- */
/* A mount namespace in which every "source=target\n" line of `binds` is bind-mounted (made on
 * a thread of its own; the caller's view never changes). Returns its fd in *fd_out. */
int pb_mntns_new(const char *binds, int *fd_out, char *err, size_t errlen);
/* Move the calling thread into the mount namespace `fd` (after unsharing its fs attributes),
 * keeping its working directory. Also safe in a freshly forked child. */
int pb_mntns_enter(int fd);

/* ---- rtnetlink batches (rtnl.c) ---- */
struct pb_batch;
struct pb_batch *pb_batch_new(void);
void pb_batch_free(struct pb_batch *b);
void pb_batch_reset(struct pb_batch *b);
int pb_batch_count(struct pb_batch *b);
/* A veth pair: the first end named `name` lives where `ns_fd` says (-1: the socket's own
 * namespace) and may be enslaved to `master` there; the peer is created directly in
 * `peer_ns_fd`. Index 0 lets the kernel pick; mtu 0 keeps the default. peer_up must be 0:
 * the kernel configures the peer before the pair is linked, and opening it then fails. */
int pb_batch_veth(struct pb_batch *b, const char *name, int ifindex, int ns_fd, int master,
                  int mtu, int up, const char *peer_name, int peer_ifindex, int peer_ns_fd,
                  int peer_mtu, int peer_up);
/* A macvlan (bridge mode) on `lower` (an interface of the sending namespace), created directly
 * in `ns_fd`. Macvlans on one lower form one L2 segment with it. mac may be NULL (random). */
int pb_batch_macvlan(struct pb_batch *b, const char *name, int ifindex, int ns_fd, int lower,
                     int mtu, const uint8_t *mac);
/* A bridge without STP delay or multicast snooping (it floods like a plain switch). */
int pb_batch_bridge(struct pb_batch *b, const char *name, int ifindex, int mtu, int up);
/* A qdisc: add=1 adds (replace=1 replaces), add=0 deletes. parent 0 = root. `opts` is the
 * kind's TCA_OPTIONS payload as the kernel expects it (may be NULL). */
int pb_batch_qdisc(struct pb_batch *b, int add, int replace, int ifindex, unsigned int handle,
                   unsigned int parent, const char *kind, const uint8_t *opts, size_t opts_len);
/* A filter at `parent` (e.g. clsact egress 0xFFFFFFF3) of priority `prio` redirecting to
 * `target_ifindex`'s egress: every packet, or (dst of dst_len 4 or 16 bytes) the IPv4 or IPv6
 * packets to that address; never a packet carrying PB_WIRE_MARK (what a wire sends back
 * out). add=0 deletes the filters of that priority. */
#define PB_WIRE_MARK 0x70627769
int pb_batch_redirect(struct pb_batch *b, int add, int ifindex, unsigned int parent, int prio,
                      const uint8_t *dst, int dst_len, int target_ifindex);
/* up/down: 1 up, 0 down, -1 unchanged; mtu 0 unchanged; master -1 unchanged, 0 release. */
int pb_batch_link_set(struct pb_batch *b, int ifindex, int up, int mtu, int master);
int pb_batch_link_del(struct pb_batch *b, int ifindex);
/* add: 1 add (fails if present), 0 delete. addr is 4 or 16 bytes by family. */
int pb_batch_addr(struct pb_batch *b, int add, int family, int ifindex, const uint8_t *addr,
                  int prefixlen, int nodad);
/* op: 1 add, 2 replace, 0 delete. dst may be NULL with dst_len 0 (default route);
 * gw may be NULL; oif 0 = none; metric 0 = none; blackhole 1: drop what matches. */
int pb_batch_route(struct pb_batch *b, int op, int family, const uint8_t *dst, int dst_len,
                   const uint8_t *gw, int oif, int metric, int blackhole);
/* Send the messages (in rounds of 64), read every ack. On failure returns the negative errno
 * of the first failed message and sets *failed_index to its position and `extack` to the
 * kernel's text; the rest of that round was still processed, later rounds are not sent. */
int pb_batch_send(struct pb_batch *b, int fd, int *failed_index, char *extack,
                  size_t extack_len);

/* Dump (RTM_GETLINK / RTM_GETADDR / RTM_GETROUTE): all answer messages, concatenated,
 * in a malloc'd buffer the caller frees with pb_free. */
int pb_rtnl_dump(int fd, int msg_type, int family, uint8_t **out, size_t *out_len);
void pb_free(void *p);

/* ---- conntrack through ctnetlink (rtnl.c), on a NETLINK_NETFILTER socket ---- */
/* Every conntrack entry of `family` (AF_INET, or 0 for all): answer messages concatenated,
 * malloc'd, freed with pb_free. */
int pb_ct_dump(int fd, int family, uint8_t **out, size_t *out_len);
/* Delete every conntrack entry of `family` (0: all). */
int pb_ct_flush(int fd, int family);

/* ---- nftables through libnftables (nft.c) ---- */
struct pb_nft;
/* NULL on failure, with the errno in *err. */
struct pb_nft *pb_nft_new(int ns_fd, int home_fd, int *err);
void pb_nft_free(struct pb_nft *n);
/* Run nft command text as one transaction inside ns_fd (dry_run: check it, change nothing).
 * *out and *errmsg are malloc'd copies of nft's output and error text (either may be NULL);
 * free them with pb_free. */
int pb_nft_run(struct pb_nft *n, int ns_fd, int home_fd, const char *cmd, int json,
               int dry_run, char **out, char **errmsg);
/* The same, on a thread of its own (a C thread: it never waits for Python's GIL) while the
 * caller goes on. With n NULL the thread opens the context too. pb_nft_finish waits for it
 * and returns what pb_nft_run returned, the context (*n, the caller's to free; NULL when it
 * could not be opened) and the texts as pb_nft_run gives them; it frees the job. */
struct pb_nft_job;
struct pb_nft_job *pb_nft_start(struct pb_nft *n, int ns_fd, int home_fd, const char *cmd, int *err);
int pb_nft_finish(struct pb_nft_job *job, struct pb_nft **n, char **out, char **errmsg);

/* ---- the wire: a userspace link emulator (wire.c) ---- */
struct pb_wire_params {
    uint32_t latency_us;
    uint32_t jitter_us;
    uint32_t loss_ppm;
    uint32_t loss_corr_ppm;
    uint32_t reorder_ppm;
    uint32_t duplicate_ppm;
    uint32_t corrupt_ppm;
    uint32_t queue_ms;     /* the bottleneck's queue, in time at rate_bps; beyond it: drop */
    uint64_t rate_bps;     /* 0: no bottleneck */
};
struct pb_wire_stats {
    uint64_t rx, tx, dropped_loss, dropped_queue, duplicated, corrupted, reordered, send_errors, queued;
};
struct pb_wire;
/* A wire inside ns_fd: a TAP named tap_name to read from, an AF_PACKET socket sending out of
 * out_ifindex (whose MTU is mtu), a thread. Packets flow once a filter redirects them to the
 * TAP. */
struct pb_wire *pb_wire_new(int ns_fd, int home_fd, const char *tap_name, int out_ifindex, int mtu,
                            uint64_t seed, char *err, size_t errlen);
int pb_wire_tap_ifindex(struct pb_wire *w);
void pb_wire_set(struct pb_wire *w, const struct pb_wire_params *p);
void pb_wire_stats(struct pb_wire *w, struct pb_wire_stats *out);
/* Stops the thread after sending what it still holds; the TAP goes with its fd. */
void pb_wire_free(struct pb_wire *w);
/* For the netem backend (rtnl.c): a link of a kind that needs no data (e.g. "ifb"), created
 * in the socket's namespace with index `ifindex` (0: the kernel picks), up or down. */
int pb_batch_link_kind(struct pb_batch *b, const char *kind, const char *name, int ifindex, int up);
/* A tc dump (RTM_GETQDISC, RTM_GETTCLASS, RTM_GETTFILTER) of `ifindex` (0: every device, for
 * qdiscs) under `parent` (filters): answers concatenated in a malloc'd buffer (pb_free). */
int pb_tc_dump(int fd, int msg_type, int ifindex, unsigned int parent, uint8_t **out, size_t *out_len);

/* ---- processes (proc.c) ---- */
/* On the calling thread: unshare a PID namespace and fork its init, a reaper that exits
 * (taking every process of the namespace with it) when `lifeline_fd`'s write end closes or
 * when this thread dies. Later forks from this thread land in the new namespace. */
int pb_pidns_start(int lifeline_read_fd, int *init_pid_out);
int pb_set_pdeathsig(int sig);

/* ---- user namespaces (userns.c) ---- */
int pb_userns_enter(unsigned int outer_uid, unsigned int outer_gid, char *err, size_t errlen);
