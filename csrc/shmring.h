/*
 * shmring: two single-producer single-consumer byte rings in one shared segment.
 *
 * Ring A carries client -> server frames, ring B server -> client. A frame is a
 * host-order u32 body length followed by the body; frames start on 8-byte
 * boundaries and a body that runs past the end of the data area wraps to its
 * start (split copies, no skip marker), so any body up to capacity - 4 bytes fits
 * an empty ring.
 *
 * Wake-ups go through two eventfds, one per direction of notification: efd[0]
 * wakes the client (data on ring B, space on ring A, server closed), efd[1] wakes
 * the server. A side arms a "waiting" flag before it sleeps and the other side
 * writes the eventfd only when it sees that flag, so the hot path makes no
 * syscall per message.
 *
 * Memory layout (all integers host order; pure-Python twin: datasync.vpp._shmring_py):
 *
 *   0     header: u64 magic, u32 version, u32 header_size, u64 segment_size,
 *                 u32 ring_capacity, u32 flags, u32 closed[2] (client, server)
 *   128   ring A control: u64 head @+0, u32 space_waiting @+8   (producer lines)
 *                         u64 tail @+128, u32 data_waiting @+136 (consumer lines)
 *   384   ring B control, same shape
 *   4096  ring A data (capacity bytes), then ring B data (capacity bytes)
 *
 * head and tail are free-running byte counters; index = counter & (capacity - 1).
 * Functions return 0 / a count, or one of the negative SHMRING_E* codes below
 * (Linux errno values, negated). Nothing here prints, aborts or touches Python.
 */
#ifndef DATASYNC_SHMRING_H
#define DATASYNC_SHMRING_H

#include <stddef.h>
#include <stdint.h>

#define SHMRING_MAGIC 0x31474e5252485344ULL /* "DSHRRNG1" read little-endian */
#define SHMRING_VERSION 1
#define SHMRING_HEADER_SIZE 4096
#define SHMRING_MIN_CAPACITY 64
#define SHMRING_MAX_CAPACITY (1u << 30)

#define SHMRING_OFF_MAGIC 0
#define SHMRING_OFF_VERSION 8
#define SHMRING_OFF_HEADER_SIZE 12
#define SHMRING_OFF_SEG_SIZE 16
#define SHMRING_OFF_CAPACITY 24
#define SHMRING_OFF_FLAGS 28
#define SHMRING_OFF_CLOSED 32 /* u32[2]: client, server */
#define SHMRING_OFF_RING_A 128
#define SHMRING_OFF_RING_B 384
#define SHMRING_CTL_HEAD 0
#define SHMRING_CTL_SPACE_WAITING 8
#define SHMRING_CTL_TAIL 128
#define SHMRING_CTL_DATA_WAITING 136

#define SHMRING_CLIENT 0
#define SHMRING_SERVER 1

/* create(): put the segment in POSIX shm even where memfd_create works (tests the fallback). */
#define SHMRING_F_POSIX_SHM 1

#define SHMRING_OK 0
#define SHMRING_EINTR (-4)     /* a signal interrupted a wait: check signals, wait again */
#define SHMRING_EBADF (-9)     /* this end is closed, or a bad fd */
#define SHMRING_EAGAIN (-11)   /* ring full (send) */
#define SHMRING_ENOMEM (-12)
#define SHMRING_EINVAL (-22)   /* bad argument (role, capacity) */
#define SHMRING_EPIPE (-32)    /* the peer closed its end */
#define SHMRING_EBADMSG (-74)  /* segment header invalid (magic, version, sizes) */
#define SHMRING_EMSGSIZE (-90) /* body larger than the ring can ever hold */
#define SHMRING_ENOBUFS (-105) /* receive buffer too small for the next frame */
#define SHMRING_ETIMEDOUT (-110)
#define SHMRING_ENODATA (-61)  /* segment truncated (file smaller than its header says) */

typedef struct shmring_seg shmring_seg;
typedef struct shmring_end shmring_end;

/* Create a segment with rings of ring_capacity bytes (power of two) and its two eventfds. */
int shmring_create(uint32_t ring_capacity, int flags, shmring_seg **out);
/* Map a received segment after validating its header. Takes ownership of the three fds
 * only on success; on failure the caller still owns (and closes) them. */
int shmring_attach(int memfd, int efd_client, int efd_server, shmring_seg **out);
/* fds[0] = memfd, fds[1] = client eventfd, fds[2] = server eventfd (owned by the segment). */
void shmring_fds(const shmring_seg *seg, int fds[3]);
uint32_t shmring_capacity(const shmring_seg *seg);
/* Unmap and close the fds; marks both ends this process used as closed first. */
void shmring_free(shmring_seg *seg);

shmring_end *shmring_end_get(shmring_seg *seg, int role);
/* Mark this end closed and wake the peer. Idempotent. */
void shmring_end_close(shmring_end *end);
int shmring_end_fd(const shmring_end *end);
/* 1 when the peer closed its end. */
int shmring_peer_closed(const shmring_end *end);
/* Largest body that can ever be sent. */
uint32_t shmring_max_body(const shmring_end *end);

/* Send one frame: 0, SHMRING_EAGAIN when it does not fit now, EMSGSIZE, EPIPE, EBADF. */
int shmring_send(shmring_end *end, const char *body, uint32_t len);
/* Send n frames whose bodies lie back to back in data with lengths lens[i]; stops at the
 * first that does not fit. Returns how many were sent (one head publish, at most one
 * wake-up), or a negative code when the first could not be sent for another reason. */
int shmring_send_many(shmring_end *end, const char *data, const uint32_t *lens, size_t n);
/* Receive as many frames as fit: bodies back to back into buf (cap bytes), lengths into
 * lens (at most maxn). Returns the frame count, 0 when the ring is empty, SHMRING_EPIPE
 * when it is empty and the peer closed, SHMRING_ENOBUFS (with *need set) when the next
 * frame alone exceeds cap. *nbytes is the number of bytes written into buf. */
int shmring_recv_many(shmring_end *end, char *buf, size_t cap, uint32_t *lens, size_t maxn,
                      size_t *nbytes, uint32_t *need);
/* Bytes a frame with this body length takes in the ring. */
uint32_t shmring_frame_size(uint32_t len);

/* Before sleeping on the end's eventfd: arm the flag, then re-check. Returns 1 when
 * there is already something to do (flag withdrawn), 0 when it is safe to sleep. */
int shmring_arm_recv(shmring_end *end);
int shmring_arm_send(shmring_end *end, uint32_t need);
/* Clear the end's eventfd (non-blocking read). */
void shmring_ack(shmring_end *end);
/* Block up to timeout_ms (-1 forever) until a frame can be read or the peer closed;
 * polls the ring for up to spin_us microseconds first (no syscall, no wake-up to pay).
 * Returns 0 (ready), SHMRING_ETIMEDOUT, SHMRING_EINTR or a negative errno. */
int shmring_wait_recv(shmring_end *end, int timeout_ms, int spin_us);

#endif
