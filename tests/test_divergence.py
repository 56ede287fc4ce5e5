"""A diverged run never writes a non-finite checkpoint: last.pt keeps the last good state to resume from."""

import pytest
import torch

from kdlab.config import load_config
from kdlab.core import checkpoint
from kdlab.core.errors import NonFiniteLossError
from kdlab.engine import Callback
from kdlab.engine.finite import first_non_finite
from kdlab.run import train


class Poison(Callback):
    """Makes the optimizer state (or a weight, with ``weight``) NaN at step ``at``."""

    def __init__(self, at, weight=False):
        self.at, self.weight = at, weight

    def on_step_end(self, trainer):
        if trainer.step != self.at:
            return
        if self.weight:
            next(trainer.distiller.student.parameters()).data.fill_(float("nan"))
        else:
            state = next(iter(trainer.optimizer.state.values()))
            state["momentum_buffer"].fill_(float("inf"))


@pytest.mark.parametrize(("weight", "val_fraction", "expected"), [
    (False, 0.2, "optimizer.state"),
    (True, 0.0, "model.student."),
])
def test_a_non_finite_state_is_not_checkpointed(tmp_path, digits_config, weight, val_fraction, expected):
    tree = digits_config(name="diverged", train={"epochs": None, "steps": 4, "eval_every": 2},
                         data={"val_fraction": val_fraction})
    with pytest.raises(NonFiniteLossError) as info:
        train(load_config(base=tree), callbacks=[Poison(4, weight)])
    message = str(info.value)
    assert "at step 4" in message and expected in message and "ce=" in message and "\n" not in message
    kept = checkpoint.load(tmp_path / "runs" / "diverged" / "last.pt")
    assert kept["step"] == 2 and first_non_finite(kept["model"]) is None


def test_first_non_finite_names_the_tensor():
    assert first_non_finite({"a": torch.ones(2), "b": [torch.tensor([1.0, float("inf")])]}) == "b.0"
    assert first_non_finite({"a": torch.ones(2), "n": torch.tensor([3])}) is None
