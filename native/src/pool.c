/* pool.c - layout, create, attach, close, destroy, info. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

int rc_buf(char *buf, size_t len, int code, const char *fmt, ...)
{
    if (buf && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, len, fmt, ap);
        va_end(ap);
    }
    return code;
}

int rc_set(recmg_pool *p, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&p->err_lock);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    pthread_mutex_unlock(&p->err_lock);
    va_end(ap);
    return code;
}

int err_copy(recmg_pool *p, int code, char *buf, size_t len)
{
    pthread_mutex_lock(&p->err_lock);
    snprintf(buf, len, "%s", p->err);
    pthread_mutex_unlock(&p->err_lock);
    return code;
}

const char *recmg_errmsg(const recmg_pool *p) { return p ? p->err : "no pool"; }

const char *recmg_strerror(int code)
{
    switch (code) {
    case RECMG_OK: return "ok";
    case RECMG_EINVAL: return "invalid argument";
    case RECMG_ENOENT: return "no such pool";
    case RECMG_EEXIST: return "pool exists";
    case RECMG_EVERSION: return "wrong layout version";
    case RECMG_ENOTPOOL: return "not a pool";
    case RECMG_ERANGE: return "row id out of range";
    case RECMG_EIO: return "slow-tier I/O error";
    case RECMG_ENOSPC: return "no space";
    case RECMG_ENOMEM: return "out of memory";
    case RECMG_ESYS: return "system call failed";
    case RECMG_EBUSY: return "busy";
    case RECMG_ELOCKED: return "writer lock held by another process";
    default: return "unknown error";
    }
}

int grow(void **buf, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    if (need > SIZE_MAX / 2 / elem) return -1; /* n doubles to under 2 * need: n * elem must not wrap */
    size_t n = *cap ? *cap : 1024;
    while (n < need) n *= 2;
    void *b = realloc(*buf, n * elem);
    if (!b) return -1;
    *buf = b;
    *cap = n;
    return 0;
}

/* rows_buf's first size; it doubles from there (tests/test_pool_slow_file.py grows it past this) */
#define ROWS_BUF_FIRST 65536u

uint8_t *rows_buf(recmg_pool *p, uint64_t rows, uint64_t keep, size_t stride)
{
    if (stride && rows > SIZE_MAX / 2 / stride) return NULL; /* (cap doubles to under 2 * need) */
    const size_t need = (size_t)rows * stride;
    if (need > p->mbuf_cap || !p->mbuf) { /* (a fill of no rows gets a buffer too: NULL means no memory) */
        size_t cap = p->mbuf_cap ? p->mbuf_cap : ROWS_BUF_FIRST;
        while (cap < need) cap *= 2;
        void *b = NULL;
        if (posix_memalign(&b, 64, cap) != 0) return NULL;
        if (keep) memcpy(b, p->mbuf, (size_t)keep * stride);
        free(p->mbuf);
        p->mbuf = b;
        p->mbuf_cap = cap;
    }
    return p->mbuf;
}

void buf_trim(void **buf, size_t *cap, size_t elem, size_t keep)
{
    if (*cap * elem <= keep) return;
    free(*buf);
    *buf = NULL;
    *cap = 0;
}

void scratch_trim(recmg_pool *p)
{
    buf_trim((void **)&p->mbuf, &p->mbuf_cap, 1, SCRATCH_KEEP_BYTES);
    buf_trim((void **)&p->m_rows, &p->m_cap, sizeof *p->m_rows, SCRATCH_KEEP_BYTES);
    buf_trim((void **)&p->m_ver, &p->m_ver_cap, sizeof *p->m_ver, SCRATCH_KEEP_BYTES);
    buf_trim((void **)&p->h_ent, &p->h_cap, sizeof *p->h_ent, SCRATCH_KEEP_BYTES); /* (hash_prepare makes it again) */
    buf_trim(&p->sreq, &p->sreq_cap, sizeof(slow_req), SCRATCH_KEEP_BYTES);
    slowio_trim(&p->io, SCRATCH_KEEP_BYTES);
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static uint32_t dtype_bytes(int dtype) { return dtype == RECMG_F16 ? 2u : 4u; }

/* ---------------- layout ---------------- */

typedef struct layout {
    uint64_t tables_off, vers_off, index_off, rings_off, slots_off, slow_off, total;
    uint64_t slow_bytes, index_entries, meta_bytes, ring_stride;
    uint32_t slot_stride, ring_records, n_rings;
} layout;

static uint32_t pow2_at_least(uint32_t x)
{
    uint32_t r = 16;
    while (r < x && r < (1u << 30)) r <<= 1;
    return r;
}

/* The most row bytes a pool's tables may hold in all (64 PiB): with the index (4 bytes a row, rows
 * under 2^40 a table) and the slots (under 2^31 of under 2^18 bytes) every offset stays far below 2^64. */
#define MAX_SLOW_BYTES (UINT64_C(1) << 56)

/* Computes the layout; when tables is not NULL also fills each table's descriptor. */
static int compute_layout(const recmg_create_opts *o, layout *L, shm_table *tables, char *err, size_t errlen)
{
    memset(L, 0, sizeof *L);
    if (o->n_tables == 0 || o->n_tables > RECMG_MAX_TABLES || !o->tables)
        return rc_buf(err, errlen, RECMG_EINVAL, "a pool needs 1 to %u tables, got %u", RECMG_MAX_TABLES,
                      o->n_tables);
    if (o->dtype != RECMG_F32 && o->dtype != RECMG_F16)
        return rc_buf(err, errlen, RECMG_EINVAL, "unknown dtype code %d (float32 or float16)", o->dtype);
    if (o->slow_kind < RECMG_SLOW_DRAM || o->slow_kind > RECMG_SLOW_SSD)
        return rc_buf(err, errlen, RECMG_EINVAL, "unknown slow tier code %d", o->slow_kind);
    if (o->n_slots >= (UINT64_C(1) << 31))
        return rc_buf(err, errlen, RECMG_EINVAL, "too many slots: %llu (at most 2^31 - 1)",
                      (unsigned long long)o->n_slots);
    uint32_t rr = o->ring_records ? o->ring_records : 65536u;
    if (rr > (1u << 28))
        return rc_buf(err, errlen, RECMG_EINVAL, "ring_records %u too large (at most 2^28)", rr);
    L->ring_records = pow2_at_least(rr);
    L->n_rings = o->n_rings ? o->n_rings : 16u;
    if (L->n_rings > 4096) return rc_buf(err, errlen, RECMG_EINVAL, "too many rings: %u (at most 4096)", L->n_rings);
    uint32_t esz = dtype_bytes(o->dtype);
    uint32_t max_rb = 8;
    uint64_t idx = 0, slow = 0;
    for (uint32_t t = 0; t < o->n_tables; t++) {
        const recmg_table_spec *s = &o->tables[t];
        if (s->rows == 0 || s->rows > RECMG_ROW_MASK + 1)
            return rc_buf(err, errlen, RECMG_EINVAL, "table %u: rows must be 1..2^40, got %llu", t,
                          (unsigned long long)s->rows);
        if (s->dim == 0 || s->dim > 65536)
            return rc_buf(err, errlen, RECMG_EINVAL, "table %u: dim must be 1..65536, got %u", t, s->dim);
        uint32_t rb = s->dim * esz;
        if (rb > max_rb) max_rb = rb;
        if (tables) {
            memset(&tables[t], 0, sizeof tables[t]);
            tabdesc *d = &tables[t].d;
            d->rows = s->rows;
            d->dim = s->dim;
            d->dtype = o->dtype;
            d->row_bytes = rb;
            d->index_first = idx;
            d->slow_off = slow;
        }
        /* each table is under 2^58 bytes; their sum is bounded so that no offset below wraps */
        if (s->rows * (uint64_t)rb > MAX_SLOW_BYTES - slow)
            return rc_buf(err, errlen, RECMG_EINVAL, "tables 0..%u hold over %llu PiB of rows: too large", t,
                          (unsigned long long)(MAX_SLOW_BYTES >> 50));
        idx += s->rows;
        slow = align_up(slow + s->rows * (uint64_t)rb, RECMG_PAGE);
    }
    L->index_entries = idx;
    L->slow_bytes = slow;
    L->slot_stride = (uint32_t)align_up(max_rb, 64);
    L->ring_stride = align_up(sizeof(shm_ring) + (uint64_t)L->ring_records * 8, 64);
    uint64_t off = RECMG_HDR_BYTES;
    L->tables_off = off;
    off = align_up(off + (uint64_t)o->n_tables * sizeof(shm_table), 64);
    L->vers_off = off;
    off = align_up(off + version_groups(idx) * 4, 64);
    L->index_off = off;
    off = align_up(off + idx * 4, 64);
    L->rings_off = off;
    off = align_up(off + L->n_rings * L->ring_stride, RECMG_PAGE);
    L->meta_bytes = off; /* header, tables, versions, index, rings: everything but rows */
    L->slots_off = off;
    off = align_up(off + o->n_slots * L->slot_stride, RECMG_PAGE);
    L->slow_off = off;
    if (o->slow_kind != RECMG_SLOW_SSD) off += slow;
    L->total = off;
    return RECMG_OK;
}

int recmg_layout_size(const recmg_create_opts *o, uint64_t *meta, uint64_t *tb, uint64_t *total)
{
    layout L;
    if (!o) return RECMG_EINVAL;
    int rc = compute_layout(o, &L, NULL, NULL, 0);
    if (rc) return rc;
    uint64_t table_bytes = 0;
    for (uint32_t t = 0; t < o->n_tables; t++)
        table_bytes += o->tables[t].rows * o->tables[t].dim * (uint64_t)dtype_bytes(o->dtype);
    if (meta) *meta = L.meta_bytes;
    if (tb) *tb = table_bytes;
    if (total) *total = L.total;
    return RECMG_OK;
}

/* A control character (a newline...) in a path would break the one-line messages that name it. */
static int has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return 1;
    return 0;
}

/* ---------------- names ---------------- */

static int shm_name(const char *name, char *out, size_t outlen, char *err, size_t errlen)
{
    if (!name) return rc_buf(err, errlen, RECMG_EINVAL, "pool name is NULL");
    const char *n = name[0] == '/' ? name + 1 : name;
    size_t len = strlen(n);
    if (len == 0 || len > 200)
        return rc_buf(err, errlen, RECMG_EINVAL, "pool name must be 1..200 characters, got '%s'", name);
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                 c == '-' || c == '.';
        if (!ok || (i == 0 && c == '.'))
            return rc_buf(err, errlen, RECMG_EINVAL,
                          "bad pool name '%s' (letters, digits, '_', '-', '.' only)", name);
    }
    snprintf(out, outlen, "/%s", n);
    return RECMG_OK;
}

int recmg_check_name(const char *name, char *err, size_t errlen)
{
    char nm[256];
    return shm_name(name, nm, sizeof nm, err, errlen);
}

/* ---------------- handle ---------------- */

static recmg_pool *handle_new(const char *shmname, int role, uint32_t flags)
{
    recmg_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    snprintf(p->name, sizeof p->name, "%s", shmname);
    p->role = role;
    p->flags = flags;
    p->ring_index = -1;
    p->lock_fd = -1;
    p->busguard = -1;
    p->lock_ms = role == RECMG_ROLE_DAEMON ? RECMG_LOCK_MS_DAEMON : RECMG_LOCK_MS_APP;
    const char *lt = getenv("RECMG_LOCK_TIMEOUT_MS");
    if (lt && lt[0]) {
        char *end;
        unsigned long ms = strtoul(lt, &end, 10);
        if (*end == 0 && ms >= 1 && ms <= 3600000ul) p->lock_ms = (uint32_t)ms;
    }
    p->pid = getpid();
    p->start = proc_start(p->pid);
    p->n_threads = 1;
    slowio_init(&p->io);
    p->io.flags = flags;
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_init(&p->err_lock, NULL);
    kernels_select(p);
    p->fault_pass2 = env_flag("RECMG_FAULT_STOP_BEFORE_PASS2");
    return p;
}

/* The process-local geometry from a header and table descriptors that were checked (validate) or
 * written by this process (create). */
static int geom_set(recmg_pool *p, const shm_header *h, const shm_table *tab)
{
    pool_geom *g = &p->geom;
    g->n_tables = h->n_tables;
    g->dtype = h->dtype;
    g->slow_kind = h->slow_kind;
    g->numa_node = h->numa_node;
    g->mode = h->mode;
    g->slot_stride = h->slot_stride;
    g->n_rings = h->n_rings;
    g->ring_records = h->ring_records;
    g->n_slots = h->n_slots;
    g->ring_stride = h->ring_stride;
    g->total_bytes = h->total_bytes;
    g->meta_bytes = h->meta_bytes;
    g->slow_bytes = h->slow_bytes;
    g->index_entries = h->index_entries;
    memcpy(g->slow_path, h->slow_path, sizeof g->slow_path);
    g->slow_path[sizeof g->slow_path - 1] = 0;
    p->h = g;
    p->tables = calloc(h->n_tables, sizeof *p->tables);
    if (!p->tables) return rc_set(p, RECMG_ENOMEM, "out of memory for %u table descriptors", h->n_tables);
    for (uint32_t t = 0; t < h->n_tables; t++)
        p->tables[t] = tab[t].d;
    return RECMG_OK;
}

/* Points the handle into a mapping whose layout is the (validated) header h. */
static void handle_bind(recmg_pool *p, uint8_t *base, size_t bytes, const shm_header *h)
{
    /* Huge pages where the tmpfs grants them (mounted huge=advise): random row reads then miss the TLB
     * far less. For the whole object, except a NUMA slow tier: its binding (mbind) and page mode's
     * move_pages work page by page, and a 2 MiB folio across the fast tier's end would hold slow-tier
     * rows on the fast node (the madvise splits the mapping at slow_off; shmem may still allocate the
     * fast tier's last folio by file offset across it, which create prevents by taking the slow tier's
     * pages first: populate). A dram slow tier is plain local memory: its misses gain as hits do.
     * Ignored (EINVAL) where THP is off. */
    const size_t fast_end = h->slow_kind == RECMG_SLOW_NUMA && h->slow_off < bytes ? (size_t)h->slow_off : bytes;
    (void)madvise(base, fast_end, MADV_HUGEPAGE);
    p->base = base;
    p->map_bytes = bytes;
    p->sh = (shm_header *)base;
    p->stab = (shm_table *)(base + h->tables_off);
    p->vers = (_Atomic uint32_t *)(base + h->vers_off);
    p->index = (_Atomic int32_t *)(base + h->index_off);
    p->rings = base + h->rings_off;
    p->slots = base + h->slots_off;
    p->slow = h->slow_kind == RECMG_SLOW_SSD ? NULL : base + h->slow_off;
}

static void handle_free(recmg_pool *p)
{
    if (!p) return;
    /* a forked child closing its parent's handle must not release the parent's ring */
    if (p->ring && getpid() == p->pid) ring_release_own(p);
    slowio_close(&p->io);
    if (p->h && p->tables) lookup_free(p);
    busguard_remove(p->busguard); /* (before the unmap: the address range may be reused) */
    p->busguard = -1;
    if (p->base) munmap(p->base, p->map_bytes);
    if (p->lock_fd >= 0) close(p->lock_fd);
    free(p->tables);
    free(p->h_ent);
    free(p->sreq);
    free(p->mbuf);
    free(p->m_rows);
    free(p->m_ver);
    free(p->free_list);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->err_lock);
    free(p);
}

static void copy_err(char *err, size_t errlen, const recmg_pool *p)
{
    if (err && errlen) snprintf(err, errlen, "%s", p->err);
}

/* The second half of create and attach: ring, slow-tier file, daemon registration. */
static int handle_open(recmg_pool *p)
{
    const pool_geom *h = p->h;
    if (h->slow_kind == RECMG_SLOW_SSD) {
        int rc = slowio_open(p, h->slow_path, SLOW_ATTACH, h->slow_bytes, 0, p->owner, NULL);
        if (rc) return rc;
    }
    if (p->role == RECMG_ROLE_APP) {
        int rc = ring_claim(p);
        if (rc) return rc;
    } else {
        atomic_store_explicit(&p->sh->daemon_pid, (int32_t)p->pid, memory_order_relaxed);
        /* close what a dead writer left open; a live holder (a stopped app) does not stop the attach:
         * the daemon's writes then return RECMG_ELOCKED until the holder lets go (RECMG_F_NO_WAIT: a
         * held lock is not waited for) */
        const uint32_t ms = p->lock_ms;
        if (p->flags & RECMG_F_NO_WAIT) p->lock_ms = 0;
        int lrc = writer_lock(p);
        p->lock_ms = ms;
        if (lrc == RECMG_OK) {
            recover_fast_tier(p);
            writer_unlock(p);
        }
    }
    return RECMG_OK;
}

/* Takes the pool's memory now (MADV_POPULATE_WRITE: every page faulted in, huge where the madvise and
 * the tmpfs allow, on the slow tier's node where it is bound): a /dev/shm that cannot hold the object
 * (its room taken since the statvfs check, a memory limit) is a create error, not a SIGBUS when the app
 * or the daemon first writes a page. A NUMA slow tier first: a 2 MiB folio the fast tier's last page
 * faults in may reach past the fast tier's end into the file's slow-tier pages (shmem allocates it by
 * file offset), which would put slow rows on the fast node; pages already there make it fall back to
 * small ones. A kernel without it (before 5.14: EINVAL) leaves the object sparse, as before. */
static int populate(recmg_pool *p, uint8_t *base, size_t bytes)
{
    const size_t slow_off = p->h->slow_kind == RECMG_SLOW_NUMA && p->slow ? (size_t)(p->slow - base) : bytes;
    int e = 0;
    if (slow_off < bytes && madvise(base + slow_off, bytes - slow_off, MADV_POPULATE_WRITE) != 0) e = errno;
    if (!e && madvise(base, slow_off, MADV_POPULATE_WRITE) != 0) e = errno;
    if (!e || e == EINVAL) return RECMG_OK;
    return rc_set(p, e == ENOMEM || e == EFAULT ? RECMG_ENOSPC : RECMG_ESYS,
                  "pool '%s' needs %zu bytes of shared memory; /dev/shm could not give them (%s)", p->name + 1,
                  bytes, e == EFAULT ? "it is full" : strerror(e));
}

/* This process's PID namespace: the device and inode of /proc/self/ns/pid, or zeros when /proc cannot
 * tell (not mounted): then nothing is compared. */
static void pid_ns_self(uint64_t *dev, uint64_t *ino)
{
    struct stat st;
    if (stat("/proc/self/ns/pid", &st) == 0) {
        *dev = (uint64_t)st.st_dev;
        *ino = (uint64_t)st.st_ino;
    } else {
        *dev = *ino = 0;
    }
}

int recmg_create(const char *name, const recmg_create_opts *o, recmg_pool **out, char *err, size_t errlen)
{
    char nm[256];
    layout L;
    if (!out || !o) return rc_buf(err, errlen, RECMG_EINVAL, "NULL argument to recmg_create");
    *out = NULL;
    int rc = shm_name(name, nm, sizeof nm, err, errlen);
    if (rc) return rc;
    rc = compute_layout(o, &L, NULL, err, errlen);
    if (rc) return rc;
    if (o->role != RECMG_ROLE_APP && o->role != RECMG_ROLE_DAEMON)
        return rc_buf(err, errlen, RECMG_EINVAL, "unknown role %d", o->role);
    if (o->slow_kind == RECMG_SLOW_SSD) {
        if (!o->slow_path || !o->slow_path[0])
            return rc_buf(err, errlen, RECMG_EINVAL, "the ssd slow tier needs a file path");
        if (strlen(o->slow_path) >= RECMG_PATH_MAX)
            return rc_buf(err, errlen, RECMG_EINVAL, "slow-tier path too long (%zu bytes)", strlen(o->slow_path));
        if (has_control(o->slow_path))
            return rc_buf(err, errlen, RECMG_EINVAL, "slow-tier path has a control character (newline, tab, ...)");
    }
    if (o->slow_kind == RECMG_SLOW_NUMA && !numa_node_valid(o->numa_node))
        return rc_buf(err, errlen, RECMG_EINVAL, "NUMA node %d does not exist on this machine", o->numa_node);
    uint32_t mode = o->mode ? (o->mode & 0777u) : 0600u;

    int fd = shm_open(nm, O_RDWR | O_CREAT | O_EXCL, mode);
    if (fd < 0) {
        if (errno == EEXIST) return rc_buf(err, errlen, RECMG_EEXIST, "pool '%s' already exists", nm + 1);
        return rc_buf(err, errlen, RECMG_ESYS, "shm_open(%s): %s", nm, strerror(errno));
    }
    recmg_pool *p = handle_new(nm, o->role, o->flags);
    if (!p) {
        close(fd);
        shm_unlink(nm);
        return rc_buf(err, errlen, RECMG_ENOMEM, "out of memory creating a pool handle");
    }
    uint8_t *base = MAP_FAILED;
    int created_file = 0;
    struct stat sst;
    if (fstat(fd, &sst) != 0) {
        rc = rc_set(p, RECMG_ESYS, "fstat(%s): %s", nm, strerror(errno));
        goto fail;
    }
    p->owner = sst.st_uid;
    struct statvfs vf; /* the object is sparse: a pool larger than /dev/shm's room would fault later */
    if (fstatvfs(fd, &vf) == 0 && (uint64_t)vf.f_bavail * vf.f_frsize < L.total) {
        rc = rc_set(p, RECMG_ENOSPC, "pool '%s' needs %llu bytes of shared memory; /dev/shm has %llu free", nm + 1,
                    (unsigned long long)L.total, (unsigned long long)vf.f_bavail * vf.f_frsize);
        goto fail;
    }
    if (fchmod(fd, mode) != 0) {
        rc = rc_set(p, RECMG_ESYS, "fchmod(%s, %o): %s", nm, mode, strerror(errno));
        goto fail;
    }
    if (ftruncate(fd, (off_t)L.total) != 0) {
        rc = rc_set(p, RECMG_ESYS, "ftruncate(%s, %llu): %s", nm, (unsigned long long)L.total, strerror(errno));
        goto fail;
    }
    base = mmap(NULL, L.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = rc_set(p, RECMG_ESYS, "mmap(%s, %llu bytes): %s", nm, (unsigned long long)L.total, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    /* the header and descriptors are built here and copied in: the handle's geometry comes from what
     * this process wrote, never from what the object holds afterwards */
    shm_header *h = calloc(1, sizeof *h);
    shm_table *tab = calloc(o->n_tables, sizeof *tab);
    if (!h || !tab) {
        free(h);
        free(tab);
        rc = rc_set(p, RECMG_ENOMEM, "out of memory creating pool '%s'", nm + 1);
        goto fail;
    }
    h->magic = RECMG_MAGIC;
    h->version = RECMG_LAYOUT_VERSION;
    h->hdr_bytes = RECMG_HDR_BYTES;
    h->total_bytes = L.total;
    h->n_tables = o->n_tables;
    h->dtype = o->dtype;
    h->slow_kind = o->slow_kind;
    h->numa_node = o->slow_kind == RECMG_SLOW_NUMA ? o->numa_node : -1;
    h->mode = mode;
    h->n_slots = o->n_slots;
    h->slot_stride = L.slot_stride;
    h->group_shift = RECMG_GROUP_SHIFT;
    h->n_rings = L.n_rings;
    h->ring_records = L.ring_records;
    h->ring_stride = L.ring_stride;
    h->tables_off = L.tables_off;
    h->vers_off = L.vers_off;
    h->slots_off = L.slots_off;
    h->index_off = L.index_off;
    h->rings_off = L.rings_off;
    h->slow_off = L.slow_off;
    h->slow_bytes = L.slow_bytes;
    h->index_entries = L.index_entries;
    h->meta_bytes = L.meta_bytes;
    if (o->slow_kind == RECMG_SLOW_SSD) snprintf(h->slow_path, sizeof h->slow_path, "%s", o->slow_path);
    pid_ns_self(&h->pid_ns_dev, &h->pid_ns_ino);
    compute_layout(o, &L, tab, NULL, 0);
    rc = geom_set(p, h, tab);
    handle_bind(p, base, L.total, h); /* (its madvise first: the pages below are then huge where they may be) */
    if (!rc && o->slow_kind == RECMG_SLOW_NUMA) rc = numa_bind_region(p, p->slow, L.slow_bytes, o->numa_node);
    if (!rc) rc = populate(p, base, L.total);
    if (!rc) {
        memcpy(base, h, sizeof *h);
        memcpy(base + L.tables_off, tab, (size_t)o->n_tables * sizeof *tab);
    }
    free(h);
    free(tab);
    if (rc) goto fail;
    h = p->sh;
    /* versions start at 0 (the object is zero-filled); every index entry at -1 (empty) */
    memset((void *)p->index, 0xff, L.index_entries * 4);
    if (o->slow_kind == RECMG_SLOW_SSD) {
        rc = slowio_open(p, o->slow_path, (o->flags & RECMG_F_REUSE_SLOW) ? SLOW_REUSE : SLOW_CREATE, L.slow_bytes,
                         mode, p->owner, &created_file);
        if (rc) goto fail;
    }
    atomic_store_explicit(&h->ready, 1, memory_order_release);
    if (p->role == RECMG_ROLE_APP) {
        rc = ring_claim(p);
        if (rc) goto fail;
    } else {
        atomic_store_explicit(&h->daemon_pid, (int32_t)p->pid, memory_order_relaxed);
    }
    *out = p;
    return RECMG_OK;
fail:
    copy_err(err, errlen, p);
    if (fd >= 0) close(fd);
    if (base == MAP_FAILED) p->base = NULL;
    else if (!p->base) munmap(base, L.total);
    handle_free(p);
    shm_unlink(nm);
    if (created_file) unlink(o->slow_path); /* nothing left behind; a reused file is kept */
    return rc;
}

/* A header field that does not hold what the layout needs: a one-line error naming it. */
static int bad_field(recmg_pool *p, const char *field, uint64_t have, uint64_t want)
{
    return rc_set(p, RECMG_ENOTPOOL, "pool '%s' is corrupt: header field %s is %llu, its layout needs %llu", p->name + 1,
                  field, (unsigned long long)have, (unsigned long long)want);
}

static int bad_table(recmg_pool *p, uint32_t t, const char *field, uint64_t have, const char *want)
{
    return rc_set(p, RECMG_ENOTPOOL, "pool '%s' is corrupt: table %u descriptor field %s is %llu (%s)", p->name + 1, t,
                  field, (unsigned long long)have, want);
}

/* Checks a private copy of the header (h) and of the table descriptors (tab) against the layout they
 * imply and against the object's real size; every field the handle uses is checked here, and then
 * copied into the handle (geom_set), which never reads them from shared memory again. */
static int validate(recmg_pool *p, const shm_header *h, const shm_table *tab, uint64_t size)
{
    const char *nm = p->name + 1;
    if (h->total_bytes != size) return bad_field(p, "total_bytes", h->total_bytes, size);
    if (h->hdr_bytes != RECMG_HDR_BYTES) return bad_field(p, "hdr_bytes", h->hdr_bytes, RECMG_HDR_BYTES);
    if (h->tables_off != RECMG_HDR_BYTES) return bad_field(p, "tables_off", h->tables_off, RECMG_HDR_BYTES);
    if (h->group_shift != RECMG_GROUP_SHIFT) return bad_field(p, "group_shift", h->group_shift, RECMG_GROUP_SHIFT);
    if (h->mode > 0777u) return bad_field(p, "mode", h->mode, h->mode & 0777u);
    if (h->slow_kind == RECMG_SLOW_SSD && memchr(h->slow_path, 0, sizeof h->slow_path) == NULL)
        return rc_set(p, RECMG_ENOTPOOL, "pool '%s' is corrupt: header field slow_path is not terminated", nm);
    if (h->slow_kind == RECMG_SLOW_SSD && h->slow_path[0] == 0)
        return rc_set(p, RECMG_ENOTPOOL, "pool '%s' is corrupt: header field slow_path is empty", nm);
    if (h->slow_kind == RECMG_SLOW_SSD && has_control(h->slow_path))
        return rc_set(p, RECMG_ENOTPOOL, "pool '%s' is corrupt: header field slow_path has a control character", nm);
    if (h->slow_kind == RECMG_SLOW_NUMA ? h->numa_node < 0 : h->numa_node != -1)
        return rc_set(p, RECMG_ENOTPOOL, "pool '%s' is corrupt: header field numa_node is %d", nm, h->numa_node);
    /* the scalar fields compute_layout checks (table count, dtype, slow kind, slots, rings) */
    if (h->n_tables == 0 || h->n_tables > RECMG_MAX_TABLES)
        return rc_set(p, RECMG_ENOTPOOL, "pool '%s' is corrupt: header field n_tables is %u", nm, h->n_tables);
    recmg_table_spec *spec = calloc(h->n_tables, sizeof *spec);
    shm_table *want = calloc(h->n_tables, sizeof *want);
    int rc = RECMG_OK;
    if (!spec || !want) {
        rc = rc_set(p, RECMG_ENOMEM, "out of memory validating pool '%s'", nm);
        goto out;
    }
    for (uint32_t t = 0; t < h->n_tables && !rc; t++) {
        if (tab[t].d.rows == 0 || tab[t].d.rows > RECMG_ROW_MASK + 1)
            rc = bad_table(p, t, "rows", tab[t].d.rows, "must be 1..2^40");
        else if (tab[t].d.dim == 0 || tab[t].d.dim > 65536)
            rc = bad_table(p, t, "dim", tab[t].d.dim, "must be 1..65536");
        else if (tab[t].d.dtype != h->dtype)
            rc = bad_table(p, t, "dtype", (uint64_t)(int64_t)tab[t].d.dtype, "must equal the pool's dtype");
        spec[t].rows = tab[t].d.rows;
        spec[t].dim = tab[t].d.dim;
    }
    if (rc) goto out;
    if (h->ring_records == 0 || (h->ring_records & (h->ring_records - 1)) != 0) {
        rc = bad_field(p, "ring_records", h->ring_records, 65536);
        goto out;
    }
    recmg_create_opts o = {.n_tables = h->n_tables, .tables = spec, .n_slots = h->n_slots, .dtype = h->dtype,
                           .slow_kind = h->slow_kind, .ring_records = h->ring_records, .n_rings = h->n_rings};
    if (h->n_rings == 0) {
        rc = bad_field(p, "n_rings", 0, 16);
        goto out;
    }
    layout L;
    char why[RECMG_ERRLEN];
    if (compute_layout(&o, &L, want, why, sizeof why) != RECMG_OK) {
        rc = rc_set(p, RECMG_ENOTPOOL, "pool '%s' is corrupt: %s", nm, why);
        goto out;
    }
#define FIELD(f, w)                                                                                           \
    if ((uint64_t)h->f != (uint64_t)(w)) {                                                                    \
        rc = bad_field(p, #f, (uint64_t)h->f, (uint64_t)(w));                                                 \
        goto out;                                                                                             \
    }
    FIELD(total_bytes, L.total)
    FIELD(ring_records, L.ring_records)
    FIELD(ring_stride, L.ring_stride)
    FIELD(slot_stride, L.slot_stride)
    FIELD(vers_off, L.vers_off)
    FIELD(index_off, L.index_off)
    FIELD(rings_off, L.rings_off)
    FIELD(slots_off, L.slots_off)
    FIELD(slow_off, L.slow_off)
    FIELD(slow_bytes, L.slow_bytes)
    FIELD(index_entries, L.index_entries)
    FIELD(meta_bytes, L.meta_bytes)
#undef FIELD
    for (uint32_t t = 0; t < h->n_tables; t++) {
        char need[64];
        if (tab[t].d.row_bytes != want[t].d.row_bytes) {
            snprintf(need, sizeof need, "the layout needs %u", want[t].d.row_bytes);
            rc = bad_table(p, t, "row_bytes", tab[t].d.row_bytes, need);
        } else if (tab[t].d.index_first != want[t].d.index_first) {
            snprintf(need, sizeof need, "the layout needs %llu", (unsigned long long)want[t].d.index_first);
            rc = bad_table(p, t, "index_first", tab[t].d.index_first, need);
        } else if (tab[t].d.slow_off != want[t].d.slow_off) {
            snprintf(need, sizeof need, "the layout needs %llu", (unsigned long long)want[t].d.slow_off);
            rc = bad_table(p, t, "slow_off", tab[t].d.slow_off, need);
        }
        if (rc) goto out;
    }
out:
    free(spec);
    free(want);
    return rc;
}

int recmg_attach(const char *name, int role, uint32_t flags, recmg_pool **out, char *err, size_t errlen)
{
    char nm[256];
    if (!out) return rc_buf(err, errlen, RECMG_EINVAL, "NULL argument to recmg_attach");
    *out = NULL;
    int rc = shm_name(name, nm, sizeof nm, err, errlen);
    if (rc) return rc;
    if (role != RECMG_ROLE_APP && role != RECMG_ROLE_DAEMON)
        return rc_buf(err, errlen, RECMG_EINVAL, "unknown role %d", role);
    int fd = shm_open(nm, O_RDWR, 0);
    if (fd < 0) {
        if (errno == ENOENT) return rc_buf(err, errlen, RECMG_ENOENT, "no pool named '%s' (/dev/shm%s)", nm + 1, nm);
        return rc_buf(err, errlen, RECMG_ESYS, "shm_open(%s): %s", nm, strerror(errno));
    }
    recmg_pool *p = handle_new(nm, role, flags);
    if (!p) {
        close(fd);
        return rc_buf(err, errlen, RECMG_ENOMEM, "out of memory attaching a pool");
    }
    uint8_t *base = MAP_FAILED;
    struct stat st;
    shm_header hdr;
    const int max_tries = (flags & RECMG_F_NO_WAIT) ? 0 : 2000; /* 1 ms apart: a creator's window */
    for (int tries = 0;; tries++) {
        if (fstat(fd, &st) != 0) {
            rc = rc_set(p, RECMG_ESYS, "fstat(%s): %s", nm, strerror(errno));
            goto fail;
        }
        if ((uint64_t)st.st_size < sizeof(shm_header)) {
            rc = rc_set(p, RECMG_ENOTPOOL, "'%s' is not a recmg pool (%lld bytes, too small for a header)", nm + 1,
                        (long long)st.st_size);
            if (st.st_size == 0 && tries < max_tries) { /* a creator between shm_open and ftruncate */
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
                continue;
            }
            goto fail;
        }
        ssize_t got = pread(fd, &hdr, sizeof hdr, 0);
        if (got != (ssize_t)sizeof hdr) {
            rc = rc_set(p, RECMG_ESYS, "reading the header of '%s': %s", nm + 1,
                        got < 0 ? strerror(errno) : "short read");
            goto fail;
        }
        /* a creator between ftruncate and copying its header in (the object all zeros), or after it
         * but before the pool is ready: its window, waited for */
        const int creating = hdr.magic == 0 || (hdr.magic == RECMG_MAGIC && hdr.version == RECMG_LAYOUT_VERSION &&
                                                atomic_load_explicit(&hdr.ready, memory_order_relaxed) == 0);
        if (creating && tries < max_tries) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
            continue;
        }
        break;
    }
    if (hdr.magic == 0) {
        rc = rc_set(p, RECMG_EBUSY, "pool '%s' has no header yet: still being created (or its creator died, or "
                    "it is not a recmg pool)", nm + 1);
        goto fail;
    }
    if (hdr.magic != RECMG_MAGIC) {
        rc = rc_set(p, RECMG_ENOTPOOL, "'%s' is not a recmg pool (bad magic)", nm + 1);
        goto fail;
    }
    if (hdr.version != RECMG_LAYOUT_VERSION) {
        rc = rc_set(p, RECMG_EVERSION, "pool '%s' has layout version %u; this library reads version %u", nm + 1,
                    hdr.version, RECMG_LAYOUT_VERSION);
        goto fail;
    }
    if (atomic_load_explicit(&hdr.ready, memory_order_relaxed) == 0) {
        rc = rc_set(p, RECMG_EBUSY, "pool '%s' is still being created (or its creator died)", nm + 1);
        goto fail;
    }
    p->owner = st.st_uid;
    uint64_t ns_dev, ns_ino;
    pid_ns_self(&ns_dev, &ns_ino);
    if (hdr.pid_ns_ino && ns_ino && (hdr.pid_ns_dev != ns_dev || hdr.pid_ns_ino != ns_ino)) {
        rc = rc_set(p, RECMG_EINVAL,
                    "pool '%s' was made in another PID namespace (pid:[%llu]; this process is in pid:[%llu]): its "
                    "processes name each other by pid (writer lock, rings), so the apps and the daemon of a pool "
                    "must share one PID namespace (docker --pid=host, Kubernetes shareProcessNamespace)",
                    nm + 1, (unsigned long long)hdr.pid_ns_ino, (unsigned long long)ns_ino);
        goto fail;
    }
    if (hdr.total_bytes != (uint64_t)st.st_size) {
        rc = rc_set(p, RECMG_ENOTPOOL, "pool '%s' is truncated or corrupt: header says %llu bytes, object has %lld",
                    nm + 1, (unsigned long long)hdr.total_bytes, (long long)st.st_size);
        goto fail;
    }
    base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = rc_set(p, RECMG_ESYS, "mmap(%s, %lld bytes): %s", nm, (long long)st.st_size, strerror(errno));
        goto fail;
    }
    /* a daemon reads the mapping only once it is guarded: from here on, the object shrinking (or a
     * sparse object meeting a full tmpfs) costs this pool, not the daemon */
    if (role == RECMG_ROLE_DAEMON && (p->busguard = busguard_add(base, (size_t)st.st_size)) < 0) {
        rc = rc_set(p, RECMG_ESYS, "cannot guard the mapping of '%s' against SIGBUS: %s", nm + 1, strerror(errno));
        goto fail;
    }
    if (role == RECMG_ROLE_DAEMON) {
        /* one daemon per pool: the lock lives as long as this handle's descriptor (closed at
         * recmg_close, or by the kernel when the daemon dies) */
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            if (errno == EWOULDBLOCK) {
                int32_t other = atomic_load_explicit(&hdr.daemon_pid, memory_order_relaxed);
                if (other > 0)
                    rc = rc_set(p, RECMG_EBUSY, "pool '%s' already has a daemon (pid %d)", nm + 1, (int)other);
                else
                    rc = rc_set(p, RECMG_EBUSY, "pool '%s' already has a daemon", nm + 1);
            } else {
                rc = rc_set(p, RECMG_ESYS, "flock(%s): %s", nm, strerror(errno));
            }
            goto fail;
        }
        p->lock_fd = fd;
    } else {
        close(fd);
    }
    fd = -1;
    {
        /* private copies first: the object may change under us, what was checked is what is used */
        uint64_t tab_end = RECMG_HDR_BYTES + (uint64_t)hdr.n_tables * sizeof(shm_table);
        if (hdr.n_tables == 0 || hdr.n_tables > RECMG_MAX_TABLES || tab_end > (uint64_t)st.st_size) {
            rc = rc_set(p, RECMG_ENOTPOOL, "pool '%s' is corrupt: header field n_tables is %u", nm + 1, hdr.n_tables);
            goto fail;
        }
        shm_table *tab = malloc((size_t)hdr.n_tables * sizeof *tab);
        if (!tab) {
            rc = rc_set(p, RECMG_ENOMEM, "out of memory validating pool '%s'", nm + 1);
            goto fail;
        }
        memcpy(tab, base + RECMG_HDR_BYTES, (size_t)hdr.n_tables * sizeof *tab);
        rc = validate(p, &hdr, tab, (uint64_t)st.st_size);
        if (!rc) rc = geom_set(p, &hdr, tab);
        free(tab);
        if (rc) goto fail;
    }
    handle_bind(p, base, (size_t)st.st_size, &hdr);
    atomic_thread_fence(memory_order_acquire);
    rc = handle_open(p);
    if (!rc) rc = (int)intact_after(p, RECMG_OK); /* (the attach read zeros after a fault) */
    if (rc) goto fail;
    *out = p;
    return RECMG_OK;
fail:
    if (busguard_lost(p->busguard)) rc = shm_intact(p); /* what validation read was zeros */
    copy_err(err, errlen, p);
    if (fd >= 0) close(fd);
    if (base != MAP_FAILED && !p->base) {
        busguard_remove(p->busguard);
        p->busguard = -1;
        munmap(base, (size_t)st.st_size);
    }
    handle_free(p);
    return rc;
}

int shm_intact(recmg_pool *p)
{
    if (busguard_lost(p->busguard))
        return rc_set(p, RECMG_ENOTPOOL,
                      "pool '%s' faulted under this handle (SIGBUS: the object shrank, or its tmpfs is full); "
                      "its mapping was replaced by zeros; detach it", p->name + 1);
    if (p->lock_fd < 0) return RECMG_OK;
    struct stat st;
    if (fstat(p->lock_fd, &st) != 0) return rc_set(p, RECMG_ESYS, "fstat(%s): %s", p->name, strerror(errno));
    if ((uint64_t)st.st_size < p->map_bytes)
        return rc_set(p, RECMG_ENOTPOOL, "pool '%s' shrank to %lld bytes under this handle (it maps %zu); detach it",
                      p->name + 1, (long long)st.st_size, p->map_bytes);
    return RECMG_OK;
}

void recmg_close(recmg_pool *p)
{
    if (!p) return;
    if (p->role == RECMG_ROLE_DAEMON && p->h && getpid() == p->pid) {
        int32_t me = (int32_t)p->pid;
        atomic_compare_exchange_strong(&p->sh->daemon_pid, &me, 0);
    }
    handle_free(p);
}

int recmg_destroy(const char *name, char *err, size_t errlen)
{
    char nm[256];
    int rc = shm_name(name, nm, sizeof nm, err, errlen);
    if (rc) return rc;
    if (shm_unlink(nm) != 0) {
        if (errno == ENOENT) return rc_buf(err, errlen, RECMG_ENOENT, "no pool named '%s' (/dev/shm%s)", nm + 1, nm);
        return rc_buf(err, errlen, RECMG_ESYS, "shm_unlink(%s): %s", nm, strerror(errno));
    }
    return RECMG_OK;
}

int recmg_info(recmg_pool *p, recmg_pool_info *i)
{
    if (!p) return RECMG_EINVAL;
    if (!i) return null_arg(p, "recmg_info: info is NULL");
    const pool_geom *h = p->h;
    memset(i, 0, sizeof *i);
    i->version = RECMG_LAYOUT_VERSION;
    i->n_tables = h->n_tables;
    i->n_slots = h->n_slots;
    i->dtype = h->dtype;
    i->slow_kind = h->slow_kind;
    i->numa_node = h->numa_node;
    i->role = p->role;
    i->n_rings = h->n_rings;
    i->ring_records = h->ring_records;
    i->ring_index = p->ring_index;
    i->direct_io = p->io.dfd >= 0;
    i->io_align = p->io.dfd >= 0 ? p->io.align : 0;
    i->io_depth = p->io.depth;
    i->total_bytes = h->total_bytes;
    i->meta_bytes = h->meta_bytes;
    uint64_t tb = 0;
    for (uint32_t t = 0; t < h->n_tables; t++) tb += p->tables[t].rows * p->tables[t].row_bytes;
    i->table_bytes = tb;
    i->slot_bytes = h->n_slots * h->slot_stride;
    i->generation = atomic_load_explicit(&p->sh->generation, memory_order_relaxed);
    i->free_slots = p->free_valid ? p->n_free : 0;
    pthread_mutex_lock(&p->lock);
    snprintf(i->io_backend, sizeof i->io_backend, "%s", slowio_backend(p));
    pthread_mutex_unlock(&p->lock);
    snprintf(i->slow_path, sizeof i->slow_path, "%s", h->slow_path);
    return (int)intact_after(p, RECMG_OK); /* (the generation was read from the mapping) */
}

int recmg_get_table_info(recmg_pool *p, uint32_t t, recmg_table_info *i)
{
    if (!p) return RECMG_EINVAL;
    if (!i) return null_arg(p, "recmg_get_table_info: info is NULL");
    if (t >= p->h->n_tables)
        return rc_set(p, RECMG_ERANGE, "table %u out of range (pool has %u tables)", t, p->h->n_tables);
    i->rows = p->tables[t].rows;
    i->dim = p->tables[t].dim;
    i->dtype = p->tables[t].dtype;
    i->row_bytes = p->tables[t].row_bytes;
    return RECMG_OK;
}
