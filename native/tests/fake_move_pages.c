/* fake_move_pages.c - an LD_PRELOAD shim for the page-mode tests (tests/test_daemon_pages.py): the
 * status handling of recmg_move_slow_pages (native/tests/page_moves.c) and recmg_move_slow_rows.
 *
 * syscall(SYS_move_pages, ...) calls that move pages (nodes != NULL) go to the kernel, then their
 * per-page statuses are overridden as the environment says, so that the status handling of librecmg
 * and the daemon's errno accounting can be tested on a machine with one NUMA node (where every move
 * to node 0 succeeds):
 *   RECMG_FAKE_BUSY_ABOVE=M  in a call of more than M pages, the pages at odd positions of the call
 *                            report -EBUSY and the call returns 0 (as the kernel may); M=0: every call
 *   RECMG_FAKE_ERRNO=E:S     the pages at positions p with p % S == S - 1 report -E; the call returns
 *                            how many pages it reports not moved
 *   RECMG_FAKE_CALLS=PATH    each such call appends "PAGES RETURNED" (a line) to PATH, so that a test
 *                            sees every retry and what each call returned
 * Queries (nodes == NULL) and every other system call pass through. No state is kept between calls
 * (but the lines appended to RECMG_FAKE_CALLS). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef long (*syscall_fn)(long, ...);

long syscall(long number, ...)
{
    va_list ap;
    va_start(ap, number);
    long a[6];
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    syscall_fn real = (syscall_fn)dlsym(RTLD_NEXT, "syscall");
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    long r = real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (number != SYS_move_pages || r < 0 || a[3] == 0) return r;
    unsigned long n = (unsigned long)a[1];
    int *status = (int *)a[4];
    long not_moved = 0;
    const char *busy = getenv("RECMG_FAKE_BUSY_ABOVE");
    const char *err = getenv("RECMG_FAKE_ERRNO");
    int e = 0, every = 0;
    if (err && sscanf(err, "%d:%d", &e, &every) != 2) every = 0;
    for (unsigned long i = 0; i < n; i++) {
        if (busy && n > strtoul(busy, NULL, 10) && i % 2 == 1) {
            status[i] = -EBUSY;
        } else if (every > 0 && e > 0 && i % (unsigned long)every == (unsigned long)every - 1) {
            status[i] = -e;
            not_moved++;
        }
    }
    const char *calls_path = getenv("RECMG_FAKE_CALLS");
    if (calls_path && *calls_path) {
        FILE *f = fopen(calls_path, "a");
        if (f) {
            fprintf(f, "%lu %ld\n", n, not_moved);
            fclose(f);
        }
    }
    return not_moved;
}
