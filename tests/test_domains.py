from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdlab.core.errors import ConfigError
from kdlab.data import DatasetNotFoundError, build_data
from kdlab.data.domains import DOMAIN_SETS, BalancedPlan, read_domains, split_domain
from kdlab.data.domains.mnist import rotate
from tests.test_data import write_mnist

FOLDER_SETS = ["pacs", "vlcs", "office_home", "terra_incognita", "domain_net"]
PER_CLASS = 5


def write_domain_folders(root: Path, name: str, skip: str | None = None) -> None:
    spec = DOMAIN_SETS.get(name)
    rng = np.random.default_rng(0)
    for d, domain in enumerate(spec.domain_folders):
        if domain == skip:
            continue
        for c, cls in enumerate(("bird", "cat", "dog")):
            folder = root / spec.folder / domain / cls
            folder.mkdir(parents=True)
            for i in range(PER_CLASS + d):  # domains of different sizes
                pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{c}_{i}.png")


def options(**extra):
    return {"batch_size": 6, "eval_batch_size": 8, "val_fraction": 0.2, "num_workers": 0, **extra}


def domain_of(index: int, sizes: list[int]) -> int:
    return int(np.searchsorted(np.cumsum(sizes), index, side="right"))


@pytest.mark.parametrize("name", FOLDER_SETS)
def test_each_dg_layout_loads_from_tiny_folders(tmp_path, name):
    write_domain_folders(tmp_path, name)
    spec = DOMAIN_SETS.get(name)
    n = len(spec.domains)
    bundle = build_data({"name": name, "root": tmp_path, "image_size": 8,
                         "options": {"test_domains": [spec.domains[-1]]}, **options(batch_size=2 * (n - 1))})
    assert bundle.classes == ["bird", "cat", "dog"] and bundle.input_shape == (3, 8, 8)
    sizes = [3 * (PER_CLASS + d) for d in range(n)]
    in_sizes = [s - round(0.2 * s) for s in sizes]
    assert bundle.train.num_samples == sum(in_sizes[:-1])
    assert bundle.val.num_samples == sum(round(0.2 * s) for s in sizes[:-1])
    assert bundle.test.num_samples == in_sizes[-1]
    for batch in bundle.train:
        counts = np.bincount([domain_of(int(i), in_sizes[:-1]) for i in batch.indices], minlength=n - 1)
        assert counts.tolist() == [2] * (n - 1)


def test_lazy_folder_domains_stream_through_workers_with_domainbed_transforms(tmp_path):
    write_domain_folders(tmp_path, "pacs")
    bundle = build_data({"name": "pacs", "root": tmp_path / "PACS", "image_size": 72,
                         "options": {"test_domains": ["S"]}, **options(device_resident="auto")})
    assert bundle.input_shape == (3, 72, 72) and bundle.train.loader is not None
    bundle.train.set_epoch(0)
    batches = list(bundle.train)
    assert len(batches) == len(bundle.train) and batches[0].inputs.shape == (6, 3, 72, 72)
    bundle.train.set_epoch(0)
    again = list(bundle.train)
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(batches, again, strict=True))
    assert next(iter(bundle.test)).inputs.shape[1:] == (3, 72, 72)


def test_missing_domain_folder_is_one_clear_error(tmp_path):
    write_domain_folders(tmp_path, "office_home", skip="Real World")
    with pytest.raises(DatasetNotFoundError, match=r"OfficeHome: domain folder 'Real World' not found in .*"
                                                   r"office_home.*\{Art,Clipart,Product,Real World\}"):
        build_data({"name": "office_home", "root": tmp_path, **options()})
    with pytest.raises(DatasetNotFoundError, match="VLCS: folder .*VLCS not found"):
        build_data({"name": "vlcs", "root": tmp_path / "nothing", **options()})


def test_domain_splits_are_deterministic_disjoint_and_seeded():
    targets = torch.arange(100) % 7
    a, b = split_domain(targets, 0.2, 3, 1), split_domain(targets, 0.2, 3, 1)
    assert torch.equal(a.inside, b.inside) and torch.equal(a.out, b.out)
    assert len(a.out) == 20 and len(a.inside) == 80
    assert not set(a.inside.tolist()) & set(a.out.tolist())
    assert sorted(a.inside.tolist() + a.out.tolist()) == list(range(100))
    assert not torch.equal(split_domain(targets, 0.2, 4, 1).out, a.out)
    assert not torch.equal(split_domain(targets, 0.2, 3, 2).out, a.out)


def test_balanced_plan_is_a_pure_function_of_seed_and_epoch_and_shards_exactly():
    plan = BalancedPlan([10, 7, 12], batch_size=6, seed=5)
    assert len(plan) == 3  # min(10, 7, 12) // 2
    first, _ = plan.epoch(0)
    assert all(torch.equal(x, y) for x, y in zip(first, plan.epoch(0)[0], strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(first, plan.epoch(1)[0], strict=True))
    seen = torch.cat(first)
    assert len(set(seen.tolist())) == len(seen)  # without replacement within an epoch
    for batch in first:
        assert [domain_of(int(i), [10, 7, 12]) for i in batch] == [0, 0, 1, 1, 2, 2]
    ranks = [BalancedPlan([10, 7, 12], 6, 5, rank=r, world_size=2).epoch(0)[0] for r in range(2)]
    for step, batch in enumerate(first):
        assert sorted(torch.cat([ranks[0][step], ranks[1][step]]).tolist()) == sorted(batch.tolist())
    with pytest.raises(ValueError, match="multiple of the 3 source domains"):
        BalancedPlan([10, 7, 12], batch_size=7, seed=0)


@pytest.fixture
def mnist_root(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", gz=False, n_train=60, n_test=12)
    return tmp_path


def test_rotated_mnist_pools_shuffles_and_rotates_each_domain(mnist_root):
    parts, classes = read_domains("rotated_mnist", mnist_root, image_size=None, data_seed=0, domain_size=None)
    assert len(parts) == 6 and [len(p) for p in parts] == [12] * 6 and len(classes) == 10
    again, _ = read_domains("rotated_mnist", mnist_root, image_size=None, data_seed=0, domain_size=None)
    assert torch.equal(parts[3].images, again[3].images)
    digit = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    digit[0, 0, 2:26, 13:15] = 255  # a vertical bar
    turned = rotate(digit, 90)[0, 0]
    assert turned[13:15, 2:26].float().mean() > 200 and turned[2:26, 13:15].float().mean() < 100
    bundle = build_data({"name": "rotated_mnist", "root": mnist_root, "options": {"test_domains": ["75"]},
                         **options(batch_size=5)})
    assert bundle.input_shape == (1, 28, 28) and bundle.mean == (0.0,)
    assert bundle.test.num_samples == 12 - round(0.2 * 12)


def test_colored_mnist_binary_labels_and_colour_channels(mnist_root):
    parts, classes = read_domains("colored_mnist", mnist_root, image_size=None, data_seed=0, domain_size=None)
    assert classes == ["0", "1"] and len(parts) == 3
    for part in parts:
        assert part.images.shape[1] == 2 and set(part.targets.tolist()) <= {0, 1}
        lit = part.images.flatten(2).amax(2) > 0
        assert (lit.sum(1) <= 1).all()  # the digit is drawn in one channel only


def test_bad_domain_options_are_named(mnist_root):
    with pytest.raises(ValueError, match="no domain 'ninety'"):
        build_data({"name": "rotated_mnist", "root": mnist_root, "options": {"test_domains": ["ninety"]},
                    **options(batch_size=5)})
    with pytest.raises(ValueError, match="every domain is a test domain"):
        build_data({"name": "colored_mnist", "root": mnist_root, "options": {"test_domains": [0, 1, 2]},
                    **options(batch_size=4)})
    with pytest.raises(ValueError, match="domain_size"):
        build_data({"name": "rotated_mnist", "root": mnist_root, "subset": 10, **options(batch_size=5)})
    with pytest.raises(ValueError, match="label noise and class imbalance are not supported"):
        build_data({"name": "rotated_mnist", "root": mnist_root, "noise": {"rate": 0.2},
                    **options(batch_size=5)})


def test_decoded_folder_domains_are_augmented_on_the_device_as_configured(tmp_path):
    write_domain_folders(tmp_path, "pacs")

    def first_epoch(augment):
        bundle = build_data({"name": "pacs", "root": tmp_path / "PACS", "image_size": 16, "augment": augment,
                             "options": {"test_domains": ["S"]}, **options()})
        bundle.train.set_epoch(0)
        return list(bundle.train)

    plain, augmented, again = first_epoch("none"), first_epoch("default"), first_epoch("default")
    assert all(torch.equal(a.indices, b.indices) for a, b in zip(plain, augmented, strict=True))
    assert not all(torch.equal(a.inputs, b.inputs) for a, b in zip(plain, augmented, strict=True))
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(augmented, again, strict=True))


def test_mnist_domains_refuse_standard_augmentation(mnist_root):
    with pytest.raises(ConfigError, match="data.augment: RotatedMNIST is not augmented"):
        build_data({"name": "rotated_mnist", "root": mnist_root, "augment": "standard",
                    "options": {"test_domains": ["75"]}, **options(batch_size=5)})
