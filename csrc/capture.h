/* patchbay C core: packet capture into pcapng files (capture.c).
 *
 * Read twice, like patchbay.h: by the C compiler and by cffi (csrc/build_native.py), which
 * drops every line starting with '#'. Plain C declarations only.
 *
 * One capture is one AF_PACKET socket bound to one interface of one network namespace, read
 * through a TPACKET_V3 ring by a thread of its own ("pbcapture"), which writes pcapng: a
 * Section Header Block, one Interface Description Block (if_name, the link type, nanosecond
 * timestamps through if_tsresol, the snap length) and an Enhanced Packet Block per packet,
 * both directions (epb_flags says inbound or outbound). Whole blocks are written as packets
 * come in, so the file is a valid pcapng at any moment; stopping writes what is left.
 * Conventions as in patchbay.h: 0 or a negative errno; `err` gets the text.
 */
#include <stddef.h>
#include <stdint.h>

struct pb_capture_stats {
    uint64_t packets;      /* packets written to the file */
    uint64_t bytes;        /* bytes of those packets as captured (after snaplen) */
    uint64_t dropped;      /* packets the kernel could not hand over (the ring was full) */
    uint64_t write_errors; /* write(2) failures (the file system is full, ...) */
    int last_errno;        /* errno of the last write failure, 0 if none */
};

struct pb_capture;
/* Capture `ifname` of the namespace ns_fd into a new file `path` (truncated if it exists;
 * relative to the caller's working directory). The socket is made inside ns_fd from the
 * calling thread, which goes back to home_fd before returning: a socket stays in the namespace
 * it was made in, so the capture thread itself never needs to enter it. snaplen 0: 262144.
 * The socket holds a reference to the namespace until pb_capture_stop. NULL on failure (no
 * such interface: the text lists the namespace's interfaces), with the text in err. */
struct pb_capture *pb_capture_start(int ns_fd, int home_fd, const char *ifname, const char *path,
                                    uint32_t snaplen, char *err, size_t errlen);
/* Counters so far (safe while the thread runs). */
void pb_capture_stats(struct pb_capture *c, struct pb_capture_stats *out);
/* The link type written into the file (1 Ethernet, 101 raw IP). */
int pb_capture_linktype(struct pb_capture *c);
/* Stop the thread after writing every packet the kernel has handed over (it waits for the
 * ring's partly filled block: at most ~3 block timeouts, 16 ms each), close the socket and the
 * file. Safe to call twice. Returns 0, or the negative errno of the last failed write. */
int pb_capture_stop(struct pb_capture *c);
/* Stop if running, then free. */
void pb_capture_free(struct pb_capture *c);
