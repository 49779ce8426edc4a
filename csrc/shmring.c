/* shmring: see shmring.h for the layout and the contract. */
#define _GNU_SOURCE
#include "shmring.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef __x86_64__
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

typedef struct {
    _Atomic uint64_t *head;     /* written by the producer */
    _Atomic uint32_t *space_waiting; /* producer sleeps until the consumer frees space */
    _Atomic uint64_t *tail;     /* written by the consumer */
    _Atomic uint32_t *data_waiting;  /* consumer sleeps until the producer writes */
    unsigned char *data;
} ring_t;

struct shmring_end {
    ring_t tx, rx;
    uint64_t mask;
    _Atomic uint32_t *my_closed, *peer_closed;
    int my_efd, peer_efd;
    int used, closed;
};

struct shmring_seg {
    unsigned char *base;
    size_t size;
    uint32_t capacity;
    int fds[3];
    struct shmring_end ends[2];
};

#define AT(base, off, type) ((type)((base) + (off)))

static inline uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void wr32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void wr64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

uint32_t shmring_frame_size(uint32_t len) { return (uint32_t)(((uint64_t)len + 4 + 7) & ~7ULL); }

static int valid_capacity(uint64_t cap) {
    return cap >= SHMRING_MIN_CAPACITY && cap <= SHMRING_MAX_CAPACITY && (cap & (cap - 1)) == 0;
}

static void ring_init(ring_t *r, unsigned char *base, size_t ctl, size_t data) {
    r->head = AT(base, ctl + SHMRING_CTL_HEAD, _Atomic uint64_t *);
    r->space_waiting = AT(base, ctl + SHMRING_CTL_SPACE_WAITING, _Atomic uint32_t *);
    r->tail = AT(base, ctl + SHMRING_CTL_TAIL, _Atomic uint64_t *);
    r->data_waiting = AT(base, ctl + SHMRING_CTL_DATA_WAITING, _Atomic uint32_t *);
    r->data = base + data;
}

static void seg_setup(shmring_seg *seg) {
    unsigned char *b = seg->base;
    size_t a_data = SHMRING_HEADER_SIZE, b_data = SHMRING_HEADER_SIZE + seg->capacity;
    for (int role = 0; role < 2; role++) {
        struct shmring_end *e = &seg->ends[role];
        memset(e, 0, sizeof *e);
        /* the client produces on ring A and consumes ring B; the server the other way */
        ring_init(&e->tx, b, role == SHMRING_CLIENT ? SHMRING_OFF_RING_A : SHMRING_OFF_RING_B,
                  role == SHMRING_CLIENT ? a_data : b_data);
        ring_init(&e->rx, b, role == SHMRING_CLIENT ? SHMRING_OFF_RING_B : SHMRING_OFF_RING_A,
                  role == SHMRING_CLIENT ? b_data : a_data);
        e->mask = seg->capacity - 1;
        e->my_closed = AT(b, SHMRING_OFF_CLOSED + 4 * role, _Atomic uint32_t *);
        e->peer_closed = AT(b, SHMRING_OFF_CLOSED + 4 * (1 - role), _Atomic uint32_t *);
        e->my_efd = seg->fds[1 + role];
        e->peer_efd = seg->fds[2 - role];
    }
}

static int make_shm_fd(size_t size, int flags) {
    int fd = -1;
    if (!(flags & SHMRING_F_POSIX_SHM)) {
        fd = memfd_create("datasync-shmring", MFD_CLOEXEC);
        if (fd < 0 && errno != ENOSYS && errno != EPERM)
            return -errno;
    }
    if (fd < 0) {
        /* POSIX shm fallback: a unique name, unlinked at once, so only the fd refers to it */
        char name[64];
        struct timespec ts;
        for (int attempt = 0; attempt < 16 && fd < 0; attempt++) {
            clock_gettime(CLOCK_MONOTONIC, &ts);
            snprintf(name, sizeof name, "/datasync-shmring-%ld-%ld-%d", (long)getpid(),
                     (long)ts.tv_nsec, attempt);
            fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            if (fd < 0 && errno != EEXIST)
                return -errno;
            if (fd >= 0)
                shm_unlink(name);
        }
        if (fd < 0)
            return -EEXIST;
    }
    if (ftruncate(fd, (off_t)size) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

int shmring_create(uint32_t ring_capacity, int flags, shmring_seg **out) {
    if (!out || !valid_capacity(ring_capacity))
        return SHMRING_EINVAL;
    size_t size = SHMRING_HEADER_SIZE + 2 * (size_t)ring_capacity;
    shmring_seg *seg = calloc(1, sizeof *seg);
    if (!seg)
        return SHMRING_ENOMEM;
    seg->fds[0] = seg->fds[1] = seg->fds[2] = -1;
    int rc = make_shm_fd(size, flags);
    if (rc < 0)
        goto fail;
    seg->fds[0] = rc;
    for (int i = 1; i < 3; i++) {
        seg->fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (seg->fds[i] < 0) {
            rc = -errno;
            goto fail;
        }
    }
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, seg->fds[0], 0);
    if (base == MAP_FAILED) {
        rc = -errno;
        goto fail;
    }
    seg->base = base;
    seg->size = size;
    seg->capacity = ring_capacity;
    /* the file is zero-filled: counters, flags and closed marks start at 0 */
    wr32(seg->base + SHMRING_OFF_VERSION, SHMRING_VERSION);
    wr32(seg->base + SHMRING_OFF_HEADER_SIZE, SHMRING_HEADER_SIZE);
    wr64(seg->base + SHMRING_OFF_SEG_SIZE, size);
    wr32(seg->base + SHMRING_OFF_CAPACITY, ring_capacity);
    wr32(seg->base + SHMRING_OFF_FLAGS, 0);
    /* magic last: a segment with a valid magic is fully initialised */
    atomic_thread_fence(memory_order_release);
    wr64(seg->base + SHMRING_OFF_MAGIC, SHMRING_MAGIC);
    seg_setup(seg);
    *out = seg;
    return SHMRING_OK;
fail:
    for (int i = 0; i < 3; i++)
        if (seg->fds[i] >= 0)
            close(seg->fds[i]);
    free(seg);
    return rc;
}

int shmring_attach(int memfd, int efd_client, int efd_server, shmring_seg **out) {
    if (!out || memfd < 0 || efd_client < 0 || efd_server < 0)
        return SHMRING_EBADF;
    struct stat st;
    if (fstat(memfd, &st) < 0)
        return -errno;
    if ((uint64_t)st.st_size < SHMRING_HEADER_SIZE)
        return SHMRING_ENODATA;
    unsigned char *hdr = mmap(NULL, SHMRING_HEADER_SIZE, PROT_READ, MAP_SHARED, memfd, 0);
    if (hdr == MAP_FAILED)
        return -errno;
    uint64_t magic = rd64(hdr + SHMRING_OFF_MAGIC), seg_size = rd64(hdr + SHMRING_OFF_SEG_SIZE);
    uint32_t version = rd32(hdr + SHMRING_OFF_VERSION), hsize = rd32(hdr + SHMRING_OFF_HEADER_SIZE);
    uint32_t cap = rd32(hdr + SHMRING_OFF_CAPACITY);
    munmap(hdr, SHMRING_HEADER_SIZE);
    if (magic != SHMRING_MAGIC || version != SHMRING_VERSION || hsize != SHMRING_HEADER_SIZE ||
        !valid_capacity(cap) || seg_size != SHMRING_HEADER_SIZE + 2 * (uint64_t)cap)
        return SHMRING_EBADMSG;
    if ((uint64_t)st.st_size < seg_size)
        return SHMRING_ENODATA;
    shmring_seg *seg = calloc(1, sizeof *seg);
    if (!seg)
        return SHMRING_ENOMEM;
    void *base = mmap(NULL, seg_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (base == MAP_FAILED) {
        int err = errno;
        free(seg);
        return -err;
    }
    seg->base = base;
    seg->size = seg_size;
    seg->capacity = cap;
    seg->fds[0] = memfd;
    seg->fds[1] = efd_client;
    seg->fds[2] = efd_server;
    seg_setup(seg);
    *out = seg;
    return SHMRING_OK;
}

void shmring_fds(const shmring_seg *seg, int fds[3]) {
    for (int i = 0; i < 3; i++)
        fds[i] = seg->fds[i];
}

uint32_t shmring_capacity(const shmring_seg *seg) { return seg->capacity; }

void shmring_free(shmring_seg *seg) {
    if (!seg)
        return;
    for (int role = 0; role < 2; role++)
        if (seg->ends[role].used)
            shmring_end_close(&seg->ends[role]);
    munmap(seg->base, seg->size);
    for (int i = 0; i < 3; i++)
        close(seg->fds[i]);
    free(seg);
}

shmring_end *shmring_end_get(shmring_seg *seg, int role) {
    if (!seg || (role != SHMRING_CLIENT && role != SHMRING_SERVER))
        return NULL;
    seg->ends[role].used = 1;
    return &seg->ends[role];
}

static void wake(int fd) {
    uint64_t one = 1;
    /* EAGAIN means the counter is saturated: the peer will wake anyway */
    ssize_t rc = write(fd, &one, sizeof one);
    (void)rc;
}

void shmring_end_close(shmring_end *e) {
    if (e->closed)
        return;
    e->closed = 1;
    atomic_store_explicit(e->my_closed, 1, memory_order_seq_cst);
    wake(e->peer_efd);
}

int shmring_end_fd(const shmring_end *e) { return e->my_efd; }

int shmring_peer_closed(const shmring_end *e) {
    return (int)atomic_load_explicit(e->peer_closed, memory_order_acquire);
}

uint32_t shmring_max_body(const shmring_end *e) { return (uint32_t)(e->mask + 1 - 4); }

/* copy into / out of the data area starting at counter pos, wrapping at the end */
static inline void ring_put(unsigned char *data, uint64_t mask, uint64_t pos, const char *src,
                            size_t n) {
    size_t idx = (size_t)(pos & mask), first = (size_t)(mask + 1) - idx;
    if (n <= first) {
        memcpy(data + idx, src, n);
    } else {
        memcpy(data + idx, src, first);
        memcpy(data, src + first, n - first);
    }
}

static inline void ring_get(const unsigned char *data, uint64_t mask, uint64_t pos, char *dst,
                            size_t n) {
    size_t idx = (size_t)(pos & mask), first = (size_t)(mask + 1) - idx;
    if (n <= first) {
        memcpy(dst, data + idx, n);
    } else {
        memcpy(dst, data + idx, first);
        memcpy(dst + first, data, n - first);
    }
}

/* Publish head, then wake the consumer if it armed its flag. The seq_cst fence pairs with
 * the one in shmring_arm_recv: either we see the flag or the consumer sees our head. */
static inline void publish_head(shmring_end *e, uint64_t head) {
    atomic_store_explicit(e->tx.head, head, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(e->tx.data_waiting, memory_order_relaxed) &&
        atomic_exchange_explicit(e->tx.data_waiting, 0, memory_order_relaxed))
        wake(e->peer_efd);
}

static inline int send_check(shmring_end *e, uint32_t len) {
    if (e->closed)
        return SHMRING_EBADF;
    if (atomic_load_explicit(e->peer_closed, memory_order_acquire))
        return SHMRING_EPIPE;
    if ((uint64_t)len + 4 > e->mask + 1)
        return SHMRING_EMSGSIZE;
    return SHMRING_OK;
}

int shmring_send(shmring_end *e, const char *body, uint32_t len) {
    int rc = send_check(e, len);
    if (rc < 0)
        return rc;
    uint64_t head = atomic_load_explicit(e->tx.head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(e->tx.tail, memory_order_acquire);
    uint32_t fsize = shmring_frame_size(len);
    if (head - tail + fsize > e->mask + 1)
        return SHMRING_EAGAIN;
    wr32(e->tx.data + (head & e->mask), len); /* 8-aligned: never wraps */
    ring_put(e->tx.data, e->mask, head + 4, body, len);
    publish_head(e, head + fsize);
    return SHMRING_OK;
}

int shmring_send_many(shmring_end *e, const char *data, const uint32_t *lens, size_t n) {
    if (n == 0)
        return e->closed ? SHMRING_EBADF : 0;
    int rc = send_check(e, lens[0]);
    if (rc < 0)
        return rc;
    uint64_t start = atomic_load_explicit(e->tx.head, memory_order_relaxed), head = start;
    uint64_t tail = atomic_load_explicit(e->tx.tail, memory_order_acquire);
    size_t i = 0;
    for (; i < n && i < (size_t)INT32_MAX; i++) {
        uint32_t len = lens[i], fsize = shmring_frame_size(len);
        if ((uint64_t)len + 4 > e->mask + 1)
            break; /* reported as EMSGSIZE when the caller retries from this frame */
        if (head - tail + fsize > e->mask + 1) {
            /* the consumer may have moved on since we first looked */
            tail = atomic_load_explicit(e->tx.tail, memory_order_acquire);
            if (head - tail + fsize > e->mask + 1)
                break;
        }
        wr32(e->tx.data + (head & e->mask), len);
        ring_put(e->tx.data, e->mask, head + 4, data, len);
        data += len;
        head += fsize;
    }
    if (head != start)
        publish_head(e, head);
    return (int)i;
}

/* Publish tail, then wake the producer if it waits for space (pairs with shmring_arm_send). */
static inline void publish_tail(shmring_end *e, uint64_t tail) {
    atomic_store_explicit(e->rx.tail, tail, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(e->rx.space_waiting, memory_order_relaxed) &&
        atomic_exchange_explicit(e->rx.space_waiting, 0, memory_order_relaxed))
        wake(e->peer_efd);
}

int shmring_recv_many(shmring_end *e, char *buf, size_t cap, uint32_t *lens, size_t maxn,
                      size_t *nbytes, uint32_t *need) {
    *nbytes = 0;
    if (e->closed)
        return SHMRING_EBADF;
    uint64_t start = atomic_load_explicit(e->rx.tail, memory_order_relaxed), tail = start;
    uint64_t head = atomic_load_explicit(e->rx.head, memory_order_acquire);
    if (head == tail) {
        if (!atomic_load_explicit(e->peer_closed, memory_order_acquire))
            return 0;
        /* closed: frames written before the close are still delivered */
        head = atomic_load_explicit(e->rx.head, memory_order_acquire);
        if (head == tail)
            return SHMRING_EPIPE;
    }
    size_t used = 0, n = 0;
    while (tail != head && n < maxn && n < (size_t)INT32_MAX) {
        uint32_t len = rd32(e->rx.data + (tail & e->mask));
        if ((uint64_t)len + 4 > e->mask + 1 || shmring_frame_size(len) > head - tail)
            return SHMRING_EBADMSG; /* the peer wrote garbage: never read past head */
        if (len > cap - used) {
            if (n == 0) {
                *need = len;
                return SHMRING_ENOBUFS;
            }
            break;
        }
        ring_get(e->rx.data, e->mask, tail + 4, buf + used, len);
        used += len;
        lens[n++] = len;
        tail += shmring_frame_size(len);
    }
    if (tail != start)
        publish_tail(e, tail);
    *nbytes = used;
    return (int)n;
}

int shmring_arm_recv(shmring_end *e) {
    atomic_store_explicit(e->rx.data_waiting, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(e->rx.head, memory_order_acquire) !=
            atomic_load_explicit(e->rx.tail, memory_order_relaxed) ||
        atomic_load_explicit(e->peer_closed, memory_order_acquire) || e->closed) {
        atomic_store_explicit(e->rx.data_waiting, 0, memory_order_relaxed);
        return 1;
    }
    return 0;
}

int shmring_arm_send(shmring_end *e, uint32_t need) {
    atomic_store_explicit(e->tx.space_waiting, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t used = atomic_load_explicit(e->tx.head, memory_order_relaxed) -
                    atomic_load_explicit(e->tx.tail, memory_order_acquire);
    if (used + need <= e->mask + 1 || atomic_load_explicit(e->peer_closed, memory_order_acquire) ||
        e->closed) {
        atomic_store_explicit(e->tx.space_waiting, 0, memory_order_relaxed);
        return 1;
    }
    return 0;
}

void shmring_ack(shmring_end *e) {
    uint64_t v;
    ssize_t rc = read(e->my_efd, &v, sizeof v);
    (void)rc;
}

static inline int recv_ready(shmring_end *e) {
    return atomic_load_explicit(e->rx.head, memory_order_acquire) !=
               atomic_load_explicit(e->rx.tail, memory_order_relaxed) ||
           atomic_load_explicit(e->peer_closed, memory_order_acquire);
}

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int shmring_wait_recv(shmring_end *e, int timeout_ms, int spin_us) {
    if (e->closed)
        return SHMRING_EBADF;
    if (spin_us > 0) {
        /* time-based: a pause lasts 10 to 140 cycles depending on the CPU */
        int64_t until = now_ns() + (int64_t)spin_us * 1000;
        for (unsigned i = 0;; i++) {
            if (recv_ready(e))
                return SHMRING_OK;
            if ((i & 31) == 31 && now_ns() >= until)
                break;
            CPU_RELAX();
        }
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (shmring_arm_recv(e))
            return SHMRING_OK;
        int left = timeout_ms;
        if (timeout_ms >= 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long ms = (now.tv_sec - t0.tv_sec) * 1000L + (now.tv_nsec - t0.tv_nsec) / 1000000L;
            left = ms >= timeout_ms ? 0 : (int)(timeout_ms - ms);
        }
        struct pollfd p = {.fd = e->my_efd, .events = POLLIN};
        int rc = poll(&p, 1, left);
        if (rc < 0) /* EINTR too: the caller runs its signal handlers, then waits again */
            return errno == EINTR ? SHMRING_EINTR : -errno;
        if (rc > 0)
            shmring_ack(e);
        if (recv_ready(e)) {
            atomic_store_explicit(e->rx.data_waiting, 0, memory_order_relaxed);
            return SHMRING_OK;
        }
        if (rc == 0 && left == 0) {
            atomic_store_explicit(e->rx.data_waiting, 0, memory_order_relaxed);
            return SHMRING_ETIMEDOUT;
        }
    }
}
