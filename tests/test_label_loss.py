"""The one CE helper on the labels (soft targets, label smoothing), and every method's CE term through it."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from kdlab.assembly import build_run_data, build_run_distiller
from kdlab.config.load import ConfigError, validate
from kdlab.core.runtime import Runtime
from kdlab.methods import METHODS
from kdlab.methods import base as base_module
from kdlab.methods.labels import label_cross_entropy
from kdlab.models import build_model

PARAMS = {"ipwd_self": {"epochs": 2}, "crd": {"num_negatives": 16}, "bss": {"epochs": 2},
          "fsp": {"adapter": True}, "composed": {"parts": [{"name": "kd"}, {"name": "at"}]}}
#: the loss terms that are a CE on the labels (IPWD's auxiliary head is one too)
CE_TERMS = {"ce", "aux"}


def test_hard_targets_without_smoothing_are_the_plain_ce_bit_for_bit():
    logits, labels = torch.randn(16, 10), torch.randint(0, 10, (16,))
    assert torch.equal(label_cross_entropy(logits, labels), F.cross_entropy(logits.float(), labels))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_smoothing_and_soft_targets_are_the_smoothed_mixture_formula(eps):
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 10) * 3, torch.randint(0, 10, (16,))
    soft = torch.softmax(torch.randn(16, 10), dim=1)
    log_p = F.log_softmax(logits, dim=1)
    for targets, q in ((labels, F.one_hot(labels, 10).float()), (soft, soft)):
        expected = -(((1 - eps) * q + eps / 10) * log_p).sum(dim=1).mean()
        got = label_cross_entropy(logits, targets, eps)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
        assert torch.equal(got, F.cross_entropy(logits, targets, label_smoothing=eps))


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(build_model("cnn_small", 10, in_channels=1).state_dict(), path)
    return str(path)


def method_config(name, teacher_path, **method):
    return validate({"data": {"name": "digits", "batch_size": 16, "val_fraction": 0.2},
                     "student": {"name": "cnn_tiny"},
                     "teacher": {"name": "cnn_small", "checkpoint": teacher_path},
                     "method": {"name": name, "params": PARAMS.get(name, {}), **method},
                     "train": {"steps": 1}})


def step_losses(config, batch):
    torch.manual_seed(0)
    distiller = build_run_distiller(config, build_run_data(config, Runtime()))
    torch.manual_seed(1)
    return distiller(batch).losses


@pytest.mark.parametrize("name", METHODS.names())
def test_every_methods_ce_term_goes_through_the_helper_with_smoothing_and_soft_targets(name, teacher_path,
                                                                                       monkeypatch):
    config = method_config(name, teacher_path, label_smoothing=0.2)
    plain = next(iter(build_run_data(config, Runtime()).train))
    torch.manual_seed(2)
    mixed_inputs, soft = v2.MixUp(alpha=1.0, num_classes=10)(plain.inputs, plain.targets)
    calls = []

    def recording(logits, targets, label_smoothing=0.0):
        calls.append((targets, label_smoothing))
        return label_cross_entropy(logits, targets, label_smoothing)

    monkeypatch.setattr(base_module, "label_cross_entropy", recording)
    takes_soft = METHODS.get(name).soft_targets if name != "composed" else True
    batch = plain._replace(inputs=mixed_inputs, soft_targets=soft) if takes_soft else plain
    smoothed = step_losses(config, batch)
    assert calls and all(eps == 0.2 for _, eps in calls)
    wanted = batch.label_targets
    assert all(torch.equal(targets[: len(wanted)], wanted) for targets, _ in calls)
    calls.clear()
    unsmoothed = step_losses(method_config(name, teacher_path), batch)
    assert all(eps == 0.0 for _, eps in calls)
    for term in smoothed:
        assert torch.equal(smoothed[term], unsmoothed[term]) is (term.rpartition(".")[2]
                                                                     not in CE_TERMS), term


def test_kd_ce_term_is_torchs_soft_target_ce_with_smoothing(teacher_path):
    config = method_config("kd", teacher_path, label_smoothing=0.1)
    plain = next(iter(build_run_data(config, Runtime()).train))
    torch.manual_seed(3)
    inputs, soft = v2.CutMix(alpha=1.0, num_classes=10)(plain.inputs, plain.targets)
    torch.manual_seed(0)
    distiller = build_run_distiller(config, build_run_data(config, Runtime()))
    out = distiller(plain._replace(inputs=inputs, soft_targets=soft))
    expected = F.cross_entropy(out.logits.float(), soft, label_smoothing=0.1)
    assert torch.equal(out.losses["ce"], expected)


HARD_LABEL_METHODS = ["bss", "crd", "dkd", "ipwd", "ipwd_self"]


@pytest.mark.parametrize("name", HARD_LABEL_METHODS)
def test_mixing_is_refused_for_methods_that_read_class_ids_beyond_ce(name, teacher_path):
    assert sorted(n for n in METHODS.names() if METHODS.get(n).soft_targets is False) == HARD_LABEL_METHODS
    config = method_config(name, teacher_path)
    config.data.mix = {"mixup_alpha": 0.2}
    with pytest.raises(ConfigError, match=rf"^data\.mix: method '{name}' reads the class ids beyond its CE"):
        build_run_distiller(config, build_run_data(config, Runtime()))


def test_composed_takes_mixing_only_when_every_part_does(teacher_path):
    config = method_config("composed", teacher_path)
    config.data.mix = {"cutmix_alpha": 1.0}
    assert build_run_distiller(config, build_run_data(config, Runtime())).soft_targets
    config.method.params = {"parts": [{"name": "kd"}, {"name": "dkd"}]}
    with pytest.raises(ConfigError, match="data.mix: method 'composed'"):
        build_run_distiller(config, build_run_data(config, Runtime()))


def test_label_smoothing_is_the_methods_not_a_parts(teacher_path):
    config = method_config("composed", teacher_path,
                           params={"parts": [{"name": "kd", "label_smoothing": 0.1}, {"name": "at"}]})
    with pytest.raises(ConfigError, match=r"parts\.0.*set method\.label_smoothing, not a part's"):
        build_run_distiller(config, build_run_data(config, Runtime()))
    with pytest.raises(ConfigError, match=r"method\.label_smoothing' = 1\.0"):
        method_config("kd", teacher_path, label_smoothing=1.0)
