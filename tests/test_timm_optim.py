"""``optim.name: timm:NAME``: timm's optimizer on kdlab's parameter groups, trained and resumed like
kdlab's own; a name timm does not know, a malformed one or a missing timm is one line."""

import importlib

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from kdlab.config import validate
from kdlab.config.schema import OptimConfig
from kdlab.core.checkpoint import load
from kdlab.core.errors import ConfigError
from kdlab.engine.optim import build_optimizer
from kdlab.run import train
from tests.helpers import one_line_error, write

timm_optim = pytest.importorskip("timm.optim")


def tiny_model():
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def test_timm_lamb_keeps_kdlabs_weight_decay_groups_and_settings():
    config = OptimConfig(name="timm:lamb", lr=0.02, weight_decay=0.1, betas=(0.8, 0.99),
                         no_decay_norm_bias=True)
    optimizer = build_optimizer(tiny_model(), config)
    assert isinstance(optimizer, timm_optim.Lamb)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 4]  # weights | biases and LayerNorm
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert all(g["lr"] == 0.02 and g["betas"] == (0.8, 0.99) for g in optimizer.param_groups)


def test_timm_lars_takes_the_momentum():
    optimizer = build_optimizer(tiny_model(), OptimConfig(name="timm:lars", lr=0.1, momentum=0.7))
    assert isinstance(optimizer, timm_optim.Lars)
    assert optimizer.param_groups[0]["momentum"] == 0.7 and "betas" not in optimizer.param_groups[0]


def test_a_run_trains_and_checkpoints_with_timm_lamb(quick):
    result = train(validate(quick(name="lamb", optim={"name": "timm:lamb", "lr": 0.01},
                                  schedule={"name": "constant"})))
    state = load(result.run_dir / "last.pt")
    assert result.summary["steps"] == 3
    assert state["optimizer"]["state"] and {"exp_avg", "exp_avg_sq"} <= set(state["optimizer"]["state"][0])
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)


def test_an_unknown_timm_optimizer_is_one_line_naming_the_list(tmp_path, capsys, quick):
    err = one_line_error(capsys, ["train", write(tmp_path, quick(optim={"name": "timm:lamm"})), "--quiet"])
    assert "optim.name: unknown timm optimizer 'lamm' (did you mean 'lamb'?)" in err
    assert "timm.optim.list_optimizers()" in err
    assert not (tmp_path / "runs" / "quick" / "config.yaml").exists()


@pytest.mark.parametrize("name", ["lamb", "timm:", "timm:la mb"])
def test_a_malformed_optimizer_name_is_refused(name):
    with pytest.raises(ValidationError, match="'adamw', or timm:NAME"):
        OptimConfig(name=name)


def test_nesterov_is_refused_with_a_timm_optimizer():
    with pytest.raises(ValidationError, match="unset nesterov"):
        OptimConfig(name="timm:sgd", nesterov=True)


def test_timm_optimizers_without_timm_say_how_to_install(monkeypatch):
    real = importlib.import_module

    def without_timm(name, *args):
        if name.startswith("timm"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_timm)
    with pytest.raises(ConfigError, match=r"optim.name: timm optimizers need timm: pip install kdlab\[timm"):
        build_optimizer(tiny_model(), OptimConfig(name="timm:lamb"))
    assert torch.optim.SGD is type(build_optimizer(tiny_model(), OptimConfig()))
