"""Recording a pool's live access stream: what the daemon drains from the apps' rings, as a trace.

The daemon is the only consumer of the rings, so a recording is a *tap* on its drain path: the pool's
ring tracker (:meth:`recmgd.daemon.loop.PoolDriver.add_tap`; in page mode the
:class:`~recmgd.daemon.pages.PagePool`, before rows become pages) hands every drained record array
(with its ring's index) to the pool's :class:`StreamTap`,
which passes it to its sinks, a :class:`Recorder` (``recmgctl record``) and the retrainer's rolling
window (:mod:`recmgd.daemon.retrain`). Records are split per ring at the batch boundaries
(:class:`BatchSplitter`); each complete app batch becomes one *sample* of the trace, in the order the
daemon drained the batches (all the pool's apps interleaved as the daemon saw them), so the trace's
steps of one sample (``recmg train -b 1``, ``recmg sim --batch 1``) are the daemon's policy steps.
Hints are not part of a trace and are left out; a batch an app had not ended when the recording
stopped is left out too, and so is the rest of a batch under way when it started. A batch that
reaches the daemon's batch cap (:data:`recmgd.daemon.tracker.MAX_BATCH_RECORDS`) without a batch
end is cut by the same rule as the ring tracker's, so its trace gets a batch boundary there (in row
mode where the daemon cut) and the recording's memory stays bounded; the recording's status counts
the cuts (``cut_batches``).

The recorder never slows the loop down: the tap only puts the array on a queue; a writer thread of
its own splits and writes (through :class:`recmgd.trace.binary.BinaryWriter`, the one home of the
format) into a file descriptor that ``recmgctl`` opened and passed over the control socket (the
daemon writes no path of its choosing and needs no write access to the user's directories). The file
is a temporary of ``recmgctl``'s (:func:`recmgd.fileout.whole_fd`: beside ``FILE``, a regular file
even when ``FILE`` is a device or FIFO) until the recording is complete: the daemon writes the header
last and fsyncs, then ``recmgctl`` puts it in place. On a write error (ENOSPC, EIO) the daemon
truncates the file to nothing and reports one line; ``recmgctl`` removes it. If the writer falls more
than ``QUEUE_MAX_BYTES`` behind, the recording fails the same way rather than leave a gap in the trace.
A pool detached (removed, or the daemon stopping) completes the file first.

A recording is never left running for nobody: a file passed without a name (its client removed its
temporary before the daemon took the request: it gave up waiting) is refused; one whose name goes
while it is recorded is stopped (:meth:`Recorder.orphaned`); and with a ``lease`` (seconds; recmgctl
asks for :data:`recmgd.daemon.control.RECORD_LEASE_S`) a recording whose client stopped asking for its
status that long (killed, stopped) is stopped and its trace completed in the temporary. The lease
counts the daemon's own time, each tick's gap at most :data:`LEASE_GAP_MAX_S`, so a daemon that was
itself stopped or stalled does not end a recording whose client still follows it.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from recmgd.daemon import tracker
from recmgd.daemon.config import one_line
from recmgd.daemon.control import MAX_REQUEST_SECONDS, CommandError
from recmgd.keys import REC_BATCH_END, REC_KEY_MASK, REC_LOOKUP, REC_TYPE_SHIFT
from recmgd.trace.binary import HEADER, BinaryWriter

log = logging.getLogger(__name__)

#: a sink of the stream: called (uint64 records as drained, ring index); (empty, index) when the ring's
#: app is gone or replaced (its unfinished batch is dropped)
Tap = Callable[[np.ndarray, int], None]

#: drained records a recorder may hold before its writer thread writes them (bytes)
QUEUE_MAX_BYTES = 256 << 20
#: lookups gathered before the writer thread writes them out
WRITE_LOOKUPS = 1 << 19
#: the size cap of a recording when the request names none (bytes)
DEFAULT_MAX_BYTES = 4 << 30
#: the most one tick's gap counts against a recording's lease (seconds; module doc)
LEASE_GAP_MAX_S = 1.0

_END = np.uint64(REC_BATCH_END)
NO_RECORDS = np.zeros(0, dtype=np.uint64)
_LOOKUP = np.uint64(REC_LOOKUP)


def trace_bytes(lookups: int, batches: int) -> int:
    """Size of a binary trace of ``lookups`` keys in ``batches`` samples."""
    return HEADER.size + 8 * lookups + 8 * (batches + 1)


#: the smallest size cap a recording takes (bytes): a trace of one batch of one lookup. A cap below it
#: holds no batch at all; a recording whose cap holds not even its first batch fails (one line)
MIN_MAX_BYTES = trace_bytes(1, 1)


class BatchSplitter:
    """Per ring, the lookups of each batch that ends, in the order the batches end.

    :meth:`feed` takes one ring's drained records and returns the keys (int64) of the batches that
    ended in them and each batch's number of lookups; the records after the last batch end wait for
    the next feed of that ring. A change of owner (RECMG_REC_OWNER) drops the ring's unfinished batch,
    as :meth:`forget` does: the next records are another app's. The ring tracker's caps hold here too,
    by its rules (:mod:`recmgd.daemon.tracker`): an unfinished batch is cut once its records as drained (hints
    included) reach ``max_batch`` (default :data:`recmgd.daemon.tracker.MAX_BATCH_RECORDS`), and once
    the unfinished batches of all rings together (``n_held``) reach ``max_pending`` (default
    :data:`recmgd.daemon.tracker.MAX_POOL_PENDING_RECORDS`) the largest is cut (the lowest ring among
    equals), until they are below it; a batch cut from another ring comes after the feed's own batches.
    ``cut_batches`` counts the cuts.

    ``mid_batch`` maps the rings whose batch was under way when the splitter started (the daemon had
    drained that many of its records, :meth:`recmgd.daemon.tracker.RingTracker.mid_batch`) to those
    counts: the rest of that batch is no whole app batch, so it is left out, up to its end or to where
    the caps cut it (as the daemon cuts it), and the ring starts at its next batch.
    """

    def __init__(self, max_batch: int | None = None, max_pending: int | None = None,
                 mid_batch: dict[int, int] | None = None) -> None:
        self.pending: dict[int, list[np.ndarray]] = {}
        # per ring, the records of its unfinished batch as drained
        self.held: dict[int, int] = dict(mid_batch or {})
        self.n_held = sum(self.held.values())  # their sum
        self.skip = set(self.held)  # the rings whose batch under way is left out
        self.max_batch = max(1, int(tracker.MAX_BATCH_RECORDS if max_batch is None else max_batch))
        self.max_pending = max(1, int(tracker.MAX_POOL_PENDING_RECORDS if max_pending is None
                                      else max_pending))
        self.cut_batches = 0

    def feed(self, ring: int, recs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        recs = np.asarray(recs, dtype=np.uint64)
        changes = tracker.owner_changes(recs)
        if not len(changes):
            body, lengths = self._feed_held(ring, recs)
        else:  # a change of owner ends the unfinished batch before it, unfinished (as the daemon ends it)
            bodies, counts = [], []
            start = 0
            for m in changes.tolist() + [len(recs)]:
                body, lengths = self._feed_held(ring, recs[start:m])
                bodies.append(body)
                counts.append(lengths)
                if m < len(recs):
                    self.forget(ring)
                start = m + 1
            body, lengths = np.concatenate(bodies), np.concatenate(counts)
        # the pool cap once for the array, after its changes of owner (RingTracker.consume's order)
        while self.n_held >= self.max_pending:  # the largest first
            big = max(self.held.items(), key=lambda item: (item[1], -item[0]))[0]
            self.n_held -= self.held[big]
            body, lengths = self._cut(big, self.pending.setdefault(big, []), body, lengths)
        return body, lengths

    def _feed_held(self, ring: int, recs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_feed`, with ``n_held`` kept."""
        before = self.held.get(ring, 0)
        body, lengths = self._feed(ring, recs)
        self.n_held += self.held[ring] - before
        return body, lengths

    def _feed(self, ring: int, recs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One ring's records at its batch boundaries, under the batch cap (``n_held`` not kept)."""
        types = recs >> REC_TYPE_SHIFT
        pend = self.pending.setdefault(ring, [])
        if ring in self.skip:  # the rest of the batch under way at the start: left out
            first = np.flatnonzero(types == _END)[:1]
            if not len(first):
                held = self.held[ring] = self.held.get(ring, 0) + len(recs)
                if held >= self.max_batch:  # cut where the daemon cuts it: the next records start a batch
                    return self._cut(ring, pend, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
            self.skip.discard(ring)
            self.held[ring] = 0
            recs = recs[int(first[0]) + 1:]
            types = types[int(first[0]) + 1:]
        lookup = types == _LOOKUP
        ends = np.flatnonzero(types == _END)
        if not len(ends):
            if lookup.any():
                pend.append((recs[lookup] & REC_KEY_MASK).astype(np.int64))
            held = self.held[ring] = self.held.get(ring, 0) + len(recs)
            if held >= self.max_batch:
                return self._cut(ring, pend, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        last = int(ends[-1])
        counts = np.cumsum(lookup[:last + 1])[ends]  # lookups up to each batch end
        lengths = np.diff(counts, prepend=0).astype(np.int64)
        body = (recs[:last][lookup[:last]] & REC_KEY_MASK).astype(np.int64)
        if pend:
            lengths[0] += sum(len(p) for p in pend)
            body = np.concatenate(pend + [body])
            pend.clear()
        tail = lookup[last + 1:]
        if tail.any():
            pend.append((recs[last + 1:][tail] & REC_KEY_MASK).astype(np.int64))
        self.held[ring] = len(tail)
        if len(tail) >= self.max_batch:
            return self._cut(ring, pend, body, lengths)
        return body, lengths

    def _cut(self, ring: int, pend: list[np.ndarray], body: np.ndarray,
             lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ring's unfinished batch at the cap: one more batch after those that ended (none for the
        rest of a batch left out: it ends there)."""
        self.held[ring] = 0
        if ring in self.skip:
            self.skip.discard(ring)
            return body, lengths
        keys = np.concatenate(pend) if pend else np.zeros(0, dtype=np.int64)
        pend.clear()
        self.cut_batches += 1
        return np.concatenate([body, keys]), np.append(lengths, np.int64(len(keys)))

    def forget(self, ring: int) -> None:
        """A ring whose app went away or was replaced: its unfinished batch is dropped (as the daemon
        drops it); the ring's next records start a batch."""
        self.pending.pop(ring, None)
        self.skip.discard(ring)
        self.n_held -= self.held.pop(ring, 0)


class StreamTap:
    """The tap of one pool's drain path: hands each drained array to every sink (a Tap)."""

    def __init__(self) -> None:
        self.sinks: dict[str, Tap] = {}

    def __call__(self, recs: np.ndarray, ring: int) -> None:
        for sink in list(self.sinks.values()):
            sink(recs, ring)

    def __bool__(self) -> bool:
        return bool(self.sinks)


def check_fd(fd: int) -> str | None:
    """Why ``fd`` cannot take a recording (one line), or None: a regular file open for writing."""
    try:
        st = os.fstat(fd)
        import fcntl

        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        return f"bad file descriptor ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "the file passed is not a regular file"
    if flags & os.O_ACCMODE not in (os.O_WRONLY, os.O_RDWR) or flags & os.O_APPEND:
        return "the file passed is not open for writing (without O_APPEND)"
    if st.st_nlink == 0:
        return "the file passed has no name (removed, or never linked): nobody could read its trace"
    return None


class _FdFile:
    """The little of a binary file that BinaryWriter uses, over a descriptor, without a buffer: every
    write is written whole (os.write may write less) or raises."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while len(view):
            n = os.write(self.fd, view)
            view = view[n:]
        return len(data)

    def seek(self, pos: int) -> int:
        return os.lseek(self.fd, pos, os.SEEK_SET)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class Recorder:
    """One recording of one pool into a file descriptor it owns (see the module doc).

    The recording starts each ring at a batch start: ``mid_batch`` names the rings whose batch was
    under way (see :class:`BatchSplitter`), whose rest is left out.

    Limits: ``lookups`` (stop at the first batch end at or after that many lookups), ``seconds`` (wall
    time from the recording's start, whether or not any app is running yet: an app started after it
    spends part of it starting; ``first_batch_s`` in the status says when the first batch came),
    ``max_bytes`` (the trace's size; the batch that would cross it is not written). ``stop()`` ends it
    early. ``status()`` says where it stands: state "recording", "done" (complete on disk, fsynced) or
    "failed" (file truncated to nothing, ``error`` one line).
    """

    def __init__(self, pool: str, fd: int, *, lookups: int = 0, seconds: float = 0.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, label: str = "",
                 drops: Callable[[], int] | None = None, mid_batch: dict[int, int] | None = None,
                 lease: float = 0.0) -> None:
        self.pool = pool
        self.lease = float(lease)  # seconds without a status request before it stops (0: no lease)
        self._unfollowed = 0.0  # daemon seconds since the client last asked (module doc)
        self._last_check = time.monotonic()
        self.label = label or f"fd {fd}"
        self.max_lookups = int(lookups)
        self.seconds = float(seconds)
        self.max_bytes = int(max_bytes)
        self._drops = drops
        self._drops0 = drops() if drops else 0
        self.ring_drops = 0
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        self._linked = os.fstat(fd).st_nlink > 0  # a named file: its client gave up when no name is left
        self._fh = _FdFile(fd)  # unbuffered: nothing left to flush after a failure
        self._out: list[tuple[np.ndarray, np.ndarray]] = []  # batches not written yet
        self._out_lookups = 0
        self._writer = BinaryWriter(self.label, fileobj=self._fh)  # type: ignore[arg-type]
        self.started = time.time()
        self._t0 = time.monotonic()
        self.finished_at: float | None = None
        self.state = "recording"
        self.reason = ""
        self.error = ""
        self.n_lookups = 0
        self.n_batches = 0
        self.first_batch_s: float | None = None  # when the first batch was taken, from the start (s)
        self._splitter = BatchSplitter(mid_batch=mid_batch)
        self._q: queue.SimpleQueue[tuple[int, np.ndarray] | None] = queue.SimpleQueue()
        self._queued = 0  # bytes on the queue
        self._lock = threading.Lock()
        self._closed = False  # no more records taken (a limit, stop, failure)
        self._overflow = False
        self._thread = threading.Thread(target=self._run, name=f"recmgd-record-{pool}", daemon=True)
        self._thread.start()
        log.info("pool %s: recording to %s (lookups %s, seconds %s, cap %d MiB)", pool, self.label,
                 self.max_lookups or "-", self.seconds or "-", self.max_bytes >> 20)

    # -- the loop's side -----------------------------------------------------------------------------

    def __call__(self, recs: np.ndarray, ring: int) -> None:
        """The tap: queue one drained array (never blocks; never copies)."""
        if self._closed:
            return
        with self._lock:
            self._queued += recs.nbytes
            over = self._queued > QUEUE_MAX_BYTES
        if over:  # the writer thread fails the recording when it gets here
            self._overflow = True
            self._closed = True
            self._q.put(None)
            return
        self._q.put((ring, recs))

    def stop(self, reason: str = "stopped") -> None:
        """End the recording after what was queued so far (the writer completes the file)."""
        if not self._closed:
            self.reason = self.reason or reason
            self._closed = True
            self._q.put(None)

    @property
    def active(self) -> bool:
        return self.state == "recording"

    def orphaned(self) -> bool:
        """Whether the file had a name and has none left: the client that passed it removed it (it gave
        up, as recmgctl does when the daemon stops answering), so nobody can read the trace."""
        fd = self._fh.fd
        if not self._linked or fd < 0 or self._closed:
            return False
        try:
            return os.fstat(fd).st_nlink == 0
        except OSError:
            return False

    def followed(self) -> None:
        """Its client asked for its status (or stopped it): the lease starts again."""
        self._unfollowed = 0.0

    def lease_lapsed(self) -> bool:
        """(Each tick.) Whether the recording has a lease and its client has not asked for it that long
        (the module doc: each tick's gap counts at most LEASE_GAP_MAX_S)."""
        now = time.monotonic()
        gap, self._last_check = min(now - self._last_check, LEASE_GAP_MAX_S), now
        if not self.lease or self._closed:
            return False
        self._unfollowed += gap
        return self._unfollowed > self.lease

    def wait(self, timeout: float = 30.0) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        if self._drops is not None and self.state == "recording":
            self.ring_drops = max(0, self._drops() - self._drops0)
        end = self.finished_at or time.monotonic()
        return {"pool": self.pool, "state": self.state, "reason": self.reason, "error": self.error,
                "lookups": self.n_lookups, "batches": self.n_batches,
                "bytes": trace_bytes(self.n_lookups, self.n_batches),
                "seconds": round(end - self._t0, 3), "ring_drops": self.ring_drops,
                "first_batch_s": None if self.first_batch_s is None else round(self.first_batch_s, 3),
                "cut_batches": self._splitter.cut_batches,
                "max_lookups": self.max_lookups, "max_seconds": self.seconds, "max_bytes": self.max_bytes}

    # -- the writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                timeout = None
                if self.seconds > 0:
                    timeout = max(0.0, self._t0 + self.seconds - time.monotonic())
                    if timeout == 0.0:
                        self.stop("seconds")
                        timeout = None
                try:
                    item = self._q.get(timeout=timeout)
                except queue.Empty:
                    continue
                if item is None:
                    break
                ring, recs = item
                with self._lock:
                    self._queued -= recs.nbytes
                if self.state != "recording":
                    continue
                if len(recs) == 0:
                    self._splitter.forget(ring)
                    continue
                keys, lengths = self._splitter.feed(ring, recs)
                if len(lengths):
                    self._take(keys, lengths)
                if self._out_lookups >= WRITE_LOOKUPS or (self._q.empty() and self._out):
                    self._flush()
            if self._overflow:
                self._fail(f"the disk did not keep up (more than {QUEUE_MAX_BYTES >> 20} MiB of records "
                           "waiting to be written)")
            elif self.state == "recording":
                self._flush()
                self._finish()
        except OSError as exc:
            self._fail(f"{self.label}: {exc.strerror or exc}")
        except Exception as exc:  # noqa: BLE001 - a recorder bug must not reach the loop
            log.exception("pool %s: the recorder failed", self.pool)
            self._fail(f"internal error: {type(exc).__name__}: {exc}")

    def _flush(self) -> None:
        """Write the batches taken so far (one write for many drained arrays)."""
        if not self._out:
            return
        keys = np.concatenate([k for k, _ in self._out])
        lengths = np.concatenate([n for _, n in self._out])
        self._out.clear()
        self._out_lookups = 0
        self._writer.add(keys, lengths)

    def _take(self, keys: np.ndarray, lengths: np.ndarray) -> None:
        n = len(lengths)
        if self.max_lookups:  # up to the first batch end at or after the limit
            csum = np.cumsum(lengths)
            n = min(n, int(np.searchsorted(csum, self.max_lookups - self.n_lookups, side="left")) + 1)
        # the cap: the batches that fit (their end offsets too)
        room = (self.max_bytes - trace_bytes(self.n_lookups, self.n_batches)) // 8
        fits = np.cumsum(lengths[:n]) + np.arange(1, n + 1)
        m = int(np.searchsorted(fits, room, side="right"))
        if m == 0 and n and not self.n_batches:  # not even the first batch: an empty trace is no recording
            self._fail(f"the size cap of {self.max_bytes} bytes holds no batch: the first has "
                       f"{int(lengths[0])} lookups, a trace of {trace_bytes(int(lengths[0]), 1)} bytes")
            return
        if m < n:
            n = m
            self.stop("size cap")
        elif self.max_lookups and self.n_lookups + int(lengths[:n].sum()) >= self.max_lookups:
            self.stop("lookups")
        if n:
            if not self.n_batches:
                self.first_batch_s = time.monotonic() - self._t0
            k = int(lengths[:n].sum())
            self._out.append((keys[:k], lengths[:n]))
            self._out_lookups += k
            self.n_lookups += k
            self.n_batches += n

    def _finish(self) -> None:
        if self._drops is not None:
            self.ring_drops = max(0, self._drops() - self._drops0)
        self._writer.close(sync=True)
        self.finished_at = time.monotonic()
        self.state = "done"
        self.reason = self.reason or "stopped"
        log.info("pool %s: recording to %s done (%s): %d lookups in %d batches, %d ring records "
                 "dropped by the apps meanwhile", self.pool, self.label, self.reason, self.n_lookups,
                 self.n_batches, self.ring_drops)

    def _fail(self, message: str) -> None:
        """(The writer thread only.) Truncate the file to nothing and close it; state failed."""
        with self._lock:
            if self.state != "recording":
                return
            self.state = "failed"
            self.error = message
            self._closed = True
        self.finished_at = time.monotonic()
        self._q.put(None)
        self._out.clear()
        if self._fh.fd >= 0:
            try:
                os.ftruncate(self._fh.fd, 0)  # nothing half-written stays on the disk
            except OSError:
                pass
            try:
                self._fh.close()
            except OSError:
                pass
        log.error("pool %s: recording failed: %s", self.pool, message)

    def abandon(self, reason: str) -> None:
        """The pool goes away (detach, daemon stopping): complete what was recorded."""
        self.stop(reason)
        if not self.wait(30.0):
            log.error("pool %s: the recorder's writer did not finish in 30 s", self.pool)


def _count_arg(args: dict[str, Any], key: str, default: int) -> int:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CommandError(f"argument {key!r}: expected a count (an integer >= 0), got {value!r}")
    return value


def _seconds_arg(args: dict[str, Any], key: str) -> float:
    value = args.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < MAX_REQUEST_SECONDS:
        raise CommandError(f"argument {key!r}: expected seconds (a number >= 0), got {value!r}")
    return float(value)


class PoolStream:
    """One pool's tap (installed on its driver only while a sink wants the stream) and its recording.

    In page mode the tap sits on the :class:`~recmgd.daemon.pages.PagePool` (``driver.pages``), before
    the rows become pages, so recordings hold rows in every mode. A ring whose app is gone or replaced
    (the driver's tracker resets it) is told to the sinks at once, before the next app's records
    (``tap(NO_RECORDS, ring)``), so they drop its unfinished batch as the daemon does.
    """

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.tap = StreamTap()
        self.recorder: Recorder | None = None
        self._installed = False
        self._feed_fn = self.tap  # one object: the tracker removes a tap by identity
        self._reset_fn = self._reset

    def _reset(self, ring: int) -> None:
        self.tap(NO_RECORDS, ring)

    def _install(self, on: bool) -> None:
        if on == self._installed:
            return
        pages = getattr(self.driver, "pages", None)
        if pages is not None:
            pages.tap = self._feed_fn if on else None
        elif on:
            self.driver.add_tap(self._feed_fn, with_ring=True)
        else:
            self.driver.remove_tap(self._feed_fn)
        if on:
            self.driver.add_ring_reset(self._reset_fn)
        else:
            self.driver.remove_ring_reset(self._reset_fn)
        self._installed = on

    def add_sink(self, name: str, sink: Tap) -> None:
        self.tap.sinks[name] = sink
        self._install(True)

    def remove_sink(self, name: str) -> None:
        self.tap.sinks.pop(name, None)
        if not self.tap:
            self._install(False)

    def _mid_batch(self) -> dict[int, int]:
        """The rings whose batch is under way, with the records of it drained; in page mode the tracker
        counts page records and the splitter rows, so those rings start at 0 (their caps count from the
        recording's start)."""
        mid = self.driver.mid_batch_rings()
        return dict.fromkeys(mid, 0) if getattr(self.driver, "pages", None) is not None else mid

    def _drops(self) -> int:
        return int(self.driver.dropped_total)

    def command(self, args: dict[str, Any], take_fd: Callable[[], int | None]) -> dict[str, Any]:
        """The control command ``record``: action "start" (with the file's descriptor passed),
        "status" or "stop"."""
        action = args.get("action", "start")
        rec = self.recorder
        if action == "status":
            if rec is None:
                raise CommandError(f"pool {self.driver.name}: no recording")
            rec.followed()
            return rec.status()
        if action == "stop":
            if rec is None:
                raise CommandError(f"pool {self.driver.name}: no recording")
            rec.followed()
            was = rec.active
            rec.stop()
            return {**rec.status(), "was_recording": was}
        if action != "start":
            raise CommandError(f"argument 'action': {action!r} is not start, status or stop")
        if rec is not None and rec.active:
            raise CommandError(f"pool {self.driver.name} is already being recorded "
                               f"({rec.label}, {rec.n_lookups} lookups so far)")
        lookups = _count_arg(args, "lookups", 0)
        seconds = _seconds_arg(args, "seconds")
        max_bytes = _count_arg(args, "max_bytes", DEFAULT_MAX_BYTES)
        lease = _seconds_arg(args, "lease")
        if max_bytes < MIN_MAX_BYTES:
            raise CommandError(f"argument 'max_bytes': {max_bytes} bytes holds no batch (the smallest cap is "
                               f"{MIN_MAX_BYTES} bytes, a trace of one lookup)")
        label = args.get("path", "")
        if not isinstance(label, str) or len(label) > 4096:
            raise CommandError("argument 'path': expected the file's name (a string)")
        label = one_line(label)  # (logged and shown: a newline in it would forge a log line)
        fd = take_fd()
        if fd is None:
            raise CommandError("record: no file passed with the request (recmgctl record passes the "
                               "file it opened)")
        problem = check_fd(fd)
        if problem:
            os.close(fd)
            raise CommandError(f"record: {problem}")
        try:
            rec = Recorder(self.driver.name, fd, lookups=lookups, seconds=seconds, max_bytes=max_bytes,
                           label=label, drops=self._drops, mid_batch=self._mid_batch(), lease=lease)
        except OSError as exc:
            os.close(fd)
            raise CommandError(f"record: {label or 'the file'}: {exc.strerror or exc}") from None
        if self.recorder is not None:
            self.remove_sink("record")
        self.recorder = rec
        self.add_sink("record", rec)
        return rec.status()

    def poll(self) -> None:
        """(Each tick.) Stop a recording whose file was removed; unhook a recording that has ended."""
        if self.recorder is not None and self.recorder.orphaned():
            log.info("pool %s: the recording's file %s was removed; recording stopped", self.driver.name,
                     self.recorder.label)
            self.recorder.stop("file removed")
        if self.recorder is not None and self.recorder.lease_lapsed():
            log.warning("pool %s: nobody asked about the recording to %s for %.0f s (its client is gone or "
                        "stopped); recording stopped, its trace left complete in the client's temporary "
                        "file beside it", self.driver.name, self.recorder.label, self.recorder.lease)
            self.recorder.stop("its client stopped following it")
        if self.recorder is not None and not self.recorder.active and "record" in self.tap.sinks:
            self.remove_sink("record")

    def stats(self) -> dict[str, Any] | None:
        return self.recorder.status() if self.recorder is not None else None

    def close(self, reason: str) -> None:
        """The pool is detached: a recording in progress is completed with what it has."""
        if self.recorder is not None and self.recorder.active:
            self.recorder.abandon(reason)
        self.tap.sinks.clear()
        self._install(False)
