"""Feature methods: FitNet, AT, FSP, NST, AB, FT and their shared connectors (losses against hand-computed
values and the reference conventions, gradients, stages, and a few training steps on digits, on same-
and cross-architecture CIFAR-sized pairs and on a stock torchvision pair)."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.config import ConfigError, validate
from kdlab.config.schema import MethodConfig
from kdlab.data.batch import Batch
from kdlab.engine import Callback
from kdlab.methods import DistillContext, build_distiller
from kdlab.methods.ab import ab_layer_loss, ab_loss, default_layer_weights
from kdlab.methods.at import at_layer_loss, at_loss
from kdlab.methods.base import weighted_sum
from kdlab.methods.connectors import ConvRegressor, align_spatial
from kdlab.methods.fitnet import hint_loss
from kdlab.methods.fsp import fsp_loss, fsp_matrix
from kdlab.methods.ft import factor_transfer_loss, reconstruction_loss
from kdlab.methods.nst import nst_layer_loss, nst_loss
from kdlab.models import build_model
from kdlab.run import train

METHODS = ("fitnet", "at", "fsp", "nst", "ab", "ft")
DIGITS = DistillContext(num_classes=10, input_shape=(1, 8, 8), num_train_samples=100,
                        student_name="cnn_tiny", teacher_name="cnn_small")


def maps(*shape, seed=0):
    torch.manual_seed(seed)
    return torch.randn(*shape)


# ------------------------------------------------------------------------------------------ connectors
@pytest.mark.parametrize(("student", "teacher", "layer", "out"), [
    ((8, 16, 16), (32, 8, 8), torch.nn.Conv2d, (32, 8, 8)),           # 2x larger: 3x3 stride 2
    ((8, 8, 8), (32, 16, 16), torch.nn.ConvTranspose2d, (32, 16, 16)),  # half: 4x4 transposed
    ((8, 7, 7), (32, 4, 4), torch.nn.Conv2d, (32, 4, 4)),              # larger: kernel 1 + 7 - 4
    ((8, 4, 4), (32, 4, 4), torch.nn.Conv2d, (32, 4, 4)),              # equal: 1x1
    ((8, 2, 2), (32, 8, 8), torch.nn.Conv2d, (32, 2, 2)),              # 4x smaller: 1x1, caller pools
])
def test_conv_regressor_follows_repdistiller_convreg(student, teacher, layer, out):
    reg = ConvRegressor(student, (2, *teacher), relu=True)
    assert type(reg.conv) is layer and isinstance(reg.bn, torch.nn.BatchNorm2d)
    y = reg(torch.randn(2, *student))
    assert y.shape[1:] == out and (y >= 0).all()
    assert (ConvRegressor(student, teacher, relu=False)(torch.randn(2, *student)) < 0).any()
    if student == (8, 7, 7):
        assert reg.conv.kernel_size == (4, 4)


def test_align_spatial_pools_the_larger_map():
    a, b = torch.arange(16.0).view(1, 1, 4, 4), torch.ones(1, 2, 2, 2)
    pa, pb = align_spatial(a, b)
    assert pb is b and torch.equal(pa, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert torch.equal(align_spatial(b, a, "max")[1], torch.tensor([[[[5.0, 7.0], [13.0, 15.0]]]]))


# ---------------------------------------------------------------------------------------------- FitNet
def test_hint_loss_paper_and_mean_by_hand():
    s = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 0.0]]], [[[3.0, 0.0]]]])
    # per sample 1/2 * ||.||^2: 2.5 and 4.5, batch mean 3.5; element mean (1 + 4 + 9 + 0) / 4
    assert hint_loss(s, t) == pytest.approx(3.5)
    assert hint_loss(s, t, "mean") == pytest.approx(F.mse_loss(s, t).item()) == pytest.approx(3.5)
    big_s, big_t = maps(3, 4, 5, 5), maps(3, 4, 5, 5, seed=1)
    assert hint_loss(big_s, big_t) == pytest.approx(hint_loss(big_s, big_t, "mean").item() * 100 / 2)


# -------------------------------------------------------------------------------------------------- AT
def repdistiller_at(f_s, f_t):
    """RepDistiller's Attention convention: avg-pool to the smaller height, normalise mean_c f^2,
    mean of squared differences."""
    h = min(f_s.shape[2], f_t.shape[2])
    f_s, f_t = F.adaptive_avg_pool2d(f_s, h), F.adaptive_avg_pool2d(f_t, h)
    q = [F.normalize(f.pow(2).mean(1).reshape(len(f), -1)) for f in (f_s, f_t)]
    return (q[0] - q[1]).pow(2).mean()


def test_at_by_hand():
    s = torch.tensor([[[[1.0, 0.0]]]])  # attention [1, 0]
    t = torch.tensor([[[[0.0, 2.0]]]])  # attention [0, 4] -> [0, 1]
    assert at_layer_loss(s, t, mode="code") == pytest.approx(1.0)
    assert at_layer_loss(s, t, mode="paper") == pytest.approx(math.sqrt(2) / 4)  # 1/(HW) * 1/2 * ||.||_2


def test_at_matches_repdistiller_code_and_torchdistill_paper_up_to_the_documented_factor():
    students = [maps(4, 3, 8, 8), maps(4, 5, 4, 4, seed=1)]
    teachers = [maps(4, 6, 16, 16, seed=2), maps(4, 7, 4, 4, seed=3)]
    code = at_loss(students, teachers, mode="code")
    reference = sum(repdistiller_at(s, t) for s, t in zip(students, teachers, strict=True))
    torch.testing.assert_close(code, reference)
    for s, t in zip(students, teachers, strict=True):
        s, t = align_spatial(s, t)
        q = [F.normalize(f.pow(2).sum(1).flatten(1)) for f in (s, t)]
        torchdistill_paper = (q[0] - q[1]).norm(dim=1).sum() / len(s)
        hw = s.shape[2] * s.shape[3]
        torch.testing.assert_close(at_layer_loss(s, t, mode="paper"), torchdistill_paper / (2 * hw))


# ------------------------------------------------------------------------------------------------- FSP
def test_fsp_matrix_by_hand():
    first = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]])   # 2 channels, 1x2
    second = torch.tensor([[[[3.0, 1.0]]]])                  # 1 channel
    torch.testing.assert_close(fsp_matrix(first, second), torch.tensor([[[2.5], [0.5]]]))


def test_fsp_reductions_match_repdistiller_and_torchdistill():
    students = [maps(2, 4, 8, 8), maps(2, 6, 4, 4, seed=1), maps(2, 5, 4, 4, seed=2)]
    teachers = [maps(2, 4, 8, 8, seed=3), maps(2, 6, 4, 4, seed=4), maps(2, 5, 4, 4, seed=5)]

    def repdistiller_gram(bot, top):  # RepDistiller's FSP.compute_fsp: broadcast product, mean over HW
        h = min(bot.shape[2], top.shape[2])
        bot, top = F.adaptive_avg_pool2d(bot, h), F.adaptive_avg_pool2d(top, h)
        return (bot.flatten(2).unsqueeze(1) * top.flatten(2).unsqueeze(2)).mean(-1)

    reference = sum((repdistiller_gram(students[k], students[k + 1])
                     - repdistiller_gram(teachers[k], teachers[k + 1])).pow(2).mean() for k in range(2))
    torch.testing.assert_close(fsp_loss(students, teachers, reduction="mean"), reference)
    per_pair = [students[k].shape[1] * students[k + 1].shape[1] for k in range(2)]
    paper = fsp_loss(students, teachers)
    weighted = sum(n * fsp_loss(students[k:k + 2], teachers[k:k + 2], reduction="mean")
                   for k, n in zip(range(2), per_pair, strict=True))
    torch.testing.assert_close(paper, weighted)

    def torchdistill_gram(a, b):  # torchdistill's FSPLoss.compute_fsp_matrix: max-pool, matmul / hw
        h = min(a.shape[2], b.shape[2])
        a, b = F.adaptive_max_pool2d(a, h).flatten(2), F.adaptive_max_pool2d(b, h).flatten(2)
        return a @ b.transpose(1, 2) / a.shape[2]

    reference = sum((torchdistill_gram(students[k], students[k + 1])
                     - torchdistill_gram(teachers[k], teachers[k + 1])).norm(dim=1).sum()
                    for k in range(2)) / 2
    torch.testing.assert_close(fsp_loss(students, teachers, pool="max", reduction="column_norm"), reference)


# ------------------------------------------------------------------------------------------------- NST
def test_nst_by_hand_and_against_repdistiller():
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # channels e1, e2
    t = torch.tensor([[[[2.0, 0.0]]]])                 # one channel, normalised to e1
    # k(t,t) = 1; k(s,s) = mean(1, 0, 0, 1) = 1/2; k(s,t) = mean(1, 0) = 1/2
    assert nst_layer_loss(s, t) == pytest.approx(1 + 0.5 - 1.0)
    assert nst_layer_loss(t, t) == pytest.approx(0.0)

    def repdistiller_nst(f_s, f_t):
        h = min(f_s.shape[2], f_t.shape[2])
        f_s, f_t = F.adaptive_avg_pool2d(f_s, h), F.adaptive_avg_pool2d(f_t, h)
        f_s, f_t = F.normalize(f_s.flatten(2), dim=2), F.normalize(f_t.flatten(2), dim=2)

        def kernel(a, b):
            return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)

        return kernel(f_t, f_t).mean() + kernel(f_s, f_s).mean() - 2 * kernel(f_s, f_t).mean()

    students, teachers = [maps(3, 4, 8, 8), maps(3, 5, 4, 4, seed=1)], [maps(3, 6, 4, 4, seed=2)] * 2
    torch.testing.assert_close(nst_loss(students, teachers),
                               sum(repdistiller_nst(s, t) for s, t in zip(students, teachers, strict=True)))


# -------------------------------------------------------------------------------------------------- AB
def test_ab_by_hand_and_against_repdistiller():
    s = torch.tensor([[[[2.0, 0.5, -0.5, -2.0]]]])
    t = torch.tensor([[[[1.0, 1.0, -1.0, 0.0]]]])
    # active: ReLU(1 - 2)^2 = 0, ReLU(1 - 0.5)^2 = 0.25; inactive: ReLU(1 - 0.5)^2 = 0.25, ReLU(1 - 2)^2 = 0
    assert ab_layer_loss(s, t) == pytest.approx(0.5)
    assert default_layer_weights(3) == [0.25, 0.5, 1.0]

    def repdistiller_ab(g_s, g_t, margin=1.0):
        n, bsz = len(g_s), g_s[0].shape[0]
        total = 0.0
        for i, (src, tgt) in enumerate(zip(g_s, g_t, strict=True)):
            loss = ((src + margin) ** 2 * ((src > -margin) & (tgt <= 0)).float()
                    + (src - margin) ** 2 * ((src <= margin) & (tgt > 0)).float())
            total = total + 2 ** (i - n + 1) * loss.abs().sum() / bsz / 1000 * 3
        return total

    g_s = [maps(4, 3, 4, 4) * 2, maps(4, 5, 2, 2, seed=1) * 2]
    g_t = [maps(4, 3, 4, 4, seed=2), maps(4, 5, 2, 2, seed=3)]
    ours = ab_loss(g_s, g_t, default_layer_weights(2))
    torch.testing.assert_close(0.003 * ours, repdistiller_ab(g_s, g_t))


# -------------------------------------------------------------------------------------------------- FT
def test_ft_by_hand_and_against_the_references():
    s = torch.tensor([[[[3.0, 4.0]]]])   # normalised [0.6, 0.8]
    t = torch.tensor([[[[0.0, 1.0]]]])
    assert factor_transfer_loss(s, t) == pytest.approx((0.6 + 0.2) / 2)
    # code mode: maps [9, 16] -> [9, 16] / sqrt(337) against [0, 1]
    norm = math.sqrt(9**2 + 16**2)
    assert factor_transfer_loss(s, t, "code") == pytest.approx((9 / norm + (1 - 16 / norm)) / 2)
    assert reconstruction_loss(s, t) == pytest.approx((9 + 9) / 2)
    assert reconstruction_loss(s, t, "l1") == pytest.approx(3.0)

    f_s, f_t = maps(3, 4, 8, 8), maps(3, 4, 4, 4, seed=1)
    pooled = F.adaptive_avg_pool2d(f_s, 4)
    authors = F.l1_loss(F.normalize(pooled.flatten(1)), F.normalize(f_t.flatten(1)))
    torch.testing.assert_close(factor_transfer_loss(f_s, f_t), authors)
    repdistiller = (F.normalize(pooled.pow(2).mean(1).flatten(1))
                    - F.normalize(f_t.pow(2).mean(1).flatten(1))).abs().mean()
    torch.testing.assert_close(factor_transfer_loss(f_s, f_t, "code"), repdistiller)


# ------------------------------------------------------------------------------------- distiller level
ALL_TERMS = {
    "fitnet": {"ce": 1.0, "kd": 1.0, "hint": 0.01},
    "fsp": {"ce": 1.0, "fsp": 0.001},
}
PARAMS = {"fsp": {"adapter": True}}


def digits_distiller(name, **method):
    method = {"weights": ALL_TERMS.get(name, {}), "params": PARAMS.get(name, {}), **method}
    torch.manual_seed(0)
    student, teacher = build_model("cnn_tiny", 10, in_channels=1), build_model("cnn_small", 10, in_channels=1)
    return build_distiller(MethodConfig(name=name, **method), student, teacher, DIGITS)


@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_student_and_method_modules_never_the_teacher(name):
    distiller = digits_distiller(name).train()
    teacher_bn = distiller.teacher.stage1[0].bn
    running = teacher_bn.running_mean.clone()
    inputs = torch.randn(6, 1, 8, 8)
    out = distiller(Batch(inputs, torch.randint(0, 10, (6,)), torch.arange(6)))
    assert set(out.losses) == set(distiller.terms) and out.logits.shape == (6, 10)
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in out.losses.values())
    weighted_sum(out.losses, distiller.weights).backward()
    student = {id(p) for p in distiller.student.parameters()}
    own = [(n, p) for n, p in distiller.named_parameters() if id(p) not in student]
    assert own or name in ("at", "nst")
    missing = [n for n, p in own if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert distiller.student.stage1[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert torch.equal(teacher_bn.running_mean, running)
    assert distiller.extra_parameter_count() == sum(p.numel() for _, p in own)


@pytest.mark.parametrize("name", ["fsp", "ab", "ft", "at"])
def test_teacher_is_not_run_when_no_teacher_term_is_weighted(name):
    zero = {"fsp": {"fsp": 0.0}, "ab": {"ab": 0.0}, "ft": {"ft": 0.0, "reconstruction": 0.0},
            "at": {"at": 0.0}}[name]
    distiller = digits_distiller(name, weights=zero)
    calls = []
    distiller.teacher.register_forward_hook(lambda *_: calls.append(1))
    out = distiller(Batch(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)), torch.arange(4)))
    assert set(out.losses) == {"ce"} and not calls


def test_bad_layer_configs_are_one_line():
    with pytest.raises(ConfigError, match=r"method.params.adapter: fsp needs equal channel counts"):
        digits_distiller("fsp", params={})
    with pytest.raises(ConfigError, match=r"method.params.teacher_layers: at pairs .* 2 student and 1"):
        digits_distiller("at", params={"student_layers": ["stage1", "stage2"], "teacher_layers": ["stage1"]})
    with pytest.raises(ConfigError, match=r"method.params.student_layers: fitnet takes exactly 1"):
        digits_distiller("fitnet", params={"student_layers": ["stage1", "stage2"],
                                           "teacher_layers": ["stage1", "stage2"]})
    with pytest.raises(ConfigError, match=r"method.params.layer_weights: ab needs one weight per layer"):
        digits_distiller("ab", params={"layer_weights": [1.0]})
    with pytest.raises(ConfigError, match=r"method.params.student_layers: ab needs pre-activation"):
        build_distiller(MethodConfig(name="ab"), build_model("mobilenetv2", 10), build_model("resnet8", 10),
                        DistillContext(10, (3, 32, 32), 10, "mobilenetv2", "resnet8"))
    with pytest.raises(ConfigError, match=r"method.params.mode"):
        digits_distiller("at", params={"mode": "papper"})


# -------------------------------------------------------------------------------------------- training
def teacher_for(name, num_classes, input_shape=(3, 32, 32), **kwargs):
    """A random teacher whose BatchNorm statistics were set by one train-mode pass, so its features have
    a trained network's scale (a fresh deep ResNet in eval mode has features growing with depth)."""
    torch.manual_seed(1)
    model = build_model(name, num_classes, **kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(16, *input_shape))
    return model.eval()


@pytest.mark.parametrize("name", METHODS)
def test_trains_on_digits(digits_config, name):
    method = {"name": name, "weights": ALL_TERMS.get(name, {}), "params": PARAMS.get(name, {})}
    tree = digits_config(method=method,
                         teacher={"name": "cnn_small"}, train={"steps": 3}, data={"subset": 200}, name=name)
    teacher = teacher_for("cnn_small", 10, (1, 8, 8), in_channels=1)
    result = train(validate(tree), teacher=teacher, write=False)
    assert result.summary["steps"] == 3 and result.summary["extra_params"] >= 0


class Snapshot(Callback):
    def __init__(self):
        self.states = []

    def on_stage_start(self, trainer):
        self.states.append({k: v.clone() for k, v in trainer.distiller.state_dict().items()})

    def on_fit_end(self, trainer):
        self.on_stage_start(trainer)


STAGED = {
    "fitnet": [{"name": "hint", "steps": 2, "weights": {"ce": 0.0, "kd": 0.0, "hint": 0.01},
                "train_only": ["student.stage1", "student.stage2", "connector"]},
               {"name": "kd", "steps": 2, "weights": {"ce": 0.1, "kd": 0.9, "hint": 0.0},
                "freeze": ["connector"]}],
    "fsp": [{"name": "init", "steps": 2, "weights": {"ce": 0.0}, "freeze": ["student.fc"]},
            {"name": "main", "steps": 2, "weights": {"fsp": 0.0}, "freeze": ["adapters"]}],
    "ab": [{"name": "init", "steps": 2, "weights": {"ce": 0.0}, "freeze": ["student.fc"]},
           {"name": "main", "steps": 2, "weights": {"ab": 0.0}, "freeze": ["connectors"]}],
    "ft": [{"name": "paraphraser", "steps": 2, "weights": {"ce": 0.0, "ft": 0.0, "reconstruction": 1.0},
            "train_only": ["paraphraser"]},
           {"name": "student", "steps": 2, "weights": {"reconstruction": 0.0}, "freeze": ["paraphraser"]}],
}


def _frozen(key, stage):
    def under(prefixes):
        return any(key == p or key.startswith(p + ".") for p in prefixes)
    if under(stage.get("freeze", [])):
        return True
    return "train_only" in stage and not under(stage["train_only"])


@pytest.mark.parametrize("name", sorted(STAGED))
def test_staged_recipes_train_only_what_each_stage_names(digits_config, name):
    tree = digits_config(method={"name": name, "params": PARAMS.get(name, {})}, teacher={"name": "cnn_small"},
                         data={"subset": 200}, name=f"staged-{name}")
    tree["train"] = {k: v for k, v in tree["train"].items() if k != "epochs"}
    # no evaluation inside a stage: the evaluation's model.train() would put frozen norm layers back in
    # train mode until the next data epoch (reported to the engine's owner)
    tree["stages"] = [{**stage, "eval_every": 10} for stage in STAGED[name]]
    snap = Snapshot()
    train(validate(tree), teacher=teacher_for("cnn_small", 10, (1, 8, 8), in_channels=1), callbacks=[snap])
    for stage, before, after in zip(STAGED[name], snap.states[:-1], snap.states[1:], strict=True):
        for key in before:
            if key.endswith("num_batches_tracked"):
                continue
            changed = not torch.equal(before[key], after[key])
            assert changed != _frozen(key, stage), (stage["name"], key)


def synthetic(name, student, teacher, method, tmp_path, **params):
    weights = ALL_TERMS.get(method, {})
    params = {**PARAMS.get(method, {}), **params}
    return validate({
        "data": {"name": "synthetic", "batch_size": 4, "val_fraction": 0.0, "augment": "none",
                 "image_size": 32, "options": {"num_classes": 10, "num_train": 16, "num_test": 8}},
        "student": {"name": student}, "teacher": {"name": teacher},
        "method": {"name": method, "weights": weights, "params": params},
        "train": {"steps": 2, "precision": "fp32", "progress": False},
        "out_dir": str(tmp_path / "runs"), "name": name,
    })


@pytest.mark.parametrize(("student", "teacher"), [("resnet8", "resnet14"), ("shufflenetv2", "resnet8x4")],
                         ids=["same-arch", "cross-arch"])
def test_trains_on_cifar_sized_pairs(tmp_path, student, teacher):
    """resnet8x4 stands in for resnet32x4 (the shipped cross-architecture teacher) at a quarter of the cost:
    its tapped stages have exactly resnet32x4's shapes, so the same connectors are built."""
    teacher_net = teacher_for(teacher, 10)
    for method in METHODS:
        config = synthetic(f"{method}-{student}", student, teacher, method, tmp_path)
        result = train(config, teacher=teacher_net, write=False)
        assert result.summary["steps"] == 2, method


TORCHVISION_LAYERS = {
    "fitnet": (["features.3"], ["layer2"]),
    "ft": (["features.8"], ["layer3"]),
    "ab": (["features.1", "features.3", "features.8"], ["layer1.1.bn2", "layer2.1.bn2", "layer3.1.bn2"]),
}


@pytest.fixture(scope="module")
def resnet18_teacher():
    return teacher_for("torchvision:resnet18", 10)


@pytest.mark.parametrize("method", METHODS)
def test_cross_architecture_torchvision_pair_by_module_path(tmp_path, method, resnet18_teacher):
    student_layers, teacher_layers = TORCHVISION_LAYERS.get(
        method, (["features.1", "features.3", "features.8"], ["layer1", "layer2", "layer3"]))
    config = synthetic(method, "torchvision:mobilenet_v3_small", "torchvision:resnet18", method, tmp_path,
                       student_layers=student_layers, teacher_layers=teacher_layers)
    result = train(config, teacher=resnet18_teacher, write=False)
    assert result.summary["steps"] == 2
