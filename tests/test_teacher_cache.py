"""Replayable teacher cache: filling, validity checks, resume, sharding, replay equal to a live teacher."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlab.assembly import build_run_data, build_run_distiller
from kdlab.config.load import ConfigError, validate
from kdlab.core.runtime import Runtime
from kdlab.methods import kd_loss
from kdlab.methods.base import weighted_sum
from kdlab.models import build_model
from kdlab.run import train
from kdlab.run.teacher_cache import attach_teacher_cache
from kdlab.teacher_cache import CacheLayout, cache_bytes, fill_teacher_cache, topk_to_logits
from kdlab.teacher_cache import fill as fill_module


@pytest.fixture
def teacher_weights(tmp_path):
    def make(seed: int = 0):
        torch.manual_seed(seed)
        path = tmp_path / f"teacher{seed}.pt"
        torch.save(build_model("cnn_small", 10, in_channels=1).state_dict(), path)
        return str(path)

    return make


@pytest.fixture
def cache_config(digits_config, teacher_weights, tmp_path):
    def make(method="kd", teacher_seed=0, **cache):
        return validate(digits_config(
            data={"augment": "standard", "val_fraction": 0.2},
            method={"name": method},
            teacher={"name": "cnn_small", "checkpoint": teacher_weights(teacher_seed)},
            teacher_cache={"path": str(tmp_path / "cache"), "epochs": 2, "batch_size": 32, **cache},
            train={"epochs": 2},
        ))

    return make


def filled_and_replayed(config):
    """Fill the config's cache, then build its data and distiller with the training source replaying it."""
    fill_teacher_cache(config)
    data = build_run_data(config, Runtime(seed=config.train.seed))
    distiller = build_run_distiller(config, data)
    attach_teacher_cache(config, data, distiller, torch.device("cpu"))
    return data, distiller


def test_cached_kd_loss_equals_live_teacher_kd_loss(cache_config):
    config = cache_config()
    data, distiller = filled_and_replayed(config)
    for epoch in range(3):
        data.train.set_epoch(epoch)
        for batch in data.train:
            live = distiller.teacher_logits(batch.inputs)
            cached = batch.teacher["logits"]
            assert torch.allclose(cached, live, atol=2e-2, rtol=1e-3)
            student = distiller.student(batch.inputs)
            assert kd_loss(student, cached).item() == pytest.approx(kd_loss(student, live).item(), abs=1e-3)


def test_replay_reproduces_the_cached_augmentation_not_the_run_seed(cache_config):
    config = cache_config()
    data, distiller = filled_and_replayed(config)
    root = Path(config.teacher_cache.path)
    draws = np.load(root / "augment.npy")[1]
    data.train.set_epoch(1)
    batch = next(iter(data.train))
    draws_of_batch = torch.from_numpy(draws)[batch.indices]
    expected = next(data.train.views(batch.indices, draws_of_batch, len(batch.indices)))
    assert torch.equal(batch.inputs, expected)
    assert len(np.unique(draws[:, :2], axis=0)) > 10, "crop offsets should vary between samples"


def test_cache_files_match_the_size_formula(cache_config):
    config = cache_config()
    root = fill_teacher_cache(config)
    meta = json.loads((root / "meta.json").read_text())
    n, e, c, p = meta["num_samples"], meta["epochs"], meta["num_classes"], meta["augment"]["width"]
    assert cache_bytes(meta) == e * n * (4 * p + 2 * c)
    arrays = CacheLayout(root).open_arrays(meta)
    assert sum(a.nbytes for a in arrays.values()) == cache_bytes(meta)


def test_different_teacher_is_refused(cache_config):
    fill_teacher_cache(cache_config())
    with pytest.raises(ConfigError, match="different teacher sha256"):
        train(cache_config(teacher_seed=1))


def test_different_transform_is_refused(cache_config):
    config = cache_config()
    fill_teacher_cache(config)
    config.data.augment = "none"
    with pytest.raises(ConfigError, match="different augment"):
        train(config)


def test_incomplete_cache_is_refused_and_a_killed_fill_resumes(cache_config, monkeypatch):
    config = cache_config()
    original = fill_module._fill_unit
    calls = []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(fill_module, "_fill_unit", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        fill_teacher_cache(config)
    with pytest.raises(ConfigError, match="incomplete"):
        train(config)
    monkeypatch.setattr(fill_module, "_fill_unit", original)
    resumed = fill_teacher_cache(config)
    meta = json.loads((resumed / "meta.json").read_text())
    assert CacheLayout(resumed).missing_parts(meta) == 0

    config.teacher_cache.path = str(resumed) + "-fresh"
    fresh = fill_teacher_cache(config)
    for name in ("augment", "logits"):
        assert np.array_equal(np.load(resumed / f"{name}.npy"), np.load(fresh / f"{name}.npy"))


def test_two_shards_fill_the_same_cache_as_one_process(cache_config, tmp_path):
    config = cache_config(batch_size=8)
    single = fill_teacher_cache(config)
    config.teacher_cache.path = str(tmp_path / "sharded")
    fill_teacher_cache(config, shard=0, num_shards=2)
    meta = json.loads((tmp_path / "sharded" / "meta.json").read_text())
    assert CacheLayout(tmp_path / "sharded").missing_parts(meta) > 0
    sharded = fill_teacher_cache(config, shard=1, num_shards=2)
    assert CacheLayout(sharded).missing_parts(meta) == 0
    for name in ("augment", "logits"):
        assert np.array_equal(np.load(single / f"{name}.npy"), np.load(sharded / f"{name}.npy"))


def test_topk_keeps_top_probabilities_and_rest_mass_exact():
    torch.manual_seed(0)
    logits = torch.randn(5, 20) * 3
    values, indices = logits.topk(4, dim=1)
    rest = logits.scatter(1, indices, float("-inf")).logsumexp(dim=1)
    rebuilt = topk_to_logits(values, indices, rest, 20)
    p, q = F.softmax(logits, 1), F.softmax(rebuilt, 1)
    assert torch.allclose(p.gather(1, indices), q.gather(1, indices), atol=1e-6)
    assert torch.allclose(q.sum(1), torch.ones(5), atol=1e-6)
    others = q.scatter(1, indices, 0.0)
    assert torch.allclose(others.max(1).values * 16, others.sum(1), atol=1e-6)


def test_training_from_a_topk_cache_runs_and_cycles_epochs(cache_config):
    config = cache_config(outputs="topk", topk=3)
    fill_teacher_cache(config)
    config.train.epochs = 3
    result = train(config)
    assert result.summary["teacher_cache"] == {"path": config.teacher_cache.path, "epochs": 2,
                                               "outputs": "topk", "topk": 3, "cycled": True}
    config.teacher_cache.cycle = False
    config.name = "no-cycle"
    with pytest.raises(ConfigError, match="cycle"):
        train(config)


def test_training_with_a_cache_never_runs_the_teacher(cache_config):
    config = cache_config()
    data, distiller = filled_and_replayed(config)
    distiller.teacher.register_forward_pre_hook(lambda *_: pytest.fail("the teacher ran"))
    batch = next(iter(data.train))
    weighted_sum(distiller(batch).losses, distiller.weights).backward()


def test_feature_method_replays_cached_features(cache_config):
    config = cache_config(method="at", features=True)
    data, distiller = filled_and_replayed(config)
    batch = next(iter(data.train))
    cached = distiller(batch).losses
    live = distiller(batch._replace(teacher=None)).losses
    for name in live:
        assert cached[name].item() == pytest.approx(live[name].item(), rel=1e-2, abs=1e-4)


@pytest.mark.parametrize(("method", "features", "match"), [
    ("at", False, "reads teacher features"),
    ("kd", True, "taps no teacher features"),
    ("stagewise", False, "cannot replay"),
])
def test_methods_that_cannot_use_the_cache_as_configured_are_refused(cache_config, method, features, match):
    with pytest.raises(ConfigError, match=match):
        fill_teacher_cache(cache_config(method=method, features=features))


def test_dataloader_path_replays_cached_transform_seeds(cache_config):
    config = cache_config()
    config.data.device_resident = "off"
    config.data.num_workers = 0
    data, distiller = filled_and_replayed(config)
    meta = json.loads((Path(config.teacher_cache.path) / "meta.json").read_text())
    assert meta["augment"]["kind"] == "seeded"
    data.train.set_epoch(1)
    for batch in data.train:
        live = distiller.teacher_logits(batch.inputs)
        assert torch.allclose(batch.teacher["logits"], live, atol=2e-2, rtol=1e-3)


@pytest.fixture
def ensemble_cache_config(digits_config, teacher_weights, tmp_path):
    def make(method="ensemble_kd", params=None, **cache):
        return validate(digits_config(
            data={"augment": "standard", "val_fraction": 0.2},
            method={"name": method, "params": params or {}},
            teachers=[{"name": "cnn_small", "checkpoint": teacher_weights(seed)} for seed in (0, 1, 2)],
            teacher_cache={"path": str(tmp_path / "cache"), "epochs": 2, "batch_size": 32, **cache},
            train={"epochs": 2},
        ))

    return make


@pytest.mark.parametrize("method", ["ensemble_kd", "batchensemble_kd"])
def test_ensemble_methods_replay_every_members_cached_logits(ensemble_cache_config, method):
    config = ensemble_cache_config(method)
    data, distiller = filled_and_replayed(config)
    root = Path(config.teacher_cache.path)
    meta = json.loads((root / "meta.json").read_text())
    n, e, p = meta["num_samples"], meta["epochs"], meta["augment"]["width"]
    assert meta["members"] == 3 and cache_bytes(meta) == e * n * (4 * p + 2 * 3 * 10)
    assert CacheLayout(root).open_arrays(meta)["logits"].shape == (e, n, 3, 10)
    data.train.set_epoch(1)
    batch = next(iter(data.train))
    live = distiller.teacher_members(batch.inputs)
    assert batch.teacher["members"].shape == live.shape == (3, len(batch.inputs), 10)
    assert torch.allclose(batch.teacher["members"], live, atol=2e-2, rtol=1e-3)
    for teacher in distiller.teacher.members:
        teacher.register_forward_pre_hook(lambda *_: pytest.fail("a teacher ran"))
    cached = distiller(batch).losses
    for teacher in distiller.teacher.members:
        teacher._forward_pre_hooks.clear()
    uncached = distiller(batch._replace(teacher=None)).losses
    assert cached["kd"].item() == pytest.approx(uncached["kd"].item(), abs=1e-3)
    assert train(config).summary["teacher_cache"]["path"] == config.teacher_cache.path


def test_perturbed_or_topk_ensemble_caches_are_refused(ensemble_cache_config):
    with pytest.raises(ConfigError, match="cannot replay"):
        fill_teacher_cache(ensemble_cache_config(params={"perturb": {"objective": "tdiv_sdiv"}}))
    with pytest.raises(ConfigError, match="use outputs: logits"):
        fill_teacher_cache(ensemble_cache_config(outputs="topk", topk=3))
