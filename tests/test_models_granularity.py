"""Checkpoints trained on rows or on pages (recmgd/models/granularity.py): `recmg train --page-bytes`, the
granularity in config.json (old checkpoints without it are row checkpoints), learned policies and
`recmg sim` refusing a checkpoint of the other granularity. The daemon's side: tests/test_daemon_pages.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_models import small_cfg, zipf_steps

from recmgd import policy as registry
from recmgd.errors import ModelError
from recmgd.models import checkpoint
from recmgd.models.granularity import Granularity, from_config, of_checkpoint
from recmgd.models.train import train_models
from recmgd.sim.pages import to_pages
from recmgd.trace import open_trace

PAGES = Granularity.pages(4096, 256)


def _save(path: Path, granularity: Granularity | None, seed: int = 0) -> Path:
    steps = zipf_steps(seed=seed, n_steps=60).as_list()
    return checkpoint.save(train_models(steps, 40, small_cfg()), path, granularity=granularity)


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small text trace: table 0 rows in runs of 5 samples, table 1 Zipf-popular rows."""
    rng = np.random.default_rng(0)
    lines = []
    for s in range(1200):
        lines.append(f"0 {s // 5} {s}")
        lines.append(f"1 {int(min(rng.zipf(1.3), 3000))} {s}")
    path = tmp_path_factory.mktemp("gran") / "t.trace"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_granularity_describes_compares_and_round_trips() -> None:
    rows, daemon = Granularity.rows(), Granularity.pages(4096)
    assert rows.describe() == "rows" and rows.train_args() == ""
    assert PAGES.describe() == "pages of 4096 bytes with rows of 256 bytes"
    assert PAGES.train_args() == " --page-bytes 4096 --row-bytes 256"
    assert daemon.describe() == "pages of 4096 bytes"  # the daemon: each table has its own row size
    assert PAGES.matches(daemon) and daemon.matches(PAGES) and rows.matches(Granularity())
    assert not rows.matches(PAGES) and not PAGES.matches(rows)
    assert not PAGES.matches(Granularity.pages(2048, 256)) and not PAGES.matches(Granularity.pages(4096, 128))
    for g in (rows, PAGES, daemon):
        assert from_config({"granularity": g.as_dict()}, "x") == g
    assert from_config({}, "x") == rows  # checkpoints from before page mode
    with pytest.raises(ValueError, match="row bytes <= page bytes"):
        Granularity.pages(4096, 8192)
    bad = [({"unit": "page"}, "not rows or pages"), ("rows", "not rows or pages"),
           ({"unit": "pages", "page_bytes": "4096"}, "must be integers"),
           ({"unit": "pages", "page_bytes": 0, "row_bytes": 0}, "need 0 < row bytes")]
    for field, msg in bad:
        with pytest.raises(ModelError, match=msg):
            from_config({"granularity": field}, "x")


def test_checkpoint_records_granularity_and_older_ones_are_rows(tmp_path: Path) -> None:
    d = _save(tmp_path / "p", PAGES)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["granularity"] == {"unit": "pages", "page_bytes": 4096, "row_bytes": 256}
    assert cfg["format_version"] == 1  # an added field, no version bump: older checkpoints still load
    assert checkpoint.granularity(d) == PAGES and of_checkpoint(d) == PAGES
    r = _save(tmp_path / "r", None)
    assert json.loads((r / "config.json").read_text())["granularity"] == {"unit": "rows"}
    # a checkpoint written before the field existed: a row checkpoint, loaded as before
    del cfg["granularity"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert checkpoint.granularity(d) == Granularity.rows()
    assert checkpoint.load(d).cache is not None
    assert registry.create("recmg", model_dir=str(d)).trained is not None
    cfg["granularity"] = {"unit": "pages", "page_bytes": -1}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="granularity"):
        checkpoint.load(d)
    assert of_checkpoint(tmp_path / "none") is None


def test_learned_policies_refuse_the_other_granularity(tmp_path: Path) -> None:
    pages, rows = _save(tmp_path / "p", PAGES), _save(tmp_path / "r", None)
    with pytest.raises(ModelError) as ei:
        registry.create("recmg", model_dir=str(pages))
    assert str(ei.value) == (f"{pages}: checkpoint trained on pages of 4096 bytes with rows of 256 bytes, "
                             "but policy 'recmg' runs on rows; train one with `recmg train TRACE --out DIR`")
    with pytest.raises(ModelError) as ei:
        registry.create("recmg-cache", model_dir=str(rows), granularity=PAGES)
    assert str(ei.value) == (f"{rows}: checkpoint trained on rows, but policy 'recmg-cache' runs on pages of "
                             "4096 bytes with rows of 256 bytes; train one with `recmg train TRACE --out DIR "
                             "--page-bytes 4096 --row-bytes 256`")
    with pytest.raises(ModelError, match="runs on pages of 2048 bytes"):
        registry.create("recmg", model_dir=str(pages), granularity=Granularity.pages(2048, 256))
    for g in (PAGES, Granularity.pages(4096)):  # the daemon does not know the rows' size: pages it is
        assert registry.create("recmg", model_dir=str(pages), granularity=g).trained is not None
    assert registry.create("recmg", model_dir=str(rows)).trained is not None
    # a policy that trains saves what it trained on
    fresh = tmp_path / "fresh"
    pol = registry.create("recmg-cache", model_dir=str(fresh), granularity=PAGES, epochs=1)
    pol.fit(zipf_steps(seed=3, n_steps=40).as_list(), 20)
    assert checkpoint.granularity(fresh) == PAGES


def test_recmg_train_page_bytes(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recmgd.cli.recmg import main

    out = tmp_path / "pg"
    assert main(["train", str(trace), "--out", str(out), "--epochs", "1", "--fraction", "0.2",
                 "--page-bytes", "4096", "--row-bytes", "256"]) == 0
    steps = open_trace(str(trace)).steps(16)
    unique_rows = len(np.unique(steps.keys))
    cap = int(0.2 * unique_rows) * 256 // 4096
    assert f"capacity {cap} pages (pages of 4096 bytes with rows of 256 bytes)" in capsys.readouterr().out
    cfg = checkpoint.read_config(out)
    assert cfg["granularity"] == PAGES.as_dict() and cfg["capacity"] == cap
    page_steps, _ = to_pages(steps, 256, 4096)
    half = len(steps) // 2
    assert cfg["meta"]["unique_rows"] == unique_rows  # type: ignore[index]
    assert cfg["meta"]["unique_pages"] == len(np.unique(page_steps.keys))  # type: ignore[index]
    # trained on the first half's page keys, not on rows
    keys = checkpoint.load(out).prefetch_keys
    assert keys is not None and len(keys)
    assert set(keys.tolist()) <= set(page_steps.slice(0, half).keys.tolist())
    assert not set(keys.tolist()) <= set(steps.slice(0, half).keys.tolist())
    # the same training as a page run of the simulator does in fit(): the same models
    pol = registry.create("recmg", granularity=PAGES, epochs=1)
    pol.fit(page_steps.slice(0, half).as_list(), cap)
    assert pol.trained is not None and np.array_equal(pol.trained.prefetch_keys, keys)
    # default rows: a row checkpoint as before; --row-bytes alone or rows larger than pages: errors
    assert main(["train", str(trace), "--out", str(tmp_path / "rw"), "--epochs", "1", "-q"]) == 0
    assert checkpoint.granularity(tmp_path / "rw") == Granularity.rows()
    assert main(["train", str(trace), "--out", str(tmp_path / "x"), "--row-bytes", "128", "-q"]) == 2
    assert "--row-bytes goes with --page-bytes" in capsys.readouterr().err
    assert main(["train", str(trace), "--out", str(tmp_path / "x"), "--page-bytes", "4096", "--row-bytes",
                 "8192", "-q"]) == 2
    assert "need 0 < row bytes <= page bytes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_recmg_sim_uses_page_checkpoints_for_pages_only(trace: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from recmgd.cli.recmg import main

    pages, rows = tmp_path / "pg", tmp_path / "rw"
    common = ["--epochs", "1", "-q", "--fraction", "0.2"]
    assert main(["train", str(trace), "--out", str(pages), "--page-bytes", "4096", *common]) == 0
    assert main(["train", str(trace), "--out", str(rows), *common]) == 0
    capsys.readouterr()
    sim = ["sim", str(trace), "--fractions", "0.2", "--json"]
    assert main([*sim, "--policies", "lru", "--pages", "recmg", "--model", str(pages)]) == 0
    res = {r["policy"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(res) == {"lru", "recmg@page"} and res["recmg@page"]["lookups"] == res["lru"]["lookups"]
    assert main([*sim, "--policies", "recmg", "--model", str(rows)]) == 0
    capsys.readouterr()
    refused = [
        (["--policies", "lru", "--pages", "recmg", "--model", str(rows)],
         f"recmg sim: --model {rows}: checkpoint trained on rows, but --pages recmg runs on pages of 4096 "
         "bytes with rows of 256 bytes; train one with `recmg train TRACE --out DIR --page-bytes 4096 "
         "--row-bytes 256`"),
        (["--policies", "recmg", "--model", str(pages)],
         f"recmg sim: --model {pages}: checkpoint trained on pages of 4096 bytes with rows of 256 bytes, but "
         "--policies recmg runs on rows; train one with `recmg train TRACE --out DIR`"),
        (["--pages", "recmg-cache", "--row-bytes", "128", "--model", str(pages)],
         f"recmg sim: --model {pages}: checkpoint trained on pages of 4096 bytes with rows of 256 bytes, but "
         "--pages recmg-cache runs on pages of 4096 bytes with rows of 128 bytes; train one with `recmg "
         "train TRACE --out DIR --page-bytes 4096 --row-bytes 128`"),
        (["--policies", "recmg", "--pages", "recmg", "--model", str(tmp_path / "empty")],
         f"recmg sim: --model {tmp_path / 'empty'}: one checkpoint is trained on rows or on pages, not both: "
         "the learned policies recmg (--policies) and recmg (--pages) need one each"),
    ]
    for args, line in refused:
        assert main([*sim, *args]) == 2, args
        got = capsys.readouterr()
        assert got.err.strip() == line and got.out == ""
    # a page run that trains saves a page checkpoint; classical policies ignore --model
    fresh = tmp_path / "fresh"
    assert main([*sim, "--pages", "recmg-cache,lru", "--policies", "lru", "--epochs", "1", "--model",
                 str(fresh)]) == 0
    assert checkpoint.granularity(fresh) == PAGES
    shutil.rmtree(fresh)
