"""A user's own Dataset / DataLoader / folder through kdlab.distill, and runs made from modules read back."""

import json

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import kdlab
from kdlab.cli.main import main
from kdlab.config.schema import DataConfig
from kdlab.core.checkpoint import load
from kdlab.core.errors import UserError
from kdlab.data import StreamBatchSource, UserData, build_user_data
from kdlab.data.tensor_source import TensorBatchSource
from kdlab.models import build_model
from kdlab.models.identify import registry_name
from tests.test_train import Interrupt, assert_bitwise_equal

FAST = {"train.precision": "fp32", "train.progress": False, "train.device": "cpu", "data.batch_size": 16,
        "data.num_workers": 0}


def tensors(n: int = 120, classes: int = 3, seed: int = 0, size: int = 12):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.arange(n) % classes


class FloatDicts(Dataset):
    """Float images in 0..1 from its own random transform, as dict samples."""

    def __init__(self, images, labels, scale: float = 1.0):
        self.images, self.labels, self.scale = images, labels, scale
        self.transform = torchvision.transforms.v2.RandomHorizontalFlip()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.transform(self.images[index]).float() / 255 * self.scale
        return {"image": image, "label": int(self.labels[index])}


def bundle(train, test, val=None, classes=None, **data):
    config = DataConfig(name="python:x", batch_size=16, num_workers=0, **data)
    return build_user_data(UserData(train, test, val, classes), config)


def test_small_uint8_datasets_take_the_device_resident_path_with_a_stratified_validation_carve():
    images, labels = tensors()
    data = bundle(TensorDataset(images[:90], labels[:90]), TensorDataset(images[90:], labels[90:]))
    assert isinstance(data.train, TensorBatchSource) and isinstance(data.test, TensorBatchSource)
    assert (data.train.num_samples, data.val.num_samples, data.test.num_samples) == (81, 9, 30)
    assert torch.bincount(data.val.targets).tolist() == [3, 3, 3]
    assert data.num_classes == 3 and data.input_shape == (3, 12, 12)
    given_val = bundle(TensorDataset(images[:90], labels[:90]), TensorDataset(images[90:], labels[90:]),
                       val=TensorDataset(images[:6], labels[:6]))
    assert (given_val.train.num_samples, given_val.val.num_samples) == (90, 6)


def test_datasets_with_their_own_transform_stream_and_repeat_their_random_draws_per_epoch():
    images, labels = tensors()
    data = bundle(FloatDicts(images[:90], labels[:90]), FloatDicts(images[90:], labels[90:]), classes=3)
    assert isinstance(data.train, StreamBatchSource) and data.train.indexed
    assert data.val.num_samples == 9

    def epoch(number):
        data.train.set_epoch(number)
        return [batch.inputs for batch in data.train]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    raw = torch.cat(first) * std + mean
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_a_dataloader_is_read_as_given():
    images, labels = tensors()
    loader = DataLoader(TensorDataset(images[:96], labels[:96]), batch_size=24, shuffle=True)
    data = bundle(loader, TensorDataset(images[96:], labels[96:]), classes=3)
    assert isinstance(data.train, StreamBatchSource) and not data.train.indexed
    assert len(data.train) == 4 and data.val is None
    batch = next(iter(data.train))
    assert batch.inputs.shape == (24, 3, 12, 12) and batch.inputs.dtype == torch.float32


@pytest.mark.parametrize(("dataset", "expected"), [
    (FloatDicts(*tensors(), scale=3.0), "look normalized already"),
    (TensorDataset(tensors()[0], tensors()[1] + 5), "label"),
])
def test_bad_samples_are_one_line(dataset, expected):
    images, labels = tensors(30)
    with pytest.raises(UserError, match=expected) as caught:
        data = bundle(dataset, TensorDataset(images, labels), classes=3, device_resident="off")
        for _ in data.train:
            pass
    assert "\n" not in str(caught.value)


def test_an_imagefolder_per_split_is_decoded_up_front(tmp_path):
    for split in ("train", "test"):
        for index, name in enumerate(["cat", "dog"]):
            (tmp_path / split / name).mkdir(parents=True)
            for k in range(8):
                image = Image.new("RGB", (10, 10), (40 * index + k, 3 * k, 100))
                image.save(tmp_path / split / name / f"{k}.png")
    data = bundle(tmp_path / "train", str(tmp_path / "test"), val_fraction=0.0)
    assert isinstance(data.train, TensorBatchSource)
    assert data.classes == ["cat", "dog"] and data.input_shape == (3, 10, 10)
    run = kdlab.distill(None, "cnn_tiny", tmp_path, method="ce", steps=2, out_dir=tmp_path / "runs",
                        name="folder", overrides={**FAST, "data.batch_size": 4})
    assert kdlab.load_config(run.run_dir / "config.yaml").data.name == "imagefolder"


def test_distill_without_a_test_split_is_one_line():
    images, labels = tensors()
    with pytest.raises(UserError, match="test: give the held-out split"):
        kdlab.distill(None, "cnn_tiny", TensorDataset(images, labels), method="ce", steps=1)


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def test_modules_from_the_zoos_are_named_and_others_are_not():
    shape = (3, 16, 16)
    assert registry_name(torchvision.models.resnet18(num_classes=5), 5, shape) == "torchvision:resnet18"
    assert registry_name(build_model("resnet8", 5), 5, shape) == "resnet8"
    dilated = torchvision.models.resnet50(num_classes=5, replace_stride_with_dilation=[False, True, True])
    assert registry_name(dilated, 5, shape) is None
    assert registry_name(Plain(), 3, shape) is None


def test_a_run_of_user_data_and_a_module_evaluates_and_exports(tmp_path, capsys):
    images, labels = tensors()
    train, test = TensorDataset(images[:90], labels[:90]), TensorDataset(images[90:], labels[90:])
    plain = kdlab.distill(None, Plain(), train, test=test, method="ce", steps=4, out_dir=tmp_path,
                          name="plain", overrides=FAST)
    with pytest.raises(UserError, match=r"load_run\(RUN_DIR, student=module\)"):
        kdlab.load_run(plain.run_dir)
    loaded = kdlab.load_run(plain.run_dir, student=Plain())
    assert loaded.evaluate(test) == pytest.approx(plain.summary["test_selected"])
    assert loaded.predict(images[:5]).shape == (5, 3)

    named = kdlab.distill(None, build_model("resnet8", 3), train, test=test, method="ce", steps=2,
                          out_dir=tmp_path, name="named", overrides=FAST)
    assert main(["eval", str(named.run_dir)]) == 2
    assert "given from Python" in capsys.readouterr().err
    assert main(["export", str(named.run_dir), "--out", str(tmp_path / "exp"), "--format", "state_dict"]) == 0
    report = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert report["model"] == "resnet8" and report["check_inputs"] == "random"
    assert report["input_shape"] == [3, 12, 12] and report["num_classes"] == 3


def test_methods_that_key_state_by_sample_refuse_a_dataloader():
    images, labels = tensors()
    loader = DataLoader(TensorDataset(images[:96], labels[:96]), batch_size=16, shuffle=True)
    with pytest.raises(UserError, match="keeps state per training sample") as caught:
        kdlab.distill(None, "cnn_tiny", loader, test=TensorDataset(images[96:], labels[96:]), classes=3,
                      method="ipwd_self", steps=1, overrides={**FAST, "method.params.epochs": 1})
    assert "\n" not in str(caught.value)


def test_a_streamed_dataset_with_random_transforms_resumes_bit_for_bit(tmp_path):
    images, labels = tensors()
    user = UserData(FloatDicts(images[:90], labels[:90]), FloatDicts(images[90:], labels[90:]), classes=3)

    def config(name):
        return kdlab.load_config(base={"data": {"name": "python", "batch_size": 16, "num_workers": 0},
                                       "student": {"name": "cnn_tiny"}, "method": {"name": "ce"},
                                       "train": {"steps": 9, "epochs": None, "eval_every": 3,
                                                 "precision": "fp32", "progress": False, "device": "cpu"},
                                       "out_dir": str(tmp_path), "name": name})

    full = kdlab.train(config("full"), user_data=user)
    with pytest.raises(KeyboardInterrupt):
        kdlab.train(config("cut"), user_data=user, callbacks=[Interrupt(8)])
    assert load(tmp_path / "cut" / "last.pt")["step"] == 6
    kdlab.train(config("cut"), user_data=user, resume=tmp_path / "cut")
    assert_bitwise_equal(load(full.run_dir / "last.pt")["model"], load(tmp_path / "cut" / "last.pt")["model"])


class RandomInside(Dataset):
    """Random shifts drawn in ``__getitem__``, with no ``transform`` attribute to tell."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        shift = int(torch.randint(0, 12, ()))
        return self.images[index].roll(shift, dims=-1), int(self.labels[index])


def test_random_samples_are_never_frozen_into_the_device_resident_path():
    images, labels = tensors()
    test = TensorDataset(images[90:], labels[90:])
    random_inside = bundle(RandomInside(images[:90], labels[:90]), test, classes=3)
    wrapped = bundle(torch.utils.data.Subset(FloatDicts(images, labels), range(90)), test, classes=3)
    assert isinstance(random_inside.train, StreamBatchSource) and isinstance(wrapped.train, StreamBatchSource)


def test_a_given_teacher_module_is_left_as_it_was(tmp_path):
    images, labels = tensors()
    teacher = build_model("resnet8", 3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    kdlab.distill(teacher, "cnn_tiny", TensorDataset(images[:90], labels[:90]),
                  test=TensorDataset(images[90:], labels[90:]), steps=2, out_dir=tmp_path, overrides=FAST)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert all(type(m) is nn.BatchNorm2d for m in teacher.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
