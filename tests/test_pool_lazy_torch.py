"""recmgd.pool does not import torch: the daemon (which never looks up) starts without it. torch is
imported by the first lookup (its result is a tensor), and TieredEmbeddingBag is still importable from
recmgd.pool."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(code: str) -> str:
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_import_does_not_load_torch() -> None:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import recmgd.pool"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    assert "torch" not in r.stderr, [ln for ln in r.stderr.splitlines() if "torch" in ln][:5]


def test_daemon_side_never_loads_torch_and_lookups_do() -> None:
    out = _run(
        """
        import os, sys
        import numpy as np
        from recmgd.pool import Pool
        name = f"rt_lazy_{os.getpid()}"
        app = Pool.create(name, [(100, 8), (50, 16)], slots=20, role="daemon")
        try:
            d = Pool.attach(name, role="daemon")
            d.write_rows(0, np.arange(5), np.ones((5, 8), dtype=np.float32))
            assert d.fill_keys(np.arange(5)) == 5
            assert sorted(d.resident_keys().tolist()) == [0, 1, 2, 3, 4]
            d.evict(0, [1, 2])
            d.rings(); d.counters(); d.stats(); d.read_rows(0, [0, 1]); d.free_slots()
            assert d.drain_ring(0).size == 0
            d.close()
            assert "torch" not in sys.modules, "daemon-side calls imported torch"
            a = Pool.attach(name)
            assert "torch" not in sys.modules
            out = a.embedding_bag(0, np.arange(10), np.array([0, 5]))
            import torch
            assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
            assert out[0].tolist() == [5.0] * 8 and out[1].tolist() == [0.0] * 8
            # torch inputs, weights and the nn.Module, reached through recmgd.pool
            from recmgd.pool import TieredEmbeddingBag
            import recmgd.pool as pm
            assert pm.TieredEmbeddingBag is TieredEmbeddingBag
            assert "TieredEmbeddingBag" in dir(pm) and getattr(pm, "is_pool", None) is None
            m = TieredEmbeddingBag(a, 0, mode="sum")
            assert isinstance(m, torch.nn.Module)
            ids = torch.tensor([0, 1, 2, 7], dtype=torch.int32)
            got = m(ids, torch.tensor([0, 2]), torch.tensor([2.0, 1.0, 1.0, 1.0]))
            assert got.tolist() == [[3.0] * 8, [1.0] * 8]
            a.write_rows(1, torch.tensor([3]), torch.full((1, 16), 2.0))
            outs = a.embedding_bags([1], [torch.tensor([3, 3])], [torch.tensor([0])])
            assert outs[0].tolist() == [[4.0] * 16]
            a.close()
        finally:
            Pool.unlink(name)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_default_threads_follow_torch_when_it_is_loaded() -> None:
    out = _run(
        """
        import os, sys
        import numpy as np
        import recmgd.pool as pm
        from recmgd.pool import Pool
        calls = []
        lib = pm.lib
        class Lib:
            def __getattr__(self, n):
                return getattr(lib, n)
            def recmg_set_threads(self, h, n):
                calls.append(n)
                return lib.recmg_set_threads(h, n)
        pm.lib = Lib()
        name = f"rt_lazy_t_{os.getpid()}"
        p = Pool.create(name, [(100, 8)], slots=0)
        try:
            assert calls == [] and "torch" not in sys.modules  # deferred: torch not loaded yet
            p.embedding_bag(0, np.arange(4), np.array([0]))
            import torch
            assert calls == [max(1, torch.get_num_threads())]
            p.embedding_bag(0, np.arange(4), np.array([0]))
            assert len(calls) == 1
            q = Pool.attach(name)                        # torch loaded: taken at once
            assert calls[-1] == max(1, torch.get_num_threads()) and len(calls) == 2
            r = Pool.attach(name, threads=3)
            assert calls[-1] == 3
            r.embedding_bag(0, np.arange(4), np.array([0]))
            assert len(calls) == 3
            q.close(); r.close(); p.close()
        finally:
            pm.lib = lib
            Pool.unlink(name)
        print("ok")
        """
    )
    assert out.strip() == "ok"
