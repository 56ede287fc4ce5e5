"""Label noise and class imbalance: exact counts and rates, determinism, ranges, and the run wiring."""

import json

import pytest
import torch

from kdlab.config import load_config
from kdlab.core.errors import ConfigError
from kdlab.core.runtime import Runtime
from kdlab.data import build_data
from kdlab.data.corruption import (
    class_groups,
    class_sizes,
    keep_per_class,
    make_noisy,
    resolve_flip_map,
    transition_counts,
)
from kdlab.data.corruption.flipmaps import CIFAR100, default_flip_map
from kdlab.engine.metrics import ClassBreakdown, ClassificationMeter
from kdlab.run import train

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def balanced(num_classes=10, per_class=100):
    return torch.arange(num_classes).repeat_interleave(per_class)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 0.6, 1.0])
def test_symmetric_noise_flips_an_exact_count_to_other_classes(rate):
    clean = balanced(10, 101)
    noisy = make_noisy(clean, 10, "symmetric", rate, gen())
    assert int((noisy != clean).sum()) == round(rate * len(clean))
    assert noisy.min() >= 0 and noisy.max() < 10 and noisy.dtype == torch.int64
    counts = transition_counts(clean, noisy, 10)
    assert int(counts.sum()) == len(clean) and int(counts.trace()) == len(clean) - round(rate * len(clean))
    if rate >= 0.45:  # flipped labels spread over every other class
        off_diagonal = counts + torch.diag(torch.full((10,), -1_000_000))
        assert int((off_diagonal == 0).sum()) == 0


def test_noise_is_deterministic_per_seed():
    clean = balanced()
    first = make_noisy(clean, 10, "symmetric", 0.4, gen(3))
    assert torch.equal(first, make_noisy(clean, 10, "symmetric", 0.4, gen(3)))
    assert not torch.equal(first, make_noisy(clean, 10, "symmetric", 0.4, gen(4)))


def test_include_true_class_draws_from_all_classes():
    clean = balanced(2, 2000)
    noisy = make_noisy(clean, 2, "symmetric", 0.5, gen(), include_true_class=True)
    changed = float((noisy != clean).double().mean())
    assert 0.2 < changed < 0.3  # about rate * (C - 1) / C = 0.25


def test_cifar10_asymmetric_map_and_exact_per_class_counts():
    mapping = resolve_flip_map(None, CIFAR10_CLASSES)
    name = {i: c for i, c in enumerate(CIFAR10_CLASSES)}
    assert {name[s]: name[t] for s, t in mapping.items()} == {
        "truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
    clean = balanced(10, 50)
    noisy = make_noisy(clean, 10, "asymmetric", 0.4, gen(), mapping)
    counts = transition_counts(clean, noisy, 10)
    for source, target in mapping.items():
        assert counts[source, target] == 20 and counts[source, source] == 30
    untouched = [c for c in range(10) if c not in mapping]
    assert all(counts[c, c] == 50 for c in untouched)
    assert float((noisy != clean).double().mean()) == pytest.approx(0.4 * 5 / 10)


def test_pairflip_moves_to_the_next_class():
    clean = balanced(5, 20)
    counts = transition_counts(clean, make_noisy(clean, 5, "pairflip", 0.25, gen()), 5)
    for c in range(5):
        assert counts[c, c] == 15 and counts[c, (c + 1) % 5] == 5


def test_flip_maps_by_name_or_id_and_errors():
    assert resolve_flip_map({"cat": "dog", 1: "2"}, CIFAR10_CLASSES) == {3: 5, 1: 2}
    with pytest.raises(ValueError, match="flip_map: 'zebra'"):
        resolve_flip_map({"zebra": "cat"}, CIFAR10_CLASSES)
    with pytest.raises(ValueError, match="no default asymmetric map"):
        resolve_flip_map(None, ["a", "b"])
    assert len(CIFAR100) == 100 and len(set(CIFAR100.values())) == 100
    assert CIFAR100["beaver"] == "dolphin" and CIFAR100["whale"] == "beaver"
    assert default_flip_map(sorted(CIFAR100))[0] is not None


def test_exponential_and_step_sizes():
    counts = torch.full((10,), 500)
    sizes = class_sizes(counts, "exponential", 100)
    assert sizes[0] == 500 and sizes[-1] == 5 and bool((sizes[:-1] >= sizes[1:]).all())
    assert sizes.tolist() == [int(500 * 100 ** (-c / 9) + 1e-9) for c in range(10)]
    step = class_sizes(counts, "step", 10)
    assert step.tolist() == [500] * 5 + [50] * 5
    assert class_sizes(torch.tensor([30, 20, 25]), "exponential", 1).tolist() == [20, 20, 20]
    assert class_sizes(torch.full((4,), 3), "exponential", 1000).min() == 1  # never an empty class


def test_keep_per_class_is_exact_nested_and_deterministic():
    targets = balanced(10, 60)[torch.randperm(600, generator=gen(1))]
    sizes = class_sizes(torch.bincount(targets), "exponential", 10)
    kept = keep_per_class(targets, sizes, gen(5))
    assert torch.equal(torch.bincount(targets[kept], minlength=10), sizes)
    assert torch.equal(kept, keep_per_class(targets, sizes, gen(5)))
    harsher = keep_per_class(targets, class_sizes(torch.bincount(targets), "exponential", 50), gen(5))
    assert set(harsher.tolist()) <= set(kept.tolist())


def test_class_groups_rules():
    counts = torch.tensor([500, 300, 150, 90, 60, 40, 25, 19, 10, 5])
    assert class_groups(counts, "thirds").tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert class_groups(counts, "absolute").tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert class_groups(torch.tensor([5, 50, 500]), "thirds").tolist() == [2, 1, 0]


def test_meter_per_class_and_groups():
    breakdown = ClassBreakdown(3, torch.tensor([0, 1, 2]))
    logits = torch.eye(3)[[0, 0, 1, 2, 0, 2]] * 5
    targets = torch.tensor([0, 1, 1, 2, 2, 2])
    meter, plain = ClassificationMeter(breakdown=breakdown), ClassificationMeter()
    for m in (meter, plain):
        m.update(logits[:4], targets[:4])
        m.update(logits[4:], targets[4:])
    result = meter.compute()
    assert result["per_class_top1"] == [100.0, 50.0, pytest.approx(66.6667)]
    assert result["top1_many"] == 100.0 and result["top1_few"] == pytest.approx(200 / 3)
    assert result["top1"] == plain.compute()["top1"] and "per_class_top1" not in plain.compute()


def digits(noise=None, imbalance=None, **kwargs):
    return build_data({"name": "digits", "batch_size": 16, "val_fraction": 0.2, "noise": noise,
                       "imbalance": imbalance, **kwargs}, Runtime())


def test_build_data_corrupts_train_and_val_but_never_test():
    clean = digits()
    data = digits(dict(rate=0.3), dict(ratio=10))
    report = data.corruption.report
    assert report["noise"]["realized_rate_train"] == pytest.approx(0.3, abs=1e-3)
    assert report["noise"]["realized_rate_val"] == pytest.approx(0.3, abs=3e-3)
    counts = report["train_counts"]
    assert counts[0] / counts[-1] == pytest.approx(10, rel=0.1) and counts == sorted(counts, reverse=True)
    assert report["val_counts"][0] > report["val_counts"][-1]
    assert torch.equal(data.train_targets, data.corruption.train_targets)
    assert len(data.train_targets) == sum(counts)
    assert data.test.num_samples == clean.test.num_samples
    assert torch.equal(next(iter(data.test)).targets, next(iter(clean.test)).targets)
    assert data.corruption.groups.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]


def test_clean_validation_option_and_label_file_reuse(tmp_path):
    data = digits(dict(rate=0.5, val="clean"))
    assert data.corruption.report["noise"]["realized_rate_val"] == 0.0
    path = tmp_path / "labels.pt"
    torch.save(data.corruption.record, path)
    again = digits(dict(rate=0.5, val="clean", labels=str(path)))
    assert torch.equal(again.train_targets, data.train_targets)
    with pytest.raises(ValueError, match="drawn with noise val='clean', but the config asks for 'noisy'"):
        digits(dict(rate=0.5, val="noisy", labels=str(path)))
    with pytest.raises(ValueError, match="does not cover"):  # another validation carve
        build_data({"name": "digits", "batch_size": 16, "val_fraction": 0.1, "noise": {"rate": 0.5,
                    "val": "clean", "labels": str(path)}}, Runtime())
    with pytest.raises(ValueError, match="drawn with noise rate=0.5, but the config asks for 0.2"):
        digits(dict(rate=0.2, val="clean", labels=str(path)))
    with pytest.raises(ValueError, match="drawn with noise seed=0, but the config asks for 99"):
        digits(dict(rate=0.5, val="clean", seed=99, labels=str(path)))  # a stale file is refused


def test_run_saves_labels_reports_groups_and_errors_name_the_key(digits_config, tmp_path):
    tree = digits_config(data={"noise": {"type": "pairflip", "rate": 0.2}, "imbalance": {"ratio": 5}},
                         train={"steps": 2, "precision": "fp32", "progress": False}, name="noisy")
    result = train(load_config(base=tree))
    assert (result.run_dir / "noisy_labels.pt").is_file()
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["corruption"]["noise"]["realized_rate_train"] == pytest.approx(0.2, abs=0.01)
    transition = torch.tensor(summary["corruption"]["noise"]["transition_train"])
    assert transition.shape == (10, 10) and transition.sum() == sum(summary["corruption"]["train_counts"])
    assert 1 - transition.diag().sum() / transition.sum() == pytest.approx(
        summary["corruption"]["noise"]["realized_rate_train"], abs=1e-6)
    flips = transition - torch.diag(transition.diag())
    assert all(flips[c].nonzero().flatten().tolist() in ([], [(c + 1) % 10]) for c in range(10))  # pair-flip
    assert len(summary["test_last"]["per_class_top1"]) == 10 and "top1_few" in summary["test_last"]
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("top1_many" in e for e in evals if e["kind"] == "eval")
    reuse = digits_config(data={"noise": {"type": "pairflip", "rate": 0.2,
                                          "labels": str(result.run_dir / "noisy_labels.pt")},
                                "imbalance": {"ratio": 5}},
                          train={"steps": 1, "precision": "fp32", "progress": False}, name="reuse")
    assert train(load_config(base=reuse)).summary["corruption"]["noise"]["realized_rate_train"] == \
        summary["corruption"]["noise"]["realized_rate_train"]
    bad = digits_config(data={"noise": {"type": "asymmetric", "rate": 0.2}}, train={"steps": 1})
    with pytest.raises(ConfigError, match=r"^data\.noise\.flip_map: no default"):
        train(load_config(base=bad))
    with pytest.raises(ConfigError, match="unknown key 'data.noise.tpye' \\(did you mean 'type'\\?\\)"):
        load_config(base=digits_config(data={"noise": {"rate": 0.2, "tpye": "symmetric"}}))
