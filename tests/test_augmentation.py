"""Per-sample policies, random erasing and batch mixing on both data paths; the teacher sees the student's
view; resume stays exact; the teacher cache replays policies and refuses mixing; bad settings are one line."""

import pytest
import torch
from torchvision.transforms import v2

from kdlab.config.load import ConfigError, validate
from kdlab.core.runtime import Runtime
from kdlab.data import build_data
from kdlab.data.mixing import MixedBatchSource, mix_transform
from kdlab.data.policies import apply_per_sample, sample_transform
from kdlab.data.tensor_source import TensorBatchSource
from kdlab.models import build_model
from kdlab.run import train
from kdlab.teacher_cache import fill_teacher_cache
from tests.helpers import one_line_error, write
from tests.test_teacher_cache import filled_and_replayed
from tests.test_train import Interrupt, assert_bitwise_equal, weights

POLICY = {"name": "randaugment", "num_ops": 2, "magnitude": 9}


STD = 0.25


def repeated_source(policy, count=32, mean=(0.5, 0.5, 0.5)):
    """One random 3 x 16 x 16 image repeated ``count`` times, as a device-resident training source."""
    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    return TensorBatchSource(image.repeat(count, 1, 1, 1), torch.zeros(count, dtype=torch.int64),
                             batch_size=count, mean=mean, std=(STD,) * 3, device="cpu", shuffle=True,
                             policy=policy)


def pixels(batch, mean=(0.5, 0.5, 0.5)):
    return (batch.inputs * STD + torch.tensor(mean).view(1, 3, 1, 1)) * 255


def test_v2_policy_on_a_batch_is_one_draw_so_kdlab_draws_per_image():
    policy = sample_transform(validate_policy(POLICY), None, (0.5,) * 3)
    source = repeated_source(policy)
    torch.manual_seed(5)
    one_draw = policy(source.images)
    assert all(torch.equal(one_draw[0], image) for image in one_draw), "v2 on a batch: one draw for all"
    images = pixels(next(iter(source))).round()
    assert len({tuple(image.flatten().tolist()) for image in images}) > 20, "a fresh draw per image"


def validate_policy(policy):
    return validate({"data": {"name": "digits", "policy": policy}, "student": {"name": "cnn_tiny"},
                     "train": {"steps": 1}}).data.policy


def test_policy_draws_are_a_pure_function_of_seed_and_epoch_and_leave_the_global_rng_alone():
    source = repeated_source(sample_transform(validate_policy(POLICY), None, (0.5,) * 3))
    state = torch.get_rng_state()
    first = next(iter(source)).inputs
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(next(iter(source)).inputs, first)
    source.set_epoch(1)
    assert not torch.equal(next(iter(source)).inputs, first)


def test_fast_path_records_a_policy_seed_per_sample_and_views_replay_it():
    source = repeated_source(sample_transform(validate_policy(POLICY), None, (0.5,) * 3))
    spec = source.augment_spec()
    assert spec["width"] == 1 and "RandAugment" in spec["policy"]
    draws = source.draw_by_sample(torch.Generator().manual_seed(3))
    assert draws.shape == (32, 1) and draws.dtype == torch.int32
    indices = torch.arange(32)
    replayed = next(source.views(indices, draws, 32))
    expected = apply_per_sample(source.policy, source.images, draws[:, 0].tolist())
    assert torch.equal(replayed, source.normalize(expected))


def test_random_erasing_fills_a_rectangle_with_the_mean_colour_which_normalizes_to_about_zero():
    erasing = validate({"data": {"name": "digits", "random_erasing": {"p": 1.0}},
                        "student": {"name": "cnn_tiny"}, "train": {"steps": 1}}).data.random_erasing
    mean = (0.4, 0.5, 0.6)
    source = repeated_source(sample_transform(None, erasing, mean), mean=mean)
    source.images.fill_(255)
    batch = next(iter(source))
    fill = torch.tensor([round(255 * m) for m in mean], dtype=torch.float32).view(1, 3, 1, 1)
    erased = ((pixels(batch, mean) - fill).abs() < 1e-3).all(dim=1)
    assert all(0 < mask.sum() < 16 * 16 for mask in erased), "each image gets one rectangle erased"
    assert batch.inputs.masked_select(erased[:, None].expand(-1, 3, -1, -1)).abs().max() < 1 / (255 * STD)


@pytest.mark.parametrize("resident", ["on", "off"])
def test_both_data_paths_apply_the_policy_per_sample_and_repeat_an_epoch_exactly(resident):
    def first_batch(policy, epoch=0):
        data = build_data({"name": "digits", "batch_size": 32, "device_resident": resident, "num_workers": 0,
                           "augment": "none", **({"policy": policy} if policy else {})}, Runtime())
        data.train.set_epoch(epoch)
        return next(iter(data.train))

    plain, augmented = first_batch(None), first_batch(POLICY)
    assert torch.equal(plain.indices, augmented.indices)
    assert not torch.equal(plain.inputs, augmented.inputs)
    assert torch.equal(first_batch(POLICY).inputs, augmented.inputs)
    assert not torch.equal(first_batch(POLICY, epoch=1).inputs, first_batch(None, epoch=1).inputs)


def mixed_source(mix, batches=4):
    torch.manual_seed(0)
    n = 8 * batches
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8)
    inner = TensorBatchSource(images, torch.arange(n) % 4, batch_size=8, mean=(0.0,), std=(1 / 255,),
                              device="cpu", shuffle=True)
    config = validate({"data": {"name": "digits", "mix": mix}, "student": {"name": "cnn_tiny"},
                       "train": {"steps": 1}}).data.mix
    return inner, MixedBatchSource(inner, mix_transform(config, 4), seed=0)


def test_mixup_mixes_each_image_with_the_previous_one_and_its_soft_targets_match():
    inner, source = mixed_source({"mixup_alpha": 0.4})
    lams = set()
    for plain, mixed in zip(inner, source, strict=True):
        assert torch.equal(mixed.targets, plain.targets) and torch.equal(mixed.indices, plain.indices)
        assert torch.allclose(mixed.soft_targets.sum(dim=1), torch.ones(8))
        previous = plain.targets.roll(1, 0)
        i = int((plain.targets != previous).nonzero()[0])
        lam = float(mixed.soft_targets[i, plain.targets[i]])
        one_hot = torch.nn.functional.one_hot(plain.targets, 4).float()
        assert torch.allclose(mixed.soft_targets, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))
        expected = lam * plain.inputs + (1 - lam) * plain.inputs.roll(1, 0)
        assert torch.allclose(mixed.inputs, expected, atol=1e-3)
        lams.add(round(lam, 6))
    assert len(lams) == len(source), "one lambda per batch"


def test_cutmix_pastes_one_box_of_the_previous_image_whose_area_is_its_label_weight():
    inner, source = mixed_source({"cutmix_alpha": 1.0})
    for plain, mixed in zip(inner, source, strict=True):
        changed = (mixed.inputs != plain.inputs).any(dim=0)[0]
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        box = torch.zeros(8, 8, dtype=torch.bool)
        if len(rows):
            box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(mixed.inputs, torch.where(box, plain.inputs.roll(1, 0), plain.inputs))
        i = int((plain.targets != plain.targets.roll(1, 0)).nonzero()[0])
        assert float(mixed.soft_targets[i, plain.targets[i]]) == pytest.approx(1 - box.float().mean().item())


def test_mixing_repeats_per_epoch_leaves_the_global_rng_and_mixes_only_a_share_prob_of_batches():
    _, source = mixed_source({"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "prob": 0.5}, batches=16)
    state = torch.get_rng_state()
    first = [b.soft_targets for b in source]
    assert torch.equal(torch.get_rng_state(), state)
    assert 0 < sum(s is None for s in first) < len(first)
    again = [b.soft_targets for b in source]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("resident", ["on", "off"])
def test_the_teacher_sees_exactly_the_students_augmented_and_mixed_view(digits_config, resident):
    torch.manual_seed(0)
    student, teacher = build_model("cnn_tiny", 10, in_channels=1), build_model("cnn_small", 10, in_channels=1)
    seen = {"student": [], "teacher": []}
    student.register_forward_pre_hook(lambda m, args: seen["student"].append(args[0].clone()) if m.training
                                      else None)
    teacher.register_forward_pre_hook(lambda m, args: seen["teacher"].append(args[0].clone()))
    teacher_mean, teacher_std = 0.2, 0.5
    config = validate(digits_config(
        data={"policy": POLICY, "random_erasing": {"p": 0.5}, "mix": {"mixup_alpha": 1.0},
              "device_resident": resident, "num_workers": 0},
        method={"name": "kd", "label_smoothing": 0.1},
        teacher={"name": "cnn_small", "mean": [teacher_mean], "std": [teacher_std]},
        train={"steps": 1, "epochs": None, "eval_every": 1}))
    train(config, student=student, teacher=teacher, write=False)
    student_view, teacher_view = seen["student"][0], seen["teacher"][0]
    data_mean, data_std = 0.3053, 0.3758
    assert torch.allclose(teacher_view, (student_view * data_std + data_mean - teacher_mean) / teacher_std,
                          atol=1e-5)
    values = (student_view * data_std + data_mean) * 255
    assert ((values - values.round()).abs() > 0.01).float().mean() > 0.1, "the view is a mix of two images"


def test_policy_and_mixing_resume_bit_for_bit(digits_config):
    base = dict(train={"steps": 10, "epochs": None, "eval_every": 5},
                data={"subset": 400, "policy": {"name": "trivialaugment"}, "random_erasing": {},
                      "mix": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}},
                method={"name": "ce", "label_smoothing": 0.1})
    full = train(validate(digits_config(name="full", **base)))
    config = validate(digits_config(name="cut", **base))
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(7)])
    run_dir = full.run_dir.parent / "cut"
    train(config, resume=run_dir)
    assert_bitwise_equal(weights(full.run_dir), weights(run_dir))


@pytest.fixture
def cache_tree(digits_config, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(build_model("cnn_small", 10, in_channels=1).state_dict(), path)

    def make(**data):
        return digits_config(data={"augment": "standard", **data}, method={"name": "kd"},
                             teacher={"name": "cnn_small", "checkpoint": str(path)},
                             teacher_cache={"path": str(tmp_path / "cache"), "epochs": 1, "batch_size": 64},
                             train={"epochs": 1})

    return make


def test_teacher_cache_replays_a_per_sample_policy(cache_tree):
    config = validate(cache_tree(policy=POLICY, random_erasing={"p": 0.5}))
    data, distiller = filled_and_replayed(config)
    assert data.train.augment_spec()["width"] == 4
    for batch in data.train:
        live = distiller.teacher_logits(batch.inputs)
        assert torch.allclose(batch.teacher["logits"], live, atol=2e-2, rtol=1e-3)


def test_teacher_cache_refuses_mixing_naming_the_key(cache_tree):
    with pytest.raises(ConfigError, match=r"^data\.mix: a teacher cache cannot replay mixup/cutmix"):
        fill_teacher_cache(validate(cache_tree(mix={"mixup_alpha": 0.2})))
    with pytest.raises(ConfigError, match=r"^data\.mix: a teacher cache cannot replay"):
        train(validate(cache_tree(mix={"cutmix_alpha": 1.0})))


@pytest.mark.parametrize(("data", "key", "message"), [
    ({"policy": {"name": "randaug"}}, "data.policy.name", "'randaugment', 'trivialaugment' or 'autoaugment'"),
    ({"policy": {"name": "randaugment", "magnitude": 31}}, "data.policy", "below num_magnitude_bins 31"),
    ({"policy": {"name": "randaugment", "magnitude": -1}}, "data.policy.magnitude", "greater than or equal"),
    ({"policy": {"name": "trivialaugment", "num_ops": 3}}, "data.policy.num_ops", "does not apply"),
    ({"policy": {"name": "autoaugment", "autoaugment_policy": "cifar"}}, "data.policy.autoaugment_policy",
     "'imagenet', 'cifar10' or 'svhn'"),
    ({"random_erasing": {"p": 0}}, "data.random_erasing.p", "greater than 0"),
    ({"random_erasing": {"scale": [0.5, 0.1]}}, "data.random_erasing", "0 < min <= max < 1"),
    ({"mix": {"mixup_alpha": 0}}, "data.mix.mixup_alpha", "greater than 0"),
    ({"mix": {"cutmix_alpha": -1.0}}, "data.mix.cutmix_alpha", "greater than 0"),
    ({"mix": {}}, "data.mix", "set mixup_alpha, cutmix_alpha or both"),
    ({"mix": {"mixup_alpha": 0.2, "switch_prob": 0.5}}, "data.mix", "needs both mixup_alpha and"),
    ({"mix": {"mixup_alpha": 0.2, "prob": 0}}, "data.mix.prob", "greater than 0"),
])
def test_bad_augmentation_settings_are_one_line_naming_the_key(digits_config, tmp_path, capsys, data, key,
                                                               message):
    path = write(tmp_path, digits_config(data=data))
    line = one_line_error(capsys, ["train", path])
    assert f"'{key}'" in line and message in line


def test_policies_on_a_domain_dataset_are_refused_before_reading_it():
    with pytest.raises(ConfigError, match=r"^data\.policy: per-sample policies are not supported for "):
        build_data({"name": "rotated_mnist", "root": "/nonexistent", "policy": {"name": "autoaugment"}})


def test_every_policy_runs_on_grey_and_colour_images():
    for name in ("randaugment", "trivialaugment", "autoaugment"):
        transform = sample_transform(validate_policy({"name": name}), None, (0.5,))
        for channels in (1, 3):
            images = torch.randint(0, 256, (6, channels, 8, 8), dtype=torch.uint8)
            out = apply_per_sample(transform, images, list(range(6)))
            assert out.shape == images.shape and out.dtype == torch.uint8
    autoaugment = sample_transform(validate_policy({"name": "autoaugment"}), None, (0.5,))
    assert isinstance(autoaugment, v2.AutoAugment) and autoaugment.policy == v2.AutoAugmentPolicy.IMAGENET
