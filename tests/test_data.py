"""The data layer on tiny files written in each on-disk layout, plus splits, sources and augmentation."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from kdlab.core.runtime import Runtime
from kdlab.data import DatasetNotFoundError, build_data, list_datasets
from kdlab.data import imagefolder as imagefolder_module
from kdlab.data.augment import CropFlip, crop_flip
from kdlab.data.build import loader_workers
from kdlab.data.cifar import load_cifar10, load_cifar100
from kdlab.data.digits import load_digits
from kdlab.data.errors import DatasetFormatError
from kdlab.data.imagefolder import load_imagefolder
from kdlab.data.loader_source import LoaderBatchSource
from kdlab.data.mnist import load_fashion_mnist, load_mnist
from kdlab.data.splits import split_train_val, take_subset
from kdlab.data.synthetic import load_synthetic
from kdlab.data.tensor_source import TensorBatchSource

# torchvision 0.29 deprecates torchvision.io image decoding in favour of TorchCodec (not installed here).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("KDLAB_CACHE", str(folder))
    return folder


def rng_images(n: int, c: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


# ---------------------------------------------------------------- CIFAR


def write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def write_cifar10(root: Path, per_batch: int = 4, bad_label: bool = False) -> Path:
    folder = root / "cifar-10-batches-py"
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = rng_images(per_batch, 3, 32, 32, i).reshape(per_batch, -1)
        labels = [(i + j) % 10 for j in range(per_batch)]
        if bad_label and name == "data_batch_3":
            labels[1] = 10
        write_pickle(folder / name, {b"data": data, b"labels": labels})
    write_pickle(folder / "batches.meta", {b"label_names": [f"c{k}".encode() for k in range(10)]})
    return folder


def test_cifar10_reads_python_batches_from_either_root(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    data = load_cifar10(tmp_path)
    assert data.train.images.shape == (20, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (4, 3, 32, 32)
    assert data.train.targets.dtype == torch.int64
    assert data.classes == [f"c{k}" for k in range(10)]
    expected = rng_images(4, 3, 32, 32, 1)
    assert torch.equal(data.train.images[4:8], torch.from_numpy(expected))
    assert data.train.targets[4:8].tolist() == [1, 2, 3, 4]
    same = load_cifar10(folder)
    assert torch.equal(same.train.images, data.train.images)


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    for i, name in enumerate(["train", "test"]):
        n = 6 if name == "train" else 3
        data = rng_images(n, 3, 32, 32, i).reshape(n, -1)
        write_pickle(
            folder / name, {"data": data, "fine_labels": [99 - j for j in range(n)], "coarse_labels": [0] * n}
        )
    write_pickle(
        folder / "meta", {"fine_label_names": [f"f{k}" for k in range(100)], "coarse_label_names": []}
    )
    data = load_cifar100(tmp_path)
    assert len(data.classes) == 100 and data.classes[99] == "f99"
    assert data.train.targets.tolist() == [99, 98, 97, 96, 95, 94]
    assert data.test.images.shape == (3, 3, 32, 32)


def test_cifar_label_out_of_range_names_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path, bad_label=True)
    with pytest.raises(DatasetFormatError, match=r"data_batch_3: label 10 .* outside 0\.\.9"):
        load_cifar10(tmp_path)


# ---------------------------------------------------------------- MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, gz: bool, n_train: int = 12, n_test: int = 5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        "train-images-idx3-ubyte": rng_images(n_train, 1, 28, 28, 0)[:, 0],
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng_images(n_test, 1, 28, 28, 1)[:, 0],
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10,
    }
    for name, array in parts.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("where", ["MNIST/raw", "raw", "."])
def test_mnist_idx_files_raw_or_gz_in_torchvision_locations(tmp_path: Path, gz: bool, where: str) -> None:
    write_mnist(tmp_path / where, gz)
    data = load_mnist(tmp_path)
    assert data.train.images.shape == (12, 1, 28, 28) and data.test.images.shape == (5, 1, 28, 28)
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(rng_images(12, 1, 28, 28, 0)[:, 0]))
    assert data.test.targets.tolist() == [0, 3, 6, 9, 2]
    assert data.classes[0] == "0 - zero"


def test_fashion_mnist_uses_its_own_folder_and_classes(tmp_path: Path) -> None:
    write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    data = load_fashion_mnist(tmp_path)
    assert data.classes[-1] == "Ankle boot" and len(data.train) == 12
    with pytest.raises(DatasetNotFoundError):
        load_mnist(tmp_path / "elsewhere")


def test_mnist_bad_header_names_the_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x05" + bytes(5))
    with pytest.raises(DatasetFormatError, match="t10k-labels-idx1-ubyte: idx element type"):
        load_mnist(tmp_path)


# ---------------------------------------------------------------- missing datasets


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("cifar10", "cifar-10-batches-py/{data_batch_1"),
        ("cifar100", "cifar-100-python/{train,test,meta}"),
        ("mnist", "train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST"),
        ("imagefolder", "ROOT/train/<class>/<image>"),
    ],
)
def test_missing_dataset_error_names_path_and_layout(tmp_path: Path, name: str, layout: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        build_data({"name": name, "root": root, "batch_size": 4}, Runtime())
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in message and str(root) in message and layout in message


# ---------------------------------------------------------------- ImageFolder


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0))).save(buffer, format="PNG")
    return buffer.getvalue()


def tree_files(size: tuple[int, int] = (8, 8), test_name: str = "test") -> dict[str, bytes]:
    """Relative path -> PNG bytes of a 3-class tree; pixel values encode (split, class, index)."""
    files = {}
    for split, count in (("train", 5), (test_name, 2)):
        for c, cls in enumerate(["cat", "dog", "emu"]):
            for i in range(count):
                seed = hash((split, c, i)) % 2**32
                files[f"{split}/{cls}/{i:03d}.png"] = png_bytes(rng_images(1, 3, *size, seed)[0])
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_tar(path: Path, files: dict[str, bytes], top: str = "tree") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for rel, data in sorted(files.items(), reverse=True):
            info = tarfile.TarInfo(f"{top}/{rel}" if top else rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_imagefolder_tree_and_tar_archive_give_the_same_tensors(tmp_path: Path) -> None:
    files = tree_files()
    folder = load_imagefolder(write_tree(tmp_path / "tree", files))
    archive = load_imagefolder(write_tar(tmp_path / "tree.tar.gz", files))
    assert folder.classes == archive.classes == ["cat", "dog", "emu"]
    assert folder.train.images.shape == (15, 3, 8, 8) and folder.test.images.shape == (6, 3, 8, 8)
    assert folder.train.targets.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    for a, b in [(folder.train, archive.train), (folder.test, archive.test)]:
        assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    first = np.asarray(Image.open(tmp_path / "tree" / "train" / "dog" / "000.png")).transpose(2, 0, 1)
    assert torch.equal(folder.train.images[5], torch.from_numpy(first.copy()))


def test_imagefolder_val_split_and_single_top_folder(tmp_path: Path) -> None:
    data = load_imagefolder(write_tree(tmp_path / "outer" / "inner", tree_files(test_name="val")).parent)
    assert len(data.test) == 6
    archive = load_imagefolder(write_tar(tmp_path / "flat.tar", tree_files(test_name="val"), top=""))
    assert torch.equal(archive.test.images, data.test.images)


def test_imagefolder_decode_cache_is_reused(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = write_tar(tmp_path / "tree.tar.gz", tree_files())
    first = load_imagefolder(archive)
    assert len(list(cache_dir.glob("imagefolder-*.pt"))) == 1
    assert not list(cache_dir.glob("*.tmp"))

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(imagefolder_module, "decode_many", no_decoding)
    second = load_imagefolder(archive)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.targets, second.test.targets)


def test_imagefolder_unreadable_image_names_the_file(tmp_path: Path) -> None:
    files = tree_files()
    files["train/dog/002.png"] = b"\x89PNG\r\n\x1a\n" + b"garbage" * 10
    with pytest.raises(DatasetFormatError, match=r"train/dog/002\.png"):
        load_imagefolder(write_tree(tmp_path / "tree", files))


def test_imagefolder_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    files = tree_files()
    files["train/emu/004.png"] = png_bytes(rng_images(1, 3, 10, 12, 5)[0])
    root = write_tree(tmp_path / "tree", files)
    with pytest.raises(DatasetFormatError, match=r"emu/004\.png: image is 10x12 .* set image_size"):
        load_imagefolder(root)
    resized = load_imagefolder(root, image_size=6)
    assert resized.train.images.shape == (15, 3, 6, 6)


def test_imagefolder_large_images_are_read_lazily(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "tree", tree_files(size=(80, 96)))
    data = load_imagefolder(root)
    assert not data.train.decoded and data.train.files[0].endswith("train/cat/000.png")
    bundle = build_data({"name": "imagefolder", "root": root, "batch_size": 4, "val_fraction": 0.0,
                         "image_size": 72, "num_workers": 0}, Runtime(device=torch.device("cpu"), seed=3))
    assert isinstance(bundle.train, LoaderBatchSource) and bundle.input_shape == (3, 72, 72)
    bundle.train.set_epoch(1)
    first = list(bundle.train)
    again = list(bundle.train)
    assert len(first) == len(bundle.train) == 3
    assert first[0].inputs.shape == (4, 3, 72, 72) and first[0].inputs.dtype == torch.float32
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.indices, b.indices)
    test_batches = list(bundle.test)
    assert sorted(torch.cat([b.indices for b in test_batches]).tolist()) == list(range(6))


def test_loader_source_is_deterministic_with_persistent_workers(tmp_path: Path) -> None:
    bundle = build_data({"name": "synthetic", "batch_size": 16, "device_resident": "off",
                         "augment": "standard",
                         "num_workers": 2, "image_size": 8, "options": {"num_train": 64, "num_test": 16}},
                        Runtime(device=torch.device("cpu"), seed=1))
    runs = []
    for epoch in (0, 1, 0):
        bundle.train.set_epoch(epoch)
        runs.append(torch.cat([b.inputs for b in bundle.train]))
    assert torch.equal(runs[0], runs[2]) and not torch.equal(runs[0], runs[1])


# ---------------------------------------------------------------- digits and synthetic


def test_digits_fixed_stratified_split() -> None:
    data = load_digits()
    assert data.train.images.shape == (1438, 1, 8, 8) and data.test.images.shape == (359, 1, 8, 8)
    assert int(data.train.images.max()) == 255 and data.train.images.dtype == torch.uint8
    counts = data.test.targets.bincount()
    assert counts.min() >= 35 and counts.max() <= 37
    assert torch.equal(load_digits().test.images, data.test.images)


def test_synthetic_is_deterministic_and_configurable() -> None:
    a = load_synthetic(num_classes=4, channels=1, num_train=40, num_test=8, image_size=12)
    b = load_synthetic(num_classes=4, channels=1, num_train=40, num_test=8, image_size=12)
    c = load_synthetic(num_classes=4, channels=1, num_train=40, num_test=8, image_size=12, data_seed=1)
    assert a.train.images.shape == (40, 1, 12, 12) and a.train.targets.bincount().tolist() == [10] * 4
    assert torch.equal(a.train.images, b.train.images) and not torch.equal(a.train.images, c.train.images)
    means = torch.stack([a.train.images[a.train.targets == k].float().mean(0) for k in range(4)])
    assert (means[0] - means[1]).abs().mean() > 10


def test_registry_lists_every_dataset() -> None:
    assert list_datasets() == sorted(
        ["cifar10", "cifar100", "mnist", "fashion_mnist", "imagefolder", "digits", "synthetic"]
        + ["pacs", "vlcs", "office_home", "terra_incognita", "domain_net", "rotated_mnist", "colored_mnist"]
    )


def test_dataset_defaults_for_normalization_and_augmentation(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar")
    write_mnist(tmp_path / "mnist", gz=False)
    options = {"batch_size": 4, "val_fraction": 0.0}
    cifar = build_data({"name": "cifar10", "root": tmp_path / "cifar", **options})
    assert cifar.mean == (0.4914, 0.4822, 0.4465) and cifar.train.augment == CropFlip(4, True)
    mnist = build_data({"name": "mnist", "root": tmp_path / "mnist", **options})
    assert mnist.std == (0.3081,) and mnist.train.augment is None and mnist.input_shape == (1, 28, 28)
    assert build_data({"name": "mnist", "root": tmp_path / "mnist", "augment": "standard",
                       **options}).train.augment == CropFlip(
        2, False
    )
    assert build_data({"name": "cifar10", "root": tmp_path / "cifar", "augment": "none",
                       **options}).train.augment is None
    resized = build_data({"name": "mnist", "root": tmp_path / "mnist", "image_size": 32, **options})
    assert resized.input_shape == (1, 32, 32) and next(iter(resized.test)).inputs.shape[1:] == (1, 32, 32)
    tree = write_tree(tmp_path / "tree", tree_files())
    folder = build_data({"name": "imagefolder", "root": tree, **options})
    assert folder.mean == (0.485, 0.456, 0.406) and folder.train.augment == CropFlip(1, True)


def test_large_images_cannot_be_device_resident(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "tree", tree_files(size=(80, 80)))
    with pytest.raises(ValueError, match="device_resident='on' needs decoded images"):
        build_data({"name": "imagefolder", "root": root, "batch_size": 4, "device_resident": "on"}, Runtime())


# ---------------------------------------------------------------- splits


def test_val_split_is_disjoint_stratified_and_deterministic() -> None:
    targets = torch.arange(1000) % 7
    train, val = split_train_val(targets, 0.2, seed=5)
    assert len(val) == 200 and len(train) == 800
    assert not set(train.tolist()) & set(val.tolist())
    counts = targets[val].bincount()
    assert counts.max() - counts.min() <= 1
    again_train, again_val = split_train_val(targets, 0.2, seed=5)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(val, split_train_val(targets, 0.2, seed=6)[1])
    assert split_train_val(targets, 0.0, seed=5)[1] is None


def test_subset_is_stratified_and_deterministic() -> None:
    targets = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    picked = take_subset(targets, 20, seed=0)
    assert targets[picked].bincount().tolist() == [12, 6, 2]
    assert torch.equal(picked, take_subset(targets, 20, seed=0))
    assert len(take_subset(targets, None, seed=0)) == 100


def test_build_data_val_comes_from_train_never_test() -> None:
    bundle = build_data({"name": "synthetic", "batch_size": 10, "val_fraction": 0.25, "subset": 50,
                         "image_size": 8, "options": {"num_train": 100, "num_test": 30}}, Runtime())
    assert bundle.val.num_samples == 25 and bundle.train.num_samples == 50 and bundle.test.num_samples == 30
    assert bundle.train_targets.bincount().tolist() == [5] * 10
    assert bundle.input_shape == (3, 8, 8) and bundle.num_classes == 10 and len(bundle.mean) == 3
    assert isinstance(bundle.train, TensorBatchSource)


# ---------------------------------------------------------------- batch sources and augmentation


def reference_crop_flip(image: torch.Tensor, top: int, left: int, flip: bool, padding: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    out = TF.crop(TF.pad(image, [padding] * 4, fill=0), top, left, h, w)
    return TF.horizontal_flip(out) if flip else out


def test_batch_crop_flip_matches_per_sample_reference() -> None:
    images = torch.from_numpy(rng_images(64, 3, 10, 9, 0))
    policy = CropFlip(padding=4, flip=True)
    top, left, flip = policy.draw(64, torch.Generator().manual_seed(0))
    assert top.min() == 0 and top.max() == 8 and flip.any() and not flip.all()
    out = crop_flip(images, top, left, flip, 4)
    expected = torch.stack(
        [reference_crop_flip(images[i], int(top[i]), int(left[i]), bool(flip[i]), 4) for i in range(64)]
    )
    assert out.dtype == torch.uint8 and torch.equal(out, expected)
    no_flip = CropFlip(padding=2, flip=False).draw(32, torch.Generator().manual_seed(1))[2]
    assert not no_flip.any()


def synthetic_source(**kwargs: object) -> TensorBatchSource:
    data = load_synthetic(num_train=103, num_test=10, image_size=8)
    options = {"batch_size": 8, "mean": (0.5,) * 3, "std": (0.25,) * 3, "device": "cpu", "shuffle": True}
    options.update(kwargs)
    return TensorBatchSource(data.train.images, data.train.targets, **options)


def test_tensor_source_is_deterministic_per_epoch_and_varies_across_epochs() -> None:
    source = synthetic_source(augment=CropFlip(2), drop_last=True, seed=7)
    assert len(source) == 12 and source.num_samples == 103

    def epoch(e: int) -> list:
        source.set_epoch(e)
        return list(source)

    first, other, again = epoch(0), epoch(1), epoch(0)
    assert len(first) == 12 and all(len(b.indices) == 8 for b in first)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(first[0].indices, other[0].indices)
    low, high = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    inputs = torch.cat([b.inputs for b in first])
    assert inputs.min() >= low - 1e-6 and inputs.max() <= high + 1e-6
    seen = torch.cat([b.indices for b in first])
    assert len(set(seen.tolist())) == 96


@pytest.mark.parametrize("drop_last", [True, False])
def test_two_ranks_together_yield_the_single_process_batch(drop_last: bool) -> None:
    single = synthetic_source(augment=CropFlip(2), drop_last=drop_last, seed=3)
    ranks = [
        synthetic_source(augment=CropFlip(2), drop_last=drop_last, seed=3, rank=r, world_size=2)
        for r in (0, 1)
    ]
    for source in (single, *ranks):
        source.set_epoch(4)
    per_rank = [list(r) for r in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(single)
    batches = list(single)
    for step, whole in enumerate(batches):
        parts = [p[step] for p in per_rank]
        inputs = torch.cat([p.inputs for p in parts])
        indices = torch.cat([p.indices for p in parts])
        if step == len(batches) - 1 and not drop_last:
            # 103 samples: the last single-process batch has 7, the ranks add one padding duplicate.
            assert len(indices) == 8 and set(indices.tolist()) >= set(whole.indices.tolist())
            continue
        assert all(len(p.indices) == 4 for p in parts)
        key, ref = indices.argsort(), whole.indices.argsort()
        assert torch.equal(indices[key], whole.indices[ref])
        assert torch.equal(inputs[key], whole.inputs[ref])


def test_eval_shards_cover_every_sample_once() -> None:
    sources = [synthetic_source(shuffle=False, rank=r, world_size=2, batch_size=10) for r in (0, 1)]
    indices = [torch.cat([b.indices for b in s]) for s in sources]
    assert len(indices[0]) == 52 and len(indices[1]) == 51
    assert sorted(torch.cat(indices).tolist()) == list(range(103))


def test_tensor_and_loader_paths_visit_the_same_batches() -> None:
    options = {"batch_size": 16, "augment": "none", "image_size": 8, "num_workers": 0, "val_fraction": 0.0,
               "options": {"num_train": 80, "num_test": 8}}
    fast = build_data({"name": "synthetic", "device_resident": "on", **options}, Runtime(seed=2))
    slow = build_data({"name": "synthetic", "device_resident": "off", **options}, Runtime(seed=2))
    assert isinstance(slow.train, LoaderBatchSource)
    for a, b in zip(fast.train, slow.train, strict=True):
        assert torch.equal(a.indices, b.indices) and torch.allclose(a.inputs, b.inputs)


def test_auto_loader_workers_share_the_node_cores_among_ranks(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loader_workers("auto") == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_workers("auto") == 8
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_workers("auto") == 1
    assert loader_workers(3) == 3
