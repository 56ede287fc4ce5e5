import random

import numpy as np
import pytest
import torch

from kdlab.core import checkpoint


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"step": 1, "w": torch.ones(3)}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save_atomic({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = checkpoint.load(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Arbitrary:
    """A class that weights_only loading must refuse to instantiate."""


def test_load_refuses_pickled_code_and_garbage(tmp_path):
    torch.save({"obj": Arbitrary()}, tmp_path / "evil.pt")
    with pytest.raises(checkpoint.CheckpointError, match="evil.pt"):
        checkpoint.load(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="junk.pt"):
        checkpoint.load(tmp_path / "junk.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing.pt")


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    checkpoint.save_atomic({"rng": checkpoint.rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "rng.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
