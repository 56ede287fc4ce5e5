
"""The model zoo: reference parameter counts, stage presets, torchvision/timm building, weight files."""

from __future__ import annotations

import sys
import time
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from kdlab.assembly.networks import trained_normalization
from kdlab.config.schema import ModelConfig
from kdlab.core.registry import UnknownNameError
from kdlab.models import (
    FeatureTaps,
    StagePreset,
    TapPoint,
    build_model,
    list_models,
    stage_preset,
)
from kdlab.models.cifar.init import he_normal_init
from kdlab.models.detect import detect_stage_preset
from kdlab.models.registry import MODELS
from kdlab.models.surgery import adapt_input_conv

# Parameter counts of HobbitLong/RepDistiller's models/ (model_dict names in comments) built with
# num_classes=100, counted by running the reference code: sum(p.numel() for p in m.parameters()).
REFERENCE_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,  # vgg8_bn
    "vgg11": 9_277_284,  # vgg11_bn
    "vgg13": 9_462_180,  # vgg13_bn
    "vgg16": 14_774_436,  # vgg16_bn
    "vgg19": 20_086_692,  # vgg19_bn
    "mobilenetv2": 812_836,  # mobile_half
    "shufflenetv1": 949_258,  # ShuffleV1
    "shufflenetv2": 1_355_528,  # ShuffleV2
}
SMALL_CNNS = ("cnn_small", "cnn_tiny")
DOMAINBED_CNNS = ("mnist_cnn", "mnist_cnn_small")
# Zoo models outside RepDistiller's model_dict, counted with our code (num_classes=100); WRN-28-10 with
# 10 classes has 36,479,194, the count usually quoted for it.
EXTRA_PARAMS = {"wrn_28_4": 5_872_180, "wrn_28_10": 36_536_884}
# Families whose stage output is exactly ReLU(pre-activation tap).
RELU_OF_PREACT = {"cifar_resnet", "cifar_vgg", "cifar_shufflenetv1", "small_cnn"}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def rgb_kwargs(name: str) -> dict:
    return {"in_channels": 3} if name in SMALL_CNNS + DOMAINBED_CNNS else {}


def test_zoo_is_the_reference_zoo_plus_small_cnns() -> None:
    expected = set(REFERENCE_PARAMS) | set(SMALL_CNNS) | set(DOMAINBED_CNNS) | set(EXTRA_PARAMS)
    assert set(list_models()) == expected


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS | EXTRA_PARAMS))
def test_parameter_count_equals_reference(name: str) -> None:
    assert count(build_model(name, num_classes=100)) == (REFERENCE_PARAMS | EXTRA_PARAMS)[name]


@pytest.mark.parametrize("name", list_models())
def test_forward_and_stage_taps(name: str) -> None:
    model = build_model(name, num_classes=7, **rgb_kwargs(name)).eval()
    preset = stage_preset(name)
    preact = preset.preact_stages or ()
    extra = [preset.stem] if preset.stem else []
    taps = [*preset.stages, *preact, *extra, preset.embedding]
    with torch.no_grad(), FeatureTaps(model, taps) as recorder:
        logits = model(torch.randn(2, 3, 32, 32))
        features = recorder.features
    assert logits.shape == (2, 7)
    n = len(preset.stages)
    stages = features[:n]
    assert 3 <= n <= 4
    sizes = [f.shape[-1] for f in stages]
    assert all(f.dim() == 4 for f in stages)
    if MODELS.get(name).family == "domainbed_cnn":  # DomainBed's MNIST CNN downsamples once only
        assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1], sizes
    else:
        assert sizes == sorted(set(sizes), reverse=True), sizes
    for i, pre in enumerate(features[n : n + len(preact)]):
        assert pre.shape == stages[i].shape
        if MODELS.get(name).family in RELU_OF_PREACT:
            assert torch.equal(torch.relu(pre), stages[i])
    embedding = features[-1]
    classifier = dict(model.named_modules())[preset.classifier]
    assert isinstance(classifier, nn.Linear)
    assert embedding.shape == (2, classifier.in_features)


@pytest.mark.parametrize("name", SMALL_CNNS)
def test_small_cnn_on_digits_and_mnist(name: str) -> None:
    model = build_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
        assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    plain = build_model(name, num_classes=10, batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    with FeatureTaps(plain, stage_preset(name).stage_taps(preact=True)) as recorder:
        plain(torch.randn(2, 1, 8, 8))
        assert [f.shape[-1] for f in recorder.features] == [8, 4, 2]
    assert count(build_model("cnn_small", 10)) > 20 * count(build_model("cnn_tiny", 10))


def test_torchvision_resnet18_taps_on_cifar_input() -> None:
    model = build_model("torchvision:resnet18", num_classes=10).eval()
    preset = stage_preset("torchvision:resnet18", model)
    assert [t.path for t in preset.stages] == ["layer1", "layer2", "layer3", "layer4"]
    assert preset.preact_stages is None
    with torch.no_grad(), FeatureTaps(model, [*preset.stages, preset.embedding]) as recorder:
        logits = model(torch.randn(2, 3, 32, 32))
        shapes = [tuple(f.shape[1:]) for f in recorder.features]
    assert logits.shape == (2, 10)
    assert shapes == [(64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1), (512,)]


def test_torchvision_pretrained_reads_the_hub_cache_and_resizes_head(monkeypatch, tmp_path) -> None:
    """Weights made here stand in the hub cache where torchvision downloads them; nothing is fetched."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    torch.manual_seed(0)
    made = torchvision.models.resnet18(weights=None)
    (tmp_path / "checkpoints").mkdir()
    torch.save(made.state_dict(), tmp_path / "checkpoints" / weights.url.rsplit("/", 1)[-1])
    model = build_model("torchvision:resnet18", num_classes=10, pretrained=True)
    assert torch.equal(model.conv1.weight, made.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, made.layer4[1].bn2.running_var)
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 10


def test_torchvision_pretrained_offline_names_the_file_and_where_to_put_it(monkeypatch, tmp_path) -> None:
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(ValueError, match="could not be fetched") as info:
        build_model("torchvision:resnet18", num_classes=10, pretrained=True)
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    message = str(info.value)
    assert url in message and str(tmp_path / "checkpoints" / url.rsplit("/", 1)[-1]) in message


def test_torchvision_head_detected_for_mobilenet() -> None:
    model = build_model("torchvision:mobilenet_v3_small", num_classes=5).eval()
    preset = stage_preset("torchvision:mobilenet_v3_small", model)
    assert preset.classifier == "classifier.3"
    assert [t.path for t in preset.stages] == ["features.1", "features.3", "features.8", "features.12"]
    assert preset.stem == TapPoint("features.0")
    with torch.no_grad(), FeatureTaps(model, [*preset.stages, preset.embedding]) as recorder:
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
        sizes = [f.shape[-1] for f in recorder.features[:-1]]
    assert sizes == [16, 8, 4, 2]


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4", "vgg13", "cnn_tiny"])
def test_detector_agrees_with_hand_written_presets(name: str) -> None:
    detected = detect_stage_preset(build_model(name, 10), input_size=32)
    assert detected.stages == stage_preset(name).stages
    assert detected.classifier == stage_preset(name).classifier


def test_torchvision_input_channels() -> None:
    model = build_model("torchvision:resnet18", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_adapted_pretrained_conv_keeps_response_to_constant_image() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    image = torch.ones(1, 3, 5, 5)
    before = model(image)
    adapt_input_conv(model, 1, keep_weights=True)
    assert model[0].in_channels == 1
    torch.testing.assert_close(model(image[:, :1]), before)


@pytest.mark.parametrize("wrap", ["plain", "checkpoint", "ddp"])
def test_load_state_dict_file_then_resize_head(tmp_path, wrap: str) -> None:
    source = build_model("resnet8", num_classes=100)
    state = source.state_dict()
    if wrap == "checkpoint":
        state = {"epoch": 3, "model": state}
    elif wrap == "ddp":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "resnet8.pt"
    torch.save(state, path)
    same = build_model("resnet8", num_classes=100, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(same(x), source.eval()(x), rtol=0, atol=0)
    resized = build_model("resnet8", num_classes=10, pretrained=path)
    assert resized.fc.out_features == 10
    loaded = resized.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items() if not k.startswith("fc."))


def test_load_torchvision_state_dict_file(tmp_path) -> None:
    source = build_model("torchvision:resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    model = build_model("torchvision:resnet18", num_classes=10, pretrained=path)
    assert model.fc.out_features == 10
    torch.testing.assert_close(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_weights_of_another_architecture_are_refused(tmp_path) -> None:
    path = tmp_path / "resnet8.pt"
    torch.save(build_model("resnet8", num_classes=100).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        build_model("resnet14", num_classes=100, pretrained=path)


def test_unknown_names_give_a_hint() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'resnet8x4'"):
        build_model("resnet8x5", num_classes=10)
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        build_model("torchvision:resnet1", num_classes=10)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'wrn_40_2'.*dropout"):
        build_model("wrn_40_2", num_classes=10, dropout=0.3)
    with pytest.raises(ValueError, match="'resnet18'.*colour"):
        build_model("torchvision:resnet18", num_classes=10, colour=1)
    with pytest.raises(ValueError, match="no downloadable weights"):
        build_model("resnet20", num_classes=10, pretrained=True)


def test_timm_missing_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ValueError, match=r"pip install kdlab\[timm\]"):
        build_model("timm:resnet18", num_classes=10)


def test_preset_embedding_is_classifier_input() -> None:
    preset = stage_preset("resnet8x4")
    assert isinstance(preset, StagePreset)
    assert preset.embedding == TapPoint("fc", "input")
    assert preset.stage_taps(preact=True)[0] == TapPoint("layer1.0.relu_out", "input")


@pytest.mark.parametrize("linear", ["default", "zero_bias", "normal"])
def test_he_normal_init_draws_fan_out_convolutions_and_the_linear_policy(linear):
    model = nn.Sequential(nn.Conv2d(8, 256, 3, bias=True), nn.BatchNorm2d(256), nn.Linear(400, 300))
    he_normal_init(model, linear)
    conv, bn, fc = model
    assert conv.weight.std().item() == pytest.approx((2 / (3 * 3 * 256)) ** 0.5, rel=0.02)
    assert not conv.bias.any() and not bn.bias.any() and bool((bn.weight == 1).all())
    if linear == "normal":
        assert fc.weight.std().item() == pytest.approx(0.01, rel=0.02)
    else:
        assert fc.weight.std().item() == pytest.approx((1 / (3 * 400)) ** 0.5, rel=0.02)  # U(+-1/sqrt(400))
    assert fc.bias.any() == (linear == "default")


def test_timm_pretrained_offline_is_one_line_without_retries(monkeypatch, tmp_path) -> None:
    pytest.importorskip("timm")
    hub = pytest.importorskip("huggingface_hub")

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(hub, "hf_hub_download", no_network)
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda repo, filename: None)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"not on this machine \(kdlab downloads nothing\): put the file "
                                         r"model.safetensors of Hugging Face repository 'timm/resnet18"):
        build_model("timm:resnet18", num_classes=10, pretrained=True)
    assert time.perf_counter() - started < 5


def test_timm_pretrained_weights_in_the_local_cache_are_used(monkeypatch, tmp_path) -> None:
    timm = pytest.importorskip("timm")
    hub = pytest.importorskip("huggingface_hub")
    reference = timm.create_model("resnet18", num_classes=1000)
    weights = tmp_path / "pytorch_model.bin"
    torch.save(reference.state_dict(), weights)
    monkeypatch.setattr(hub, "try_to_load_from_cache",
                        lambda repo, filename: str(weights) if filename == "pytorch_model.bin" else None)
    model = build_model("timm:resnet18", num_classes=10, pretrained=True)
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 10


def test_pretrained_teachers_bring_their_weights_statistics() -> None:
    pytest.importorskip("timm")
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    for name in ("torchvision:resnet18", "timm:resnet18"):
        mean, std = trained_normalization(ModelConfig(name=name, pretrained=True), "teacher")
        assert mean == pytest.approx(imagenet[0]) and std == pytest.approx(imagenet[1])
    assert trained_normalization(ModelConfig(name="timm:resnet18"), "teacher") is None
