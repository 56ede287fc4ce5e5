"""Composed methods: the parts' terms summed, one student and one teacher forward per step, from config."""

import json

import pytest
import torch

from kdlab.cli.main import main
from kdlab.config.load import validate
from kdlab.config.schema import MethodConfig
from kdlab.core.checkpoint import load
from kdlab.core.errors import ConfigError
from kdlab.data.batch import Batch
from kdlab.engine import Callback
from kdlab.engine.logger import read_metrics
from kdlab.methods import DistillContext, build_distiller
from kdlab.methods.base import weighted_sum
from kdlab.methods.composed import namespaced
from kdlab.models import build_model
from kdlab.run import train
from kdlab.teacher_cache import fill_teacher_cache

from .test_train import Interrupt, assert_bitwise_equal

CONTEXT = DistillContext(10, (1, 8, 8), 64, "cnn_tiny", "cnn_small")
KD = {"name": "kd", "params": {"temperature": 4}, "weights": {"ce": 1.0, "kd": 1.0}}
CRD = {"name": "crd", "params": {"num_negatives": 16, "feat_dim": 16}, "weights": {"ce": 0.0, "crd": 0.8}}


def models():
    torch.manual_seed(0)
    return build_model("cnn_tiny", 10), build_model("cnn_small", 10).eval()


def composed(*parts, weights=None):
    return MethodConfig(name="composed", params={"parts": list(parts)}, weights=weights or {})


def batch(n=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=generator)
    return Batch(x, torch.randint(0, 10, (n,), generator=generator), torch.arange(n))


def test_clashing_terms_are_namespaced_and_the_rest_keep_their_names():
    assert namespaced({"kd": ["ce", "kd"], "crd": ["ce", "crd"]}) == {
        "kd": {"ce": "kd.ce", "kd": "kd"}, "crd": {"ce": "crd.ce", "crd": "crd"}}
    student, teacher = models()
    d = build_distiller(composed(KD, CRD, weights={"crd": 0.5}), student, teacher, CONTEXT)
    assert dict(d.weights) == {"kd.ce": 1.0, "kd": 1.0, "crd.ce": 0.0, "crd": 0.5}


def test_composed_kd_at_loss_is_the_sum_of_the_parts_losses():
    student, teacher = models()
    parts = [KD, {"name": "at", "weights": {"ce": 0.0}}]
    d = build_distiller(composed(*parts), student, teacher, CONTEXT)
    alone = [build_distiller(MethodConfig(**p), student, teacher, CONTEXT) for p in parts]
    b = batch()
    total = weighted_sum(d(b).losses, d.weights)
    expected = sum(weighted_sum(m(b).losses, m.weights) for m in alone)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-6)


def test_composed_crd_kd_loss_is_the_sum_of_the_parts_losses():
    student, teacher = models()
    d = build_distiller(composed(KD, CRD), student, teacher, CONTEXT)
    kd = build_distiller(MethodConfig(**KD), student, teacher, CONTEXT)
    crd = build_distiller(MethodConfig(**CRD), student, teacher, CONTEXT)
    crd.load_state_dict({k.removeprefix("parts.crd."): v for k, v in d.state_dict().items()
                         if not k.startswith("parts.kd.")})
    b = batch()
    torch.manual_seed(5)
    total = weighted_sum(d(b).losses, d.weights)
    torch.manual_seed(5)
    expected = weighted_sum(kd(b).losses, kd.weights) + weighted_sum(crd(b).losses, crd.weights)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-6)


def test_student_and_teacher_run_once_per_step_and_parts_do_not_own_the_student():
    student, teacher = models()
    d = build_distiller(composed(KD, {"name": "at"}, {"name": "fitnet", "weights": {"ce": 0}}),
                        student, teacher, CONTEXT)
    calls = {"student": 0, "teacher": 0}
    for name, model in (("student", student), ("teacher", teacher)):
        model.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    d(batch())
    assert calls == {"student": 1, "teacher": 1}
    keys = list(d.state_dict())
    assert not any(".student." in k for k in keys)
    assert sum(k.startswith("student.") for k in keys) == len(student.state_dict())
    assert d.extra_parameter_count() == sum(p.numel() for p in d.parts.parameters())


@pytest.mark.parametrize(("parts", "match"), [
    ([KD, {"name": "kdd"}], r"method.params.parts.1.name: unknown method 'kdd' \(did you mean 'kd'\?\)"),
    ([KD, KD], r"a second part labelled 'kd'"),
    ([KD, {"name": "stagewise"}], r"method.params.parts.1.name: method 'stagewise' cannot be a part"),
    ([KD, {"name": "at", "params": {"beta": 1}}], r"method.params.parts.1.params"),
    ([KD, {"name": "at", "weights": {"att": 1}}], r"method.params.parts.1.weights.att"),
    ([KD], r"parts"),
])
def test_bad_parts_are_one_config_error(parts, match):
    student, teacher = models()
    with pytest.raises(ConfigError, match=match):
        build_distiller(composed(*parts), student, teacher, CONTEXT)


def test_a_bad_part_is_one_line_on_the_command_line(tmp_path, digits_config, teacher_file, capsys):
    config = tmp_path / "bad.yaml"
    tree = digits_config(method={"name": "composed", "params": {"parts": [KD, {"name": "stagewise"}]}},
                         teacher={"name": "cnn_small", "checkpoint": teacher_file})
    config.write_text(json.dumps(tree))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot be a part" in err


@pytest.fixture
def teacher_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(build_model("cnn_small", 10).state_dict(), path)
    return str(path)


def composed_run(digits_config, teacher_file, name, **sections):
    sections.setdefault("train", {"steps": 6, "epochs": None, "eval_every": 2})
    return validate(digits_config(
        name=name, method={"name": "composed", "params": {"parts": [KD, CRD]}},
        teacher={"name": "cnn_small", "checkpoint": teacher_file}, data={"subset": 400}, **sections))


def test_composed_run_trains_with_stages_and_averaging_and_resumes_bit_exactly(digits_config, teacher_file):
    sections = {
        "stages": [{"name": "warm", "steps": 2, "weights": {"kd": 0.0}},
                   {"name": "main", "steps": 4, "params": {"kd": {}, "crd": {}}}],
        "averaging": {"strategy": "ema", "params": {"decay": 0.9}},
        "train": {"epochs": None, "eval_every": 2},
    }
    full = train(composed_run(digits_config, teacher_file, "full", **sections))
    assert full.summary["steps"] == 6 and full.summary["model"] == "averaged"
    config = composed_run(digits_config, teacher_file, "cut", **sections)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(5)])
    run_dir = full.run_dir.parent / "cut"
    assert load(run_dir / "last.pt")["step"] == 4
    train(config, resume=run_dir)
    assert_bitwise_equal(load(full.run_dir / "last.pt")["model"], load(run_dir / "last.pt")["model"])
    records = [r for r in read_metrics(full.run_dir) if r["kind"] == "train"]
    assert records and all({"kd.ce", "kd", "crd.ce", "crd"} <= set(r) for r in records)


def test_a_stage_setting_for_an_unknown_part_is_refused(digits_config, teacher_file):
    stages = [{"name": "main", "steps": 2, "params": {"dkd": {}}}]
    with pytest.raises(ConfigError, match=r"stages.0.params.dkd: no part has that label"):
        train(composed_run(digits_config, teacher_file, "bad-stage", stages=stages,
                           train={"epochs": None}))


def test_composed_kd_at_replays_a_feature_cache(digits_config, teacher_file, tmp_path):
    config = validate(digits_config(
        data={"augment": "standard", "val_fraction": 0.2},
        method={"name": "composed", "params": {"parts": [KD, {"name": "at"}]}},
        teacher={"name": "cnn_small", "checkpoint": teacher_file},
        teacher_cache={"path": str(tmp_path / "cache"), "epochs": 1, "batch_size": 32, "features": True},
        train={"steps": 4, "epochs": None, "eval_every": 4}, name="cached"))
    fill_teacher_cache(config)

    class TeacherWatch(Callback):
        def on_fit_start(self, trainer):
            trainer.distiller.teacher.register_forward_pre_hook(lambda *_: pytest.fail("the teacher ran"))

    result = train(config, callbacks=[TeacherWatch()])
    assert result.summary["teacher_cache"]["epochs"] == 1 and result.summary["steps"] == 4


def test_two_parts_reading_teacher_features_cannot_use_a_cache(digits_config, teacher_file, tmp_path):
    config = validate(digits_config(
        method={"name": "composed", "params": {"parts": [{"name": "at"}, {"name": "fitnet"}]}},
        teacher={"name": "cnn_small", "checkpoint": teacher_file},
        teacher_cache={"path": str(tmp_path / "cache"), "epochs": 1, "features": True}))
    with pytest.raises(ConfigError, match="cannot replay"):
        fill_teacher_cache(config)
