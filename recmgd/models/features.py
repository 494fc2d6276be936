"""Per-row history features that generalise to rows never seen in training.

A row is described by what happened to it, never by its id: gaps since its last uses, how often it was
used, exponentially decayed use counters at three half-lives, its age, and its table. All state lives in
dense numpy arrays indexed by a dense id that :class:`KeyIndex` assigns to each key on first sight, so a
batch of keys is featurised with a handful of vectorised numpy operations.

The same :class:`RowHistory` is run step by step in training and in the live policy, so the features
the models see at inference are exactly the ones they were trained on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from recmgd.keys import ROW_BITS

if TYPE_CHECKING:
    from recmgd.models.fastinfer import NativeRows

#: bump whenever the meaning or order of the feature columns changes (checked on checkpoint load)
FEATURE_VERSION = 1
#: previous gaps kept per row
N_GAPS = 4
#: half-lives (in steps) of the decayed use counters
HALF_LIVES = (4.0, 64.0, 1024.0)
#: tables get one embedding each, ids folded modulo this
N_TABLE_SLOTS = 32

FEATURE_NAMES: tuple[str, ...] = (
    ("is_new", "log_gap", "log_count", "log_age")
    + tuple(f"log_prev_gap{i}" for i in range(N_GAPS))
    + tuple(f"log_decay_{int(h)}" for h in HALF_LIVES)
    + ("log_mean_gap", "gap_over_mean")
)
N_FEATURES = len(FEATURE_NAMES)


class KeyIndex:
    """Maps int64 keys to dense ids 0, 1, 2, ... in order of first sight (the simulator core's C hash
    map, ``sc_idmap``: a step's keys are mapped in one call, not one dict lookup each)."""

    def __init__(self) -> None:
        from recmgd.simcore import ffi, lib

        self._ffi, self._lib = ffi, lib
        m = lib.sc_idmap_new()
        if m == ffi.NULL:
            raise MemoryError("out of memory for a key index")
        self._map = ffi.gc(m, lib.sc_idmap_free)
        self._keys = np.zeros(1024, np.int64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def _buf(self, keys: np.ndarray) -> tuple[np.ndarray, object]:
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        return keys, self._ffi.from_buffer("int64_t[]", keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Ids of known keys, -1 for unknown ones."""
        keys, kb = self._buf(keys)
        out = np.empty(len(keys), np.int32)
        self._lib.sc_idmap_find(self._map, kb, len(keys), self._ffi.from_buffer("int32_t[]", out))
        return out.astype(np.int64)

    def get_or_add(self, keys: np.ndarray) -> np.ndarray:
        """Ids of keys, assigning new ids to keys never seen (keys must be distinct)."""
        keys, kb = self._buf(keys)
        out = np.empty(len(keys), np.int32)
        n0 = self._n
        if self._lib.sc_idmap_map(self._map, kb, len(keys), self._ffi.from_buffer("int32_t[]", out)) != 0:
            raise MemoryError("out of memory growing the key index")
        n1 = int(self._lib.sc_idmap_size(self._map))
        if n1 > n0:
            if n1 > len(self._keys):
                k = np.zeros(max(n1, 2 * len(self._keys)), np.int64)
                k[:n0] = self._keys[:n0]
                self._keys = k
            # distinct keys: the new ids are n0 .. n1-1, in the order their keys appear
            self._keys[n0:n1] = keys[out >= n0]
            self._n = n1
        return out.astype(np.int64)

    def keys_of(self, ids: np.ndarray) -> np.ndarray:
        """The keys of dense ids."""
        return self._keys[ids]

    def all_keys(self) -> np.ndarray:
        return self._keys[: self._n].copy()


#: a record's step of last use before the row's first use (cachemodel.h's CM_NEVER)
NEVER = int(np.iinfo(np.int32).min)
#: the longest previous gap a record keeps, in steps (cachemodel.h's CM_GAP_MAX): a longer one reads as this
GAP_MAX = 65535
#: the most uses a record counts (cachemodel.h's CM_COUNT_MAX): the use past it halves the count and the
#: age (the first use brought forward), so the mean gap stays about what it was
COUNT_MAX = 65535
#: one row's history, one 24-byte record (the C inference's cm_row): step of last use (NEVER: none yet),
#: step of first use, use count, decayed use counters (float16: an update computes in float64 and rounds
#: to float32, then to float16), the previous gaps in steps (most recent first, at most GAP_MAX; their
#: log1p is the feature). The sum of the gaps is last - first. Steps are int32: the C step keeps them as
#: offsets from a moving base; here the base is 0.
ROW_DTYPE = np.dtype([("last", "<i4"), ("first", "<i4"), ("count", "<u2"), ("dec", "<f2", (len(HALF_LIVES),)),
                      ("gaps", "<u2", (N_GAPS,))])
assert ROW_DTYPE.itemsize == 24
#: the steps a RowHistory can record (int32 records, base 0)
MAX_STEP = int(np.iinfo(np.int32).max)


def check_step(now: int) -> None:
    """A ValueError naming the step when a RowHistory cannot record a use at ``now``."""
    if not 0 <= now <= MAX_STEP:
        raise ValueError(f"step {now} is outside the records' steps 0 .. {MAX_STEP}")


class RowHistory:
    """Dense per-row history: last use, first use, count, previous gaps, decayed counters, and the table.

    One record a row (``rows``, ROW_DTYPE, from a cache line's start: eight in three lines), with a view
    per field (``last``, ``count``, ``gaps``, ...) that the numpy methods index; each row's table id
    beside them in ``table``.

    With ``native=True``, :meth:`features` and :meth:`update` run in C (recmgd.models.fastinfer) on these
    same arrays, and ``native_rows`` is the C view of them; the numpy methods (``features_numpy``,
    ``update_numpy``) are the reference and the training path.
    """

    def __init__(self, initial: int = 1024, native: bool = False) -> None:
        self.native_rows: NativeRows | None = None
        self.index = KeyIndex()
        self._cap = 0
        self._buf = np.zeros(0, np.uint8)
        self.rows = np.zeros(0, ROW_DTYPE)
        self.table = np.zeros(0, np.int64)
        self._views()
        self._decay_rate = np.log(2.0) / np.asarray(HALF_LIVES, np.float32)
        self._grow(initial)
        if native:
            from recmgd.models.fastinfer import NativeRows

            self.native_rows = NativeRows(self)

    def __len__(self) -> int:
        return len(self.index)

    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, 2 * self._cap, 1024)
        size = ROW_DTYPE.itemsize
        buf = np.zeros(cap * size + 64, np.uint8)
        off = -buf.ctypes.data % 64  # from a cache line's start, as the C step's records
        rows = buf[off : off + cap * size].view(ROW_DTYPE)
        rows["last"] = NEVER
        rows["first"] = NEVER
        rows[: self._cap] = self.rows[: self._cap]
        table = np.zeros(cap, np.int64)
        table[: self._cap] = self.table[: self._cap]
        self._buf, self.rows, self.table = buf, rows, table
        self._views()
        self._cap = cap
        if self.native_rows is not None:
            self.native_rows.bind()

    def _views(self) -> None:
        """The per-field views of the records (what the numpy path indexes)."""
        r = self.rows
        self.last, self.first = r["last"], r["first"]
        self.count, self.gaps, self.dec = r["count"], r["gaps"], r["dec"]

    def ids(self, keys: np.ndarray) -> np.ndarray:
        """Dense ids of keys (new keys get new, empty rows)."""
        n0 = len(self.index)
        ids = self.index.get_or_add(keys)
        n1 = len(self.index)
        if n1 > n0:
            self._grow(n1)
            self.table[n0:n1] = self.index.keys_of(np.arange(n0, n1)) >> ROW_BITS
        return ids

    def features(self, ids: np.ndarray, now: int) -> np.ndarray:
        """Feature matrix (len(ids) x N_FEATURES, float32) of rows as of step ``now`` (before its use)."""
        if self.native_rows is not None:
            return self.native_rows.features(ids, now)
        return self.features_numpy(ids, now)

    def features_numpy(self, ids: np.ndarray, now: int) -> np.ndarray:
        """:meth:`features` in numpy (the reference)."""
        last = self.last[ids].astype(np.int64)
        seen = last >= 0
        gap = np.where(seen, now - last, 0).astype(np.float32)
        count = self.count[ids].astype(np.float32)
        f = np.empty((len(ids), N_FEATURES), np.float32)
        f[:, 0] = ~seen
        f[:, 1] = np.log1p(gap)
        f[:, 2] = np.log1p(count)
        first = self.first[ids].astype(np.int64)
        f[:, 3] = np.log1p(np.where(seen, now - first, 0))
        f[:, 4 : 4 + N_GAPS] = np.log1p(self.gaps[ids].astype(np.float32))
        decay = np.exp(-gap[:, None] * self._decay_rate[None, :])
        o = 4 + N_GAPS
        f[:, o : o + len(HALF_LIVES)] = np.log1p(self.dec[ids] * decay)
        o += len(HALF_LIVES)
        ngaps = np.maximum(count - 1, 1)
        mean_gap = np.where(count > 1, self.gap_sum(ids) / ngaps, 0)
        f[:, o] = np.log1p(mean_gap)
        f[:, o + 1] = np.where(count > 1, np.log1p(gap) - np.log1p(mean_gap), 0)
        return f

    def gap_sum(self, ids: np.ndarray) -> np.ndarray:
        """The sum of the gaps between the uses of rows ``ids`` (float32; 0 for rows used at most once)."""
        last = self.last[ids].astype(np.int64)
        return np.where(last >= 0, last - self.first[ids], 0).astype(np.float32)

    def tables(self, ids: np.ndarray) -> np.ndarray:
        """Table slot (table id modulo N_TABLE_SLOTS) of each row."""
        return self.table[ids] % N_TABLE_SLOTS

    def update(self, ids: np.ndarray, now: int) -> None:
        """Record one use at step ``now`` (0 .. MAX_STEP) of each (distinct) row."""
        check_step(now)
        if self.native_rows is not None:
            self.native_rows.update(ids, now)
        else:
            self.update_numpy(ids, now)

    def update_numpy(self, ids: np.ndarray, now: int) -> None:
        """:meth:`update` in numpy (the reference)."""
        last = self.last[ids].astype(np.int64)
        seen = last >= 0
        igap = np.where(seen, now - last, 0)
        gap = igap.astype(np.float32)
        g = self.gaps[ids]
        g[seen, 1:] = g[seen, :-1]
        g[seen, 0] = np.minimum(igap[seen], GAP_MAX)
        self.gaps[ids] = g
        dec = self.dec[ids] * np.exp(-gap[:, None] * self._decay_rate[None, :]) + 1.0  # float64
        self.dec[ids] = dec.astype(np.float32)  # then float16 (as the C update rounds it)
        count = self.count[ids].astype(np.int64) + 1
        first = np.where(seen, self.first[ids], now).astype(np.int64)
        full = count > COUNT_MAX
        count[full] = (COUNT_MAX + 1) // 2
        first[full] = now - (now - first[full]) // 2
        self.count[ids] = count
        self.first[ids] = first
        self.last[ids] = now


#: candidate features of a prefetch candidate (how the temporal history proposes it)
CAND_FEATURE_NAMES: tuple[str, ...] = ("log_votes", "min_offset", "log_trigger_age")
N_CAND_FEATURES = len(CAND_FEATURE_NAMES)


class Stream:
    """The lookup stream as dense ids, with each row's latest position: the source of prefetch candidates.

    Candidates for a step are the rows that followed, in the stream, the previous occurrence of each row
    the step read (the temporal-streaming idea of STMS/Domino, at row granularity); the model then decides
    which of them, if any, to fetch.
    """

    def __init__(self, depth: int = 8) -> None:
        self.depth = depth
        self.ids = np.zeros(4096, np.int64)
        self.step = np.zeros(4096, np.int64)
        self.n = 0
        self.lastpos = np.full(1024, -1, np.int64)

    def candidates(self, ids: np.ndarray, now: int) -> tuple[np.ndarray, np.ndarray]:
        """(distinct candidate ids, their N_CAND_FEATURES features) proposed by ``ids``'s histories."""
        if len(self.lastpos) < (int(ids.max()) + 1 if len(ids) else 0):
            self._grow_ids(int(ids.max()) + 1)
        pos = self.lastpos[ids]
        pos = pos[pos >= 0]
        if not len(pos):
            return np.zeros(0, np.int64), np.zeros((0, N_CAND_FEATURES), np.float32)
        off = np.arange(1, self.depth + 1)
        p = pos[:, None] + off[None, :]
        ok = p < self.n
        p = np.where(ok, p, 0)
        cand = self.ids[p][ok]
        offs = np.broadcast_to(off[None, :], p.shape)[ok]
        age = (now - self.step[pos])[:, None].repeat(self.depth, 1)[ok]
        if not len(cand):
            return np.zeros(0, np.int64), np.zeros((0, N_CAND_FEATURES), np.float32)
        u, inv, votes = np.unique(cand, return_inverse=True, return_counts=True)
        minoff = np.full(len(u), self.depth + 1, np.int64)
        np.minimum.at(minoff, inv, offs)
        minage = np.full(len(u), np.iinfo(np.int64).max, np.int64)
        np.minimum.at(minage, inv, age)
        f = np.empty((len(u), N_CAND_FEATURES), np.float32)
        f[:, 0] = np.log1p(votes)
        f[:, 1] = minoff / self.depth
        f[:, 2] = np.log1p(minage)
        return u, f

    def _grow_ids(self, n: int) -> None:
        a = np.full(max(n, 2 * len(self.lastpos)), -1, np.int64)
        a[: len(self.lastpos)] = self.lastpos
        self.lastpos = a

    def append(self, ids: np.ndarray, step: int) -> None:
        m = len(ids)
        if self.n + m > len(self.ids):
            cap = max(self.n + m, 2 * len(self.ids))
            for name in ("ids", "step"):
                a = np.zeros(cap, np.int64)
                a[: self.n] = getattr(self, name)[: self.n]
                setattr(self, name, a)
        if m and len(self.lastpos) <= int(ids.max()):
            self._grow_ids(int(ids.max()) + 1)
        self.ids[self.n : self.n + m] = ids
        self.step[self.n : self.n + m] = step
        self.lastpos[ids] = self.n + np.arange(m)
        self.n += m
