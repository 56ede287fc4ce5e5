import json

import pytest
import torch

from kdlab.config import validate
from kdlab.core.checkpoint import load
from kdlab.core.runtime import Runtime
from kdlab.engine import Callback, NonFiniteLossError
from kdlab.engine.logger import read_metrics
from kdlab.engine.precision import cpu_supports_bf16
from kdlab.run import train


class Interrupt(Callback):
    """Simulates Ctrl-C once the trainer has reached ``at_step``."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, trainer) -> None:
        if trainer.step == self.at_step:
            raise KeyboardInterrupt


def weights(run_dir):
    return load(run_dir / "last.pt")["model"]


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_end_to_end_teacher_then_kd_writes_run_directory(digits_config):
    teacher = train(validate(digits_config(name="teacher", student={"name": "cnn_small"},
                                           train={"epochs": 4})))
    files = {p.name for p in teacher.run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json"} <= files
    assert teacher.summary["test_selected"]["top1"] > 80.0
    records = read_metrics(teacher.run_dir)
    assert {r["kind"] for r in records} == {"train", "eval"}
    train_record = next(r for r in records if r["kind"] == "train")
    assert {"lr", "loss", "ce", "img_per_s", "peak_mem_mb", "epoch"} <= set(train_record)
    assert sum(r["kind"] == "eval" for r in records) == 4

    student = train(validate(digits_config(
        name="kd", method={"name": "kd", "weights": {"ce": 0.5, "kd": 0.5}},
        teacher={"name": "cnn_small", "checkpoint": str(teacher.run_dir)})))
    summary = json.loads((student.run_dir / "summary.json").read_text())
    assert summary["selected"]["metric"] == "top1"
    assert summary["test_selected"]["n"] == summary["test_last"]["n"] > 0
    kd_terms = [r for r in read_metrics(student.run_dir) if r["kind"] == "train"]
    assert all("kd" in r and "ce" in r for r in kd_terms)
    assert all(not k.startswith(("teacher", "_teacher")) for k in load(student.run_dir / "best.pt")["model"])


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.skipif(
    not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX-512 BF16 or AMX)"))])
def test_interrupted_and_resumed_run_matches_uninterrupted_bit_for_bit(digits_config, precision):
    base = dict(train={"epochs": 3, "precision": precision}, data={"subset": 400})
    full = train(validate(digits_config(name="full", **base)))
    config = validate(digits_config(name="cut", **base))
    steps_per_epoch = full.summary["steps"] // 3
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(steps_per_epoch + 1)])
    run_dir = full.run_dir.parent / "cut"
    assert load(run_dir / "last.pt")["step"] == steps_per_epoch
    resumed = train(config, resume=run_dir)
    assert resumed.summary["steps"] == full.summary["steps"]
    assert_bitwise_equal(weights(full.run_dir), weights(run_dir))


def test_step_budget_resumes_mid_epoch_exactly(digits_config):
    base = dict(train={"epochs": None, "steps": 13, "eval_every": 4}, data={"subset": 400})
    full = train(validate(digits_config(name="full", **base)))
    config = validate(digits_config(name="cut", **base))
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(10)])
    run_dir = full.run_dir.parent / "cut"
    assert load(run_dir / "last.pt")["step"] == 8
    train(config, resume=run_dir)
    assert_bitwise_equal(weights(full.run_dir), weights(run_dir))


def test_non_finite_loss_stops_with_step_and_terms(digits_config):
    config = validate(digits_config(optim={"lr": 1e12, "momentum": 0.0}, train={"epochs": 3}))
    with pytest.raises(NonFiniteLossError, match=r"at step \d+ .*terms: ce="):
        train(config)


class AlwaysStop(Callback):
    name = "stopper"

    def __init__(self):
        self.calls = 0

    def on_step_end(self, trainer):
        self.calls += 1
        trainer.should_stop = True

    def eval_models(self, trainer):
        return {"copy": trainer.distiller.student}

    def state_dict(self):
        return {"calls": self.calls}


def test_callbacks_stop_add_eval_models_and_persist_state(digits_config):
    result = train(validate(digits_config(name="cb")), callbacks=[AlwaysStop()])
    assert result.summary["steps"] == 1
    evals = [r for r in read_metrics(result.run_dir) if r["kind"] == "eval"]
    assert {r["model"] for r in evals} == {"student", "copy"}
    assert load(result.run_dir / "last.pt")["callbacks"] == {"stopper": {"calls": 1}}


def test_existing_run_directory_is_not_overwritten(digits_config):
    config = validate(digits_config(name="same", train={"epochs": 1}))
    train(config)
    with pytest.raises(ValueError, match="already holds a run"):
        train(config)


def test_teacher_without_weights_is_refused(digits_config):
    config = validate(digits_config(method={"name": "kd"}, teacher={"name": "cnn_small"}))
    with pytest.raises(ValueError, match="teacher.checkpoint"):
        train(config)


def test_nan_outputs_at_evaluation_are_one_clear_error():
    from kdlab.engine.metrics import ClassificationMeter

    meter = ClassificationMeter()
    meter.update(torch.tensor([[float("nan"), 0.0], [1.0, 0.0]]), torch.tensor([0, 0]))
    with pytest.raises(NonFiniteLossError, match="1 of 2 evaluation samples"):
        meter.compute()


def test_evaluation_restores_each_module_mode():
    from kdlab.data import build_data
    from kdlab.engine.metrics import evaluate_model
    from kdlab.engine.precision import resolve_precision

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 10)).train()
    model[1].eval()
    data = build_data({"name": "digits", "batch_size": 32}, Runtime())
    evaluate_model(model, data.val, resolve_precision("fp32", torch.device("cpu")))
    assert model.training and model[2].training and not model[1].training


def test_compiled_training_matches_eager_and_saves_plain_keys(digits_config):
    tree = digits_config(train={"steps": 6, "eval_every": 6, "epochs": None})
    eager = train(validate(tree), write=False)
    compiled_tree = digits_config(name="compiled", train={"steps": 6, "eval_every": 6, "epochs": None,
                                                          "compile": True})
    compiled = train(validate(compiled_tree))
    saved = load(compiled.run_dir / "last.pt")["model"]
    assert not any("_orig_mod" in key for key in saved)
    for name, value in eager.student.state_dict().items():
        assert torch.allclose(compiled.student.state_dict()[name], value, atol=1e-4), name


@pytest.mark.parametrize("method", ["nst", "crd", "stagewise"])
def test_compiled_models_keep_their_feature_hooks_without_recompiling(method, tmp_path):
    """Features read by forward hooks (a stage output for NST, the embedding for CRD, a truncated forward
    for stagewise) reach the loss of a compiled student and teacher: the loss curve follows eager's, and
    each model is compiled once per mode (train, no-grad), not once per step."""
    from torch._dynamo.utils import counters

    from kdlab.models import build_model

    losses = {}
    for compile in (False, True):
        tree = {"data": {"name": "synthetic", "batch_size": 16, "val_fraction": 0.0,
                         "options": {"num_classes": 10, "num_train": 128, "num_test": 16}},
                "student": {"name": "resnet8"}, "teacher": {"name": "resnet14"},
                "method": {"name": method, "params": {"num_negatives": 16} if method == "crd" else {}},
                "optim": {"name": "sgd", "lr": 0.01},
                "train": {"steps": 5, "precision": "fp32", "progress": False, "log_every": 1,
                          "compile": compile},
                "out_dir": str(tmp_path), "name": f"compile-{compile}"}
        torch.manual_seed(0)
        counters.clear()
        run = train(validate(tree), teacher=build_model("resnet14", 10))
        losses[compile] = [r["loss"] for r in read_metrics(run.run_dir) if r["kind"] == "train"]
    assert counters["frames"]["total"] <= 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)
    assert losses[False][0] != pytest.approx(losses[False][-1], rel=1e-3)
