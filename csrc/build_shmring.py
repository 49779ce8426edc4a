"""cffi out-of-line API-mode builder for the shared-memory ring (datasync._shmring).

setup.py lists ``csrc/build_shmring.py:ffibuilder`` in CFFI_MODULES; running this file
directly builds the module in the current directory (handy while hacking on the C).
"""

import os

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEBUG = os.environ.get("DATASYNC_DEBUG", "") == "1"

# Mirrors shmring.h; "..." lets the C compiler supply the constant values.
CDEF = """
#define SHMRING_MAGIC ...
#define SHMRING_VERSION ...
#define SHMRING_HEADER_SIZE ...
#define SHMRING_MIN_CAPACITY ...
#define SHMRING_MAX_CAPACITY ...
#define SHMRING_CLIENT ...
#define SHMRING_SERVER ...
#define SHMRING_F_POSIX_SHM ...
#define SHMRING_OK ...
#define SHMRING_EINTR ...
#define SHMRING_EBADF ...
#define SHMRING_EAGAIN ...
#define SHMRING_ENOMEM ...
#define SHMRING_EINVAL ...
#define SHMRING_EPIPE ...
#define SHMRING_EBADMSG ...
#define SHMRING_EMSGSIZE ...
#define SHMRING_ENOBUFS ...
#define SHMRING_ETIMEDOUT ...
#define SHMRING_ENODATA ...

typedef struct shmring_seg shmring_seg;
typedef struct shmring_end shmring_end;

int shmring_create(uint32_t ring_capacity, int flags, shmring_seg **out);
int shmring_attach(int memfd, int efd_client, int efd_server, shmring_seg **out);
void shmring_fds(const shmring_seg *seg, int fds[3]);
uint32_t shmring_capacity(const shmring_seg *seg);
void shmring_free(shmring_seg *seg);

shmring_end *shmring_end_get(shmring_seg *seg, int role);
void shmring_end_close(shmring_end *end);
int shmring_end_fd(const shmring_end *end);
int shmring_peer_closed(const shmring_end *end);
uint32_t shmring_max_body(const shmring_end *end);

int shmring_send(shmring_end *end, const char *body, uint32_t len);
int shmring_send_many(shmring_end *end, const char *data, const uint32_t *lens, size_t n);
int shmring_recv_many(shmring_end *end, char *buf, size_t cap, uint32_t *lens, size_t maxn,
                      size_t *nbytes, uint32_t *need);
uint32_t shmring_frame_size(uint32_t len);

int shmring_arm_recv(shmring_end *end);
int shmring_arm_send(shmring_end *end, uint32_t need);
void shmring_ack(shmring_end *end);
int shmring_wait_recv(shmring_end *end, int timeout_ms, int spin_us);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "datasync._shmring",
    '#include "shmring.h"',
    sources=[os.path.relpath(os.path.join(_HERE, "shmring.c"))],
    include_dirs=[os.path.relpath(_HERE)],
    # rt: shm_open lives there on glibc < 2.34 (the POSIX shm fallback)
    libraries=["rt"],
    define_macros=[] if _DEBUG else [("NDEBUG", "1")],
    extra_compile_args=(["-O0", "-g"] if _DEBUG else ["-O2"])
    + ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
