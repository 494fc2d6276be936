/* slowio.c - the SSD slow tier: a file read by offset, in batches.
 *
 * Reads go through io_uring (one submission for the whole batch, up to io_depth in flight) and fall
 * back to preadv when io_uring_queue_init fails (io_uring disabled, seccomp) or when the caller forces
 * it (RECMG_F_NO_IO_URING, or RECMG_NO_IO_URING=1 in the environment). Rows are read with O_DIRECT
 * into page-aligned bounce buffers (the aligned block range that holds the row) when the file
 * system supports it and the row is not much smaller than the direct-I/O alignment; otherwise
 * buffered, straight into the destination. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <liburing.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define DEFAULT_DEPTH 128u
#define STATX_DIOALIGN_BIT 0x2000u

typedef struct io_req {
    uint64_t off;
    uint8_t *buf;
    uint32_t len;
    uint32_t done;
    int fd;
    uint32_t pad;
} io_req;

void slowio_init(slowio *io)
{
    memset(io, 0, sizeof *io);
    io->fd = -1;
    io->dfd = -1;
    io->depth = DEFAULT_DEPTH;
}

void slowio_close(slowio *io)
{
    if (io->uring_state == 1 && io->uring) io_uring_queue_exit((struct io_uring *)io->uring);
    free(io->uring);
    io->uring = NULL;
    io->uring_state = 0;
    if (io->fd >= 0) close(io->fd);
    if (io->dfd >= 0) close(io->dfd);
    io->fd = io->dfd = -1;
    free(io->bounce);
    free(io->reqs);
    io->bounce = NULL;
    io->reqs = NULL;
    io->bounce_cap = io->reqs_cap = 0;
}

void slowio_trim(slowio *io, size_t keep)
{
    buf_trim((void **)&io->bounce, &io->bounce_cap, 1, keep);
    buf_trim(&io->reqs, &io->reqs_cap, sizeof(io_req), keep);
}

/* O_DIRECT offset alignment of an open file: statx(STATX_DIOALIGN) where the kernel reports it. */
static uint32_t dio_align(int fd)
{
    unsigned char buf[256];
    memset(buf, 0, sizeof buf);
    if (syscall(SYS_statx, fd, "", AT_EMPTY_PATH, STATX_DIOALIGN_BIT, buf) == 0) {
        uint32_t mask, mem, off;
        memcpy(&mask, buf, 4);
        memcpy(&mem, buf + 0x98, 4);
        memcpy(&off, buf + 0x9c, 4);
        if ((mask & STATX_DIOALIGN_BIT) && off && mem) {
            uint32_t a = off > mem ? off : mem;
            if (a <= RECMG_PAGE && (a & (a - 1)) == 0) return a;
            return 0;
        }
        if (mask & STATX_DIOALIGN_BIT) return 0; /* the file system has no direct I/O */
    }
    return RECMG_PAGE; /* unknown: the page size is always a valid alignment */
}

/* Why a slow-tier file may not serve this pool, or NULL: it must be a regular file owned by the pool's
 * owner (the shm object's uid) whose owner may read it by the mode bits. A daemon running as root
 * thereby never reads a file that the pool's owner could not read. */
static const char *file_refused(const struct stat *st, uid_t owner, char *buf, size_t len)
{
    if (!S_ISREG(st->st_mode)) return "it is not a regular file";
    if (st->st_uid != owner) {
        snprintf(buf, len, "it is owned by uid %u, the pool by uid %u", (unsigned)st->st_uid, (unsigned)owner);
        return buf;
    }
    if (!(st->st_mode & S_IRUSR)) {
        snprintf(buf, len, "its owner may not read it (mode %04o)", (unsigned)(st->st_mode & 07777));
        return buf;
    }
    return NULL;
}

/* Opens the file at path with flags (O_RDWR or O_RDONLY, O_DIRECT allowed) only if it is a regular file,
 * never following a final symbolic link (ELOOP), and fills *st. The path is first opened with O_PATH,
 * which opens no file: a FIFO is never opened for reading (that waits for a writer, for ever if nobody
 * writes) nor a device (whose open can act). The checked inode is then reopened through
 * /proc/self/fd/N, so the file opened is the one checked; without /proc, by its path again, with
 * O_NONBLOCK and O_NOCTTY (no wait, no terminal) and the same device and inode required. -1 with errno:
 * ENOEXEC for a file that is not regular (st filled: file_refused says why), ESTALE for a path replaced
 * in between, else the open's. */
static int open_regular(const char *path, int flags, struct stat *st)
{
    int pfd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (pfd < 0) return -1;
    if (fstat(pfd, st) != 0) {
        int e = errno;
        close(pfd);
        errno = e;
        return -1;
    }
    if (!S_ISREG(st->st_mode)) { /* (O_PATH with O_NOFOLLOW opens a symbolic link itself) */
        close(pfd);
        errno = S_ISLNK(st->st_mode) ? ELOOP : ENOEXEC;
        return -1;
    }
    char proc[48];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", pfd);
    int fd = open(proc, flags | O_CLOEXEC);
    int e = errno;
    if (fd < 0 && e == ENOENT) { /* no /proc here: the path again, and the inode compared */
        fd = open(path, flags | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        e = errno;
        struct stat again;
        if (fd >= 0 && (fstat(fd, &again) != 0 || again.st_dev != st->st_dev || again.st_ino != st->st_ino)) {
            close(fd);
            fd = -1;
            e = ESTALE;
        }
        const int fl = fd >= 0 ? fcntl(fd, F_GETFL) : 0;
        if (fd >= 0 && (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0)) {
            e = errno;
            close(fd);
            fd = -1;
        }
    }
    close(pfd);
    if (fd >= 0 && fstat(fd, st) != 0) {
        e = errno;
        close(fd);
        fd = -1;
    }
    errno = e;
    return fd;
}

/* Reserves size bytes for a new file: a clear error (and nothing reserved) when the file system has
 * not that much room, then posix_fallocate, so that no later write finds the disk full. */
static int reserve(recmg_pool *p, int fd, const char *path, uint64_t size)
{
    struct statvfs vf;
    /* (a file system that reports no size, as ramfs, is left to posix_fallocate) */
    if (fstatvfs(fd, &vf) == 0 && vf.f_blocks && (uint64_t)vf.f_bavail * vf.f_frsize < size)
        return rc_set(p, RECMG_ENOSPC, "slow-tier file %s needs %llu bytes; its file system has %llu free", path,
                      (unsigned long long)size, (unsigned long long)vf.f_bavail * vf.f_frsize);
    if (size == 0) return RECMG_OK;
    int e = posix_fallocate(fd, 0, (off_t)size);
    if (e == ENOSPC)
        return rc_set(p, RECMG_ENOSPC, "slow-tier file %s: no room for %llu bytes on its file system", path,
                      (unsigned long long)size);
    if (e == EOPNOTSUPP || e == EINVAL) /* no fallocate on this file system: a sparse file, as before */
        return ftruncate(fd, (off_t)size) == 0
                   ? RECMG_OK
                   : rc_set(p, RECMG_EIO, "cannot size slow-tier file %s to %llu bytes: %s", path,
                            (unsigned long long)size, strerror(errno));
    if (e)
        return rc_set(p, RECMG_EIO, "cannot reserve %llu bytes for slow-tier file %s: %s", (unsigned long long)size,
                      path, strerror(e));
    return RECMG_OK;
}

int slowio_open(recmg_pool *p, const char *path, int how, uint64_t size, uint32_t mode, uid_t owner, int *created)
{
    slowio *io = &p->io;
    if (env_flag("RECMG_NO_IO_URING")) io->flags |= RECMG_F_NO_IO_URING;
    if (env_flag("RECMG_NO_DIRECT")) io->flags |= RECMG_F_NO_DIRECT;
    const char *env = getenv("RECMG_IO_DEPTH");
    if (env && env[0]) {
        long d = strtol(env, NULL, 10);
        if (d >= 1 && d <= 4096) io->depth = (unsigned)d;
    }
    if (created) *created = 0;
    if (how != SLOW_ATTACH) {
        /* never truncate: a new file, or (SLOW_REUSE) the existing one if its size is the pool's */
        io->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (io->fd >= 0) {
            if (created) *created = 1;
            if (fchmod(io->fd, mode) != 0)
                return rc_set(p, RECMG_EIO, "cannot chmod slow-tier file %s to %o: %s", path, mode, strerror(errno));
            int rc = reserve(p, io->fd, path, size);
            if (rc) return rc;
        } else if (errno == EEXIST && how == SLOW_CREATE) {
            return rc_set(p, RECMG_EEXIST,
                          "slow-tier file %s already exists (never overwritten: remove it, or reuse its tables)", path);
        } else if (errno != EEXIST) {
            return rc_set(p, RECMG_EIO, "cannot create slow-tier file %s: %s", path, strerror(errno));
        }
    }
    struct stat st;
    if (io->fd < 0) {
        io->fd = open_regular(path, O_RDWR, &st);
        if (io->fd < 0 && (errno == EACCES || errno == EROFS)) io->fd = open_regular(path, O_RDONLY, &st);
        if (io->fd < 0) {
            if (errno == ELOOP)
                return rc_set(p, RECMG_EIO, "slow-tier file %s refused: it is a symbolic link", path);
            if (errno == ENOEXEC)
                return rc_set(p, RECMG_EIO, "slow-tier file %s refused: it is not a regular file (not opened)",
                              path);
            if (errno == ESTALE)
                return rc_set(p, RECMG_EIO, "slow-tier file %s was replaced while it was opened", path);
            return rc_set(p, RECMG_EIO, "cannot open slow-tier file %s: %s", path, strerror(errno));
        }
    } else if (fstat(io->fd, &st) != 0) {
        return rc_set(p, RECMG_EIO, "cannot stat slow-tier file %s: %s", path, strerror(errno));
    }
    char why[96];
    const char *bad = file_refused(&st, owner, why, sizeof why);
    if (bad) return rc_set(p, RECMG_EIO, "slow-tier file %s refused: %s", path, bad);
    const int fl = fcntl(io->fd, F_GETFL);
    if (fl < 0) return rc_set(p, RECMG_EIO, "fcntl(%s, F_GETFL): %s", path, strerror(errno));
    io->writable = (st.st_mode & S_IWUSR) && (fl & O_ACCMODE) == O_RDWR;
    if (how == SLOW_REUSE && !(created && *created) && (uint64_t)st.st_size != size)
        return rc_set(p, RECMG_EINVAL, "slow-tier file %s is %lld bytes; these tables need %llu (not reused)", path,
                      (long long)st.st_size, (unsigned long long)size);
    if ((uint64_t)st.st_size < size)
        return rc_set(p, RECMG_EIO, "slow-tier file %s is %lld bytes; the pool needs %llu", path,
                      (long long)st.st_size, (unsigned long long)size);
    if (!(io->flags & RECMG_F_NO_DIRECT)) {
        struct stat dst;
        int dfd = open_regular(path, O_RDONLY | O_DIRECT, &dst);
        /* the same file that was checked, or none (the path may have been replaced meanwhile) */
        if (dfd >= 0 && (dst.st_dev != st.st_dev || dst.st_ino != st.st_ino)) {
            close(dfd);
            dfd = -1;
        }
        if (dfd >= 0) {
            uint32_t a = dio_align(dfd);
            if (a) {
                io->dfd = dfd;
                io->align = a;
            } else {
                close(dfd);
            }
        }
    }
    return RECMG_OK;
}

const char *slowio_backend(recmg_pool *p)
{
    if (p->h->slow_kind != RECMG_SLOW_SSD) return "memory";
    if (p->io.uring_state == 0) {
        if (p->io.flags & RECMG_F_NO_IO_URING) return "preadv";
        return "io_uring"; /* not initialised yet: it will be tried at the first read */
    }
    return p->io.uring_state == 1 ? "io_uring" : "preadv";
}

static void uring_try_init(slowio *io)
{
    if (io->uring_state != 0) return;
    io->uring_state = -1;
    if (io->flags & RECMG_F_NO_IO_URING) return;
    struct io_uring *r = calloc(1, sizeof *r);
    if (!r) return;
    if (io_uring_queue_init(io->depth, r, 0) != 0) {
        free(r);
        return;
    }
    io->uring = r;
    io->uring_state = 1;
    io->uring_pid = getpid();
}

/* In a child forked with the handle: lets go of the parent's ring (this process's mapping of its
 * queues and its descriptor; the parent's ring is untouched), so that the next batch sets up this
 * process's own. */
static void uring_leave_inherited(slowio *io)
{
    io_uring_queue_exit((struct io_uring *)io->uring);
    free(io->uring);
    io->uring = NULL;
    io->uring_state = 0;
}

/* io_uring: queue every request, submit, keep up to depth in flight, resubmit short reads. Never
 * returns with I/O still in flight. Returns 0 or -errno of the first failure (*bad = its request). */
static int run_uring(slowio *io, io_req *rq, uint64_t n, uint64_t *bad)
{
    struct io_uring *ring = io->uring;
    uint64_t next = 0, done = 0, inflight = 0;
    uint64_t retry[64];
    unsigned nretry = 0;
    int err = 0;
    while (done < n) {
        while (!err && inflight < io->depth && (nretry || next < n)) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
            if (!sqe) break;
            uint64_t k = nretry ? retry[--nretry] : next++;
            io_uring_prep_read(sqe, rq[k].fd, rq[k].buf + rq[k].done, rq[k].len - rq[k].done, rq[k].off + rq[k].done);
            io_uring_sqe_set_data64(sqe, k);
            inflight++;
        }
        if (inflight == 0) { /* an error stopped submission and everything has landed, or no entry */
            if (!err) err = -EBUSY, *bad = nretry ? retry[nretry - 1] : (next < n ? next : n - 1);
            break;
        }
        int ret = io_uring_submit_and_wait(ring, 1);
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
            /* cannot submit: wait for what is in flight (it was submitted earlier), then fail */
            if (!err) err = ret, *bad = next ? next - 1 : 0;
            while (inflight) {
                struct io_uring_cqe *cqe;
                if (io_uring_wait_cqe(ring, &cqe) != 0) break;
                io_uring_cqe_seen(ring, cqe);
                inflight--;
            }
            return err;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(ring, head, cqe)
        {
            uint64_t k = io_uring_cqe_get_data64(cqe);
            int res = cqe->res;
            seen++;
            inflight--;
            if (res == -EAGAIN || res == -EINTR) {
                if (nretry < 64) {
                    retry[nretry++] = k;
                    continue;
                }
                res = -EIO;
            }
            if (res < 0 || res == 0) {
                if (!err) err = res < 0 ? res : -ENODATA, *bad = k;
                done++;
                continue;
            }
            rq[k].done += (uint32_t)res;
            if (rq[k].done < rq[k].len && !err && nretry < 64) {
                retry[nretry++] = k;
            } else {
                if (rq[k].done < rq[k].len && !err) err = -EIO, *bad = k;
                done++;
            }
        }
        io_uring_cq_advance(ring, seen);
        if (err && inflight == 0) break;
    }
    return err;
}

/* preadv: requests that are contiguous in the file are merged into one call (one iovec each). */
static int run_preadv(io_req *rq, uint64_t n, uint64_t *bad)
{
    struct iovec iov[64];
    uint64_t k = 0;
    while (k < n) {
        uint64_t j = k;
        int cnt = 0;
        uint64_t off = rq[k].off;
        size_t total = 0;
        while (j < n && cnt < 64 && rq[j].off == off + total && rq[j].fd == rq[k].fd) {
            iov[cnt].iov_base = rq[j].buf;
            iov[cnt].iov_len = rq[j].len;
            total += rq[j].len;
            cnt++;
            j++;
        }
        size_t got = 0;
        while (got < total) {
            /* skip the iovecs already filled */
            size_t skip = got;
            int first = 0;
            while (skip >= iov[first].iov_len) skip -= iov[first++].iov_len;
            struct iovec save = iov[first];
            iov[first].iov_base = (uint8_t *)iov[first].iov_base + skip;
            iov[first].iov_len -= skip;
            ssize_t r = preadv(rq[k].fd, iov + first, cnt - first, (off_t)(off + got));
            iov[first] = save;
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                *bad = k;
                return r < 0 ? -errno : -ENODATA;
            }
            got += (size_t)r;
        }
        k = j;
    }
    return 0;
}

static int run_batch(slowio *io, io_req *rq, uint64_t n, uint64_t *bad)
{
    if (io->uring_state == 1 && io->uring_pid != getpid()) uring_leave_inherited(io);
    uring_try_init(io);
    if (io->uring_state == 1) return run_uring(io, rq, n, bad);
    return run_preadv(rq, n, bad);
}

/* Whether a read of len bytes goes through the O_DIRECT descriptor (the rule of slowio_read), and then
 * the aligned span [*a0, *a1) that covers [off, off + len). */
static int direct_span(const slowio *io, uint64_t off, uint32_t len, uint64_t *a0, uint64_t *a1)
{
    const uint32_t A = io->align;
    if (io->dfd < 0 || (uint64_t)len * 4 < A) return 0;
    *a0 = off / A * A;
    *a1 = (off + len + A - 1) / A * A;
    return 1;
}

uint64_t slowio_read_span(const recmg_pool *p, uint64_t off, uint32_t len)
{
    uint64_t a0, a1;
    return direct_span(&p->io, off, len, &a0, &a1) ? a1 - a0 : len;
}

int slowio_read(recmg_pool *p, const slow_req *r, uint64_t n, uint64_t *bytes_read)
{
    slowio *io = &p->io;
    if (n == 0) return RECMG_OK;
    if (grow(&io->reqs, &io->reqs_cap, n, sizeof(io_req)) != 0)
        return rc_set(p, RECMG_ENOMEM, "out of memory for %llu slow-tier reads", (unsigned long long)n);
    io_req *rq = io->reqs;
    for (;;) {
        uint32_t A = io->align;
        size_t bneed = 0;
        for (uint64_t k = 0; k < n; k++) {
            uint64_t a0, a1;
            if (direct_span(io, r[k].off, r[k].len, &a0, &a1)) bneed += (r[k].len + A - 1) / A * A + A;
        }
        if (bneed > io->bounce_cap) {
            free(io->bounce);
            io->bounce = NULL;
            io->bounce_cap = 0;
            size_t cap = bneed < (1u << 20) ? (1u << 20) : bneed;
            void *b = NULL;
            if (posix_memalign(&b, RECMG_PAGE, cap) != 0)
                return rc_set(p, RECMG_ENOMEM, "out of memory for %zu bytes of I/O buffers", cap);
            io->bounce = b;
            io->bounce_cap = cap;
        }
        uint64_t bytes = 0;
        size_t bpos = 0;
        int any_direct = 0;
        for (uint64_t k = 0; k < n; k++) {
            uint32_t len = r[k].len;
            uint64_t a0, a1;
            if (direct_span(io, r[k].off, len, &a0, &a1)) {
                rq[k] = (io_req){.off = a0, .buf = io->bounce + bpos, .len = (uint32_t)(a1 - a0), .fd = io->dfd};
                bpos += (len + A - 1) / A * A + A;
                any_direct = 1;
            } else {
                rq[k] = (io_req){.off = r[k].off, .buf = r[k].dst, .len = len, .fd = io->fd};
            }
            bytes += rq[k].len;
        }
        uint64_t bad = 0;
        int e = run_batch(io, rq, n, &bad);
        if (e == -EINVAL && any_direct) { /* the file system refused our alignment: go buffered for good */
            close(io->dfd);
            io->dfd = -1;
            continue;
        }
        if (e) {
            const char *why = e == -ENODATA ? "end of file (the file is shorter than the pool)" : strerror(-e);
            return rc_set(p, RECMG_EIO, "reading slow-tier file %s at offset %llu failed: %s", p->h->slow_path,
                          (unsigned long long)r[bad].off, why);
        }
        if (any_direct)
            for (uint64_t k = 0; k < n; k++)
                if (rq[k].fd == io->dfd) memcpy(r[k].dst, rq[k].buf + (r[k].off - rq[k].off), r[k].len);
        if (bytes_read) *bytes_read += bytes;
        return RECMG_OK;
    }
}

int slowio_write_row(recmg_pool *p, uint64_t off, const uint8_t *src, uint32_t len)
{
    if (!p->io.writable)
        return rc_set(p, RECMG_EIO, "slow-tier file %s is not writable (its owner has no write permission, or it "
                      "was opened read-only)", p->h->slow_path);
    size_t got = 0;
    while (got < len) {
        ssize_t w = pwrite(p->io.fd, src + got, len - got, (off_t)(off + got));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return rc_set(p, RECMG_EIO, "writing slow-tier file %s at offset %llu failed: %s", p->h->slow_path,
                          (unsigned long long)off, w < 0 ? strerror(errno) : "no progress");
        got += (size_t)w;
    }
    return RECMG_OK;
}
