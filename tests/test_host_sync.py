"""No host synchronization inside a training step: the GPU fast path's rule, checked on the CPU.

On an accelerator, reading a tensor's value on the host (``.item()``, ``bool(t)``, ``.tolist()``,
``.cpu()``, ``nonzero``, boolean-mask indexing, ...) stalls the step until the device catches up. Such
calls are Python-level, so they can be caught on any device: every one is made to raise inside
``Trainer._backward`` and ``Trainer._optimizer_step`` from the second step on (a method may set itself
up on its first batch, as CRD estimates its normalizer there). Only a step's forward, loss, backward and
optimizer update are covered; logging steps read the loss on purpose.
"""

import contextlib

import pytest
import torch

from kdlab.config import validate
from kdlab.engine.precision import cpu_supports_bf16
from kdlab.engine.trainer import Trainer
from kdlab.models import build_model
from kdlab.run import train

TENSOR_METHODS = ("item", "__bool__", "tolist", "__float__", "__int__", "__index__", "nonzero", "cpu",
                  "numpy", "unique", "masked_select")
TORCH_FUNCTIONS = ("nonzero", "argwhere", "unique", "masked_select")
#: every teacher -> student method but ``bss``, whose attack picks a data-dependent number of samples
#: (the correctly classified ones: one ``nonzero`` per step while the attack runs, by design)
METHODS = ["ce", "kd", "dkd", "fitnet", "at", "fsp", "nst", "sp", "rkd", "pkt", "vid", "cc", "ab", "ft",
           "crd", "dml", "ipwd", "stagewise"]
PARAMS = {"crd": {"num_negatives": 8}}


class HostSync(AssertionError):
    pass


def _raiser(name: str):
    def call(*args, **kwargs):
        raise HostSync(f"{name} inside a training step")

    return call


@contextlib.contextmanager
def host_syncs_forbidden(monkeypatch):
    getitem = torch.Tensor.__getitem__

    def masked_getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts):
            raise HostSync("boolean-mask indexing inside a training step")
        return getitem(self, index)

    with monkeypatch.context() as patch:
        for name in TENSOR_METHODS:
            patch.setattr(torch.Tensor, name, _raiser(f"Tensor.{name}"))
        for name in TORCH_FUNCTIONS:
            patch.setattr(torch, name, _raiser(f"torch.{name}"))
        patch.setattr(torch.Tensor, "__getitem__", masked_getitem)
        yield


def test_the_guard_catches_a_sync(monkeypatch):
    x = torch.ones(3)
    with host_syncs_forbidden(monkeypatch), pytest.raises(HostSync):
        x.sum().item()
    with host_syncs_forbidden(monkeypatch), pytest.raises(HostSync):
        x[x > 0]
    assert x[x > 0].sum().item() == 3.0  # restored


def guarded_after_first_step(part, monkeypatch):
    """``part`` of the trainer's step with host syncs forbidden from the second step on."""

    def guarded(self, *args):
        if self.step == 0:
            return part(self, *args)
        with host_syncs_forbidden(monkeypatch):
            return part(self, *args)

    return guarded


@pytest.mark.parametrize("method", METHODS)
def test_training_steps_make_no_host_sync(method, monkeypatch, tmp_path):
    for name in ("_backward", "_optimizer_step"):
        monkeypatch.setattr(Trainer, name, guarded_after_first_step(getattr(Trainer, name), monkeypatch))
    tree = {
        "data": {"name": "synthetic", "batch_size": 8, "val_fraction": 0.0, "image_size": 32,
                 "options": {"num_classes": 10, "num_train": 64, "num_test": 8}},
        "student": {"name": "resnet8"},
        "method": {"name": method, "params": PARAMS.get(method, {})},
        "optim": {"name": "sgd", "lr": 0.01},
        "train": {"steps": 8, "precision": "bf16" if cpu_supports_bf16() else "fp32", "progress": False,
                  "log_every": 1000},
        "out_dir": str(tmp_path), "name": method,
    }
    teacher = None
    if method != "ce":
        tree["teacher"] = {"name": "resnet14"}
        torch.manual_seed(0)
        teacher = build_model("resnet14", 10)
    if method == "dml":
        tree.pop("teacher")
        teacher = None
    result = train(validate(tree), teacher=teacher, write=False)
    assert result.summary["steps"] == 8
