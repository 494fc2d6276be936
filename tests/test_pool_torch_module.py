"""TieredEmbeddingBag as a torch module beside nn.EmbeddingBag: its state dict holds `weight` (read from and
written to the pool), torch.compile runs its lookup outside the graph, and what cannot work is refused in
one line (torch.jit.trace, which would replay uninitialised memory; copying or pickling a view of shared
memory)."""

from __future__ import annotations

import copy
import os
import pickle
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from recmgd.pool import Pool, TieredEmbeddingBag

ROWS, DIM = 20, 4


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool.create(f"ptm_{os.getpid()}_{uuid.uuid4().hex[:8]}", tables=[(ROWS, DIM), (ROWS, DIM)], slots=8)
    try:
        yield p
    finally:
        p.destroy()


def test_state_dict_is_nn_embedding_bags(pool: Pool) -> None:
    """A model's state dict keeps the table (`weight`, as nn.EmbeddingBag's), and nn.EmbeddingBag's state
    dict loads into the pool (it was empty: saving a model dropped its tables)."""
    torch.manual_seed(1)
    ref = torch.nn.EmbeddingBag(ROWS, DIM, mode="sum")
    model = torch.nn.Sequential(TieredEmbeddingBag(pool, 1, mode="sum"))
    model[0].load_state_dict(ref.state_dict())
    np.testing.assert_array_equal(pool.read_rows(1, np.arange(ROWS)), ref.weight.detach().numpy())
    assert list(model.state_dict()) == ["0.weight"]
    assert torch.equal(model.state_dict()["0.weight"], ref.weight.detach())
    ids, off = torch.tensor([1, 5, 7, 19]), torch.tensor([0, 3])
    assert torch.equal(model[0](ids, off), ref(ids, off).detach())
    with pytest.raises(RuntimeError, match=r"weight is \(19, 4\)"):
        model[0].load_state_dict({"weight": ref.weight[:-1]})
    with pytest.raises(RuntimeError, match="Missing key"):
        model[0].load_state_dict({})
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "bogus"'):
        model[0].load_state_dict({"weight": ref.weight, "bogus": ref.weight})
    seen = []
    model[0].register_load_state_dict_pre_hook(lambda module, state, prefix, *a: seen.append(prefix))
    model.load_state_dict({"0.weight": ref.weight.to(torch.bfloat16)})  # (any float dtype)
    assert seen == ["0."]
    np.testing.assert_array_equal(pool.read_rows(1, np.arange(ROWS)),
                                  ref.weight.detach().to(torch.bfloat16).float().numpy())


def test_torch_compile_runs_the_lookup_outside_the_graph(pool: Pool) -> None:
    """A compiled model gives what the eager one gives. (Dynamo failed inside the pool's call with a
    multi-screen InternalTorchDynamoError.)"""
    pool.write_rows(0, np.arange(ROWS), np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM))
    torch.manual_seed(2)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag = TieredEmbeddingBag(pool, 0, mode="sum")
            self.lin = torch.nn.Linear(DIM, 2)

        def forward(self, ids: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
            return self.lin(self.bag(ids, off)).relu()

    m = Model()
    ids, off = torch.tensor([1, 2, 3, 9]), torch.tensor([0, 1])
    assert torch.equal(torch.compile(m, backend="eager")(ids, off), m(ids, off))


def test_what_cannot_work_is_refused_in_one_line(pool: Pool) -> None:
    """torch.jit.trace would record only the output's allocation and replay garbage; a copy or a pickle
    would not own the pool's shared memory (deepcopy and pickle failed inside cffi)."""
    bag = TieredEmbeddingBag(pool, 0, mode="sum")
    ids, off = torch.tensor([1, 2]), torch.tensor([0, 1])
    for call, err, what in ((lambda: torch.jit.trace(bag, (ids, off)), RuntimeError, "cannot be traced"),
                            (lambda: copy.deepcopy(torch.nn.Sequential(bag)), TypeError, "is not copied"),
                            (lambda: pickle.dumps(bag), TypeError, "is not copied")):
        with pytest.raises(err, match=what) as e:
            call()
        assert "\n" not in str(e.value)
        assert err is RuntimeError or pool.name in str(e.value)
