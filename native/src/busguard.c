/* The daemon's guard against a pool object that stops backing its mapping.
 *
 * A daemon maps objects that apps own. Their owner can shrink one (ftruncate) at any moment, and a
 * sparse object can meet a full tmpfs when the daemon first touches a page: either way the next load or
 * store in the lost range raises SIGBUS, whose default action kills the daemon and with it every
 * pool it serves. shm_intact() finds a shrink before a call starts, but not one made during the call.
 *
 * So each daemon-role handle registers its mapping here, and a SIGBUS handler, installed by a
 * registration that does not find it in place, looks the faulting address up: inside a registered
 * mapping, it maps anonymous zero pages over the whole mapping (MAP_FIXED | MAP_NORESERVE: the
 * instruction that faulted then runs on them) and marks the registration lost; the call finishes on
 * zeros, and busguard_lost() makes the handle's calls from then on fail with one line (shm_intact),
 * so the daemon detaches the pool; a writer lock the call held is handed on through the object's
 * descriptor (writer.c, release_lost_lock). A fault anywhere else goes to the handler that was there
 * before, or gets the default action (the process dies of SIGBUS as it would have; as the kernel
 * does for a fault, also when SIGBUS was ignored).
 *
 * This is the library's only process-wide mutable state beyond the layout: a signal handler can find
 * the mappings no other way. Registrations are a fixed table of atomics, written under a mutex,
 * read by the handler without a lock (a registration is set length first, base last, and cleared base
 * first: a handler that reads a base reads its length; a mapping is only unregistered when its handle
 * closes, when no call on it can fault). mmap is not on POSIX's async-signal-safe list, but on Linux
 * it is the bare system call; wl_shm servers do the same. */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>

#define BUSGUARD_MAX 4096 /* mappings guarded at once (daemon handles: one a pool) */

typedef struct {
    _Atomic uintptr_t base;
    _Atomic size_t len;
    _Atomic int lost;
} busguard_slot;

static busguard_slot slots[BUSGUARD_MAX];
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
/* The SIGBUS action before ours: two copies, the one in use named by an atomic index, so that a
 * registration installing the handler again writes the other and then switches (under slots_lock):
 * a handler running meanwhile on another thread reads a whole copy. */
static struct sigaction previous_copies[2];
static _Atomic int previous_in_use;

static void pass_on(int sig, siginfo_t *si, void *uc)
{
    const struct sigaction previous = previous_copies[atomic_load_explicit(&previous_in_use, memory_order_acquire)];
    if (previous.sa_flags & SA_SIGINFO) {
        if (previous.sa_sigaction) {
            previous.sa_sigaction(sig, si, uc);
            return;
        }
    } else if (previous.sa_handler == SIG_IGN && si->si_code <= 0) {
        return; /* a sent SIGBUS, ignored as before */
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    { /* the default action (the kernel applies it to a fault even when SIGBUS is ignored): die of it, as
       * without us: the fault repeats, or the raise lands */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(sig, &dfl, NULL);
        if (si->si_code <= 0) raise(sig);
    }
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    if (si->si_code > 0) { /* sent by the kernel for a fault (not kill or raise): si_addr is the address */
        const uintptr_t a = (uintptr_t)si->si_addr;
        for (int i = 0; i < BUSGUARD_MAX; i++) {
            uintptr_t b = atomic_load_explicit(&slots[i].base, memory_order_acquire);
            if (!b || a < b) continue;
            size_t n = atomic_load_explicit(&slots[i].len, memory_order_relaxed);
            if (a - b >= n) continue;
            int saved = errno;
            void *m = mmap((void *)b, n, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
            errno = saved;
            if (m == MAP_FAILED) break; /* cannot repair it: as if we were not here */
            atomic_store_explicit(&slots[i].lost, 1, memory_order_release);
            return;
        }
    }
    pass_on(sig, si, uc);
}

int busguard_add(void *base, size_t len)
{
    pthread_mutex_lock(&slots_lock);
    int rc = -1;
    /* installed at each registration unless it is ours already: a handler set after ours (Python's
     * faulthandler enabled later, say) becomes the one passed on to, and the guard is back */
    struct sigaction cur;
    if (sigaction(SIGBUS, NULL, &cur) != 0) goto out;
    if (!(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != on_sigbus) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        /* the action to pass on is in place before ours can run */
        const int next = 1 - atomic_load_explicit(&previous_in_use, memory_order_relaxed);
        previous_copies[next] = cur;
        atomic_store_explicit(&previous_in_use, next, memory_order_release);
        if (sigaction(SIGBUS, &sa, NULL) != 0) goto out;
    }
    for (int i = 0; i < BUSGUARD_MAX; i++) {
        if (atomic_load_explicit(&slots[i].base, memory_order_relaxed)) continue;
        atomic_store_explicit(&slots[i].lost, 0, memory_order_relaxed);
        atomic_store_explicit(&slots[i].len, len, memory_order_relaxed);
        atomic_store_explicit(&slots[i].base, (uintptr_t)base, memory_order_release);
        rc = i;
        break;
    }
    if (rc < 0) errno = ENOSPC;
out:
    pthread_mutex_unlock(&slots_lock);
    return rc;
}

void busguard_remove(int slot)
{
    if (slot < 0 || slot >= BUSGUARD_MAX) return;
    pthread_mutex_lock(&slots_lock);
    atomic_store_explicit(&slots[slot].base, 0, memory_order_release);
    atomic_store_explicit(&slots[slot].len, 0, memory_order_relaxed);
    pthread_mutex_unlock(&slots_lock);
}

int busguard_lost(int slot)
{
    return slot >= 0 && slot < BUSGUARD_MAX && atomic_load_explicit(&slots[slot].lost, memory_order_acquire);
}
