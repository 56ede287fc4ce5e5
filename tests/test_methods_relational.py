"""Relational and representation methods: SP, RKD, PKT, VID, CC, CRD.

Each loss is checked against a value computed by hand (or by the reference implementation's formula
written out) on a tiny case; then gradients, config errors, CRD's memory (bank, queue, DDP) and short
training runs on digits and on synthetic 32x32 data with same- and cross-architecture pairs.
"""

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from kdlab.config import ConfigError, validate
from kdlab.config.schema import MethodConfig
from kdlab.core.checkpoint import load
from kdlab.data.batch import Batch
from kdlab.methods import DistillContext, build_distiller
from kdlab.methods.base import weighted_sum
from kdlab.methods.cc import cc_loss, cc_repdistiller_loss, correlation_matrix
from kdlab.methods.crd import MemoryBank, MemoryQueue, crd_infonce_loss, crd_nce_loss
from kdlab.methods.pkt import pkt_loss
from kdlab.methods.rkd import rkd_angle_loss, rkd_distance_loss
from kdlab.methods.sp import sp_loss
from kdlab.methods.vid import VariationalRegressor, match_resolution, vid_loss
from kdlab.models import build_model
from kdlab.run import train

from .test_train import Interrupt, assert_bitwise_equal

METHODS = ["sp", "rkd", "pkt", "vid", "cc", "crd"]
SMALL = {"crd": {"num_negatives": 32}}


def tensor(rows):
    return torch.tensor(rows, dtype=torch.float32)


# --------------------------------------------------------------------------- losses by hand
def test_sp_loss_by_hand_and_l2_rows():
    student = tensor([[1.0, 0.0], [1.0, 1.0]])  # Gram [[1, 1], [1, 2]]
    teacher = tensor([[2.0, 0.0], [0.0, 3.0]])  # Gram diagonal -> rows [1, 0], [0, 1]
    r2, r5 = 1 / math.sqrt(2), 1 / math.sqrt(5)
    expected = ((1 - r2) ** 2 + r2**2 + r5**2 + (1 - 2 * r5) ** 2) / 4
    torch.testing.assert_close(sp_loss(student, teacher), torch.tensor(expected))
    maps_s, maps_t = torch.randn(4, 3, 2, 2), torch.randn(4, 5, 1, 1)
    g_s, g_t = maps_s.flatten(1) @ maps_s.flatten(1).t(), maps_t.flatten(1) @ maps_t.flatten(1).t()
    reference = (F.normalize(g_t) - F.normalize(g_s)).pow(2).sum() / 16  # RepDistiller Similarity
    torch.testing.assert_close(sp_loss(maps_s, maps_t), reference)


def test_rkd_distance_and_angle_by_hand():
    student = tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # distances 3, 4, 5; mean 4
    teacher = tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # distances 1, 1, sqrt 2
    mean_t = (2 + math.sqrt(2)) / 3
    pairs = [(3 / 4, 1 / mean_t), (4 / 4, 1 / mean_t), (5 / 4, math.sqrt(2) / mean_t)]

    def huber(x):
        return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5

    expected = 2 * sum(huber(s - t) for s, t in pairs) / 9
    torch.testing.assert_close(rkd_distance_loss(student, teacher), torch.tensor(expected))

    def angles(points):
        out = torch.zeros(3, 3, 3)
        for i in range(3):
            for j in range(3):
                for k in range(3):
                    if i not in (j, k):
                        e_j = (points[j] - points[i]) / (points[j] - points[i]).norm()
                        e_k = (points[k] - points[i]) / (points[k] - points[i]).norm()
                        out[i, j, k] = e_j @ e_k
        return out

    diff = angles(student) - angles(teacher)
    expected = torch.where(diff.abs() < 1, 0.5 * diff**2, diff.abs() - 0.5).mean()
    torch.testing.assert_close(rkd_angle_loss(student, teacher), expected)
    s, t = torch.randn(5, 7), torch.randn(5, 9)
    unit = F.normalize(s, dim=1), F.normalize(t, dim=1)
    torch.testing.assert_close(rkd_angle_loss(s, t, normalize=True), rkd_angle_loss(*unit))
    torch.testing.assert_close(rkd_distance_loss(s, t, normalize=True), rkd_distance_loss(*unit))


def test_pkt_loss_by_hand():
    student = tensor([[1.0, 0.0], [0.0, 1.0]])  # cos 0 -> kernel rows [1, .5] -> P [2/3, 1/3]
    teacher = tensor([[1.0, 0.0], [2.0, 0.0]])  # cos 1 -> P [1/2, 1/2]
    eps = 1e-7
    per_row = 0.5 * math.log((0.5 + eps) / (2 / 3 + eps)) + 0.5 * math.log((0.5 + eps) / (1 / 3 + eps))
    torch.testing.assert_close(pkt_loss(student, teacher), torch.tensor(2 * per_row / 4))


def test_vid_loss_by_hand_and_reference_initial_variance():
    mean = torch.zeros(1, 2, 1, 1)
    target = tensor([3.0, 1.0]).view(1, 2, 1, 1)
    variance = tensor([2.0, 0.5])
    expected = (0.5 * (9 / 2 + math.log(2)) + 0.5 * (1 / 0.5 + math.log(0.5))) / 2
    torch.testing.assert_close(vid_loss(mean, variance, target), torch.tensor(expected))
    regressor = VariationalRegressor(3, 4, 2, init_variance=5.0)
    torch.testing.assert_close(regressor.variance(), torch.full((2,), 5.0))
    torch.testing.assert_close(regressor.alpha, torch.full((2,), math.log(math.exp(5.0 - 1e-5) - 1.0)))
    s, t = match_resolution(torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4))
    assert s.shape[-2:] == t.shape[-2:] == (4, 4)


def test_cc_gaussian_taylor_kernel_and_losses_by_hand():
    unit = F.normalize(torch.randn(4, 6), dim=1)
    exact = torch.exp(-0.4 * torch.cdist(unit, unit).pow(2))
    torch.testing.assert_close(correlation_matrix(unit, gamma=0.4, order=25), exact)
    second = math.exp(-0.8) * (1 + 0.8 * (unit @ unit.t()) + 0.32 * (unit @ unit.t()) ** 2)
    torch.testing.assert_close(correlation_matrix(unit, gamma=0.4, order=2), second)
    student = tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = tensor([[1.0, 0.0], [1.0, 0.0]])  # bilinear correlations I vs all-ones: two entries differ by 1
    torch.testing.assert_close(cc_loss(student, teacher, kernel="bilinear"), torch.tensor(2 / 4))
    torch.testing.assert_close(cc_loss(student, teacher, kernel="bilinear", distance="frobenius"),
                               torch.tensor(math.sqrt(2) / 4))
    a, b = tensor([[1.0, -2.0], [0.0, 3.0], [2.0, 2.0]]), tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    # |D| = [[1, 2], [1, 2], [2, 2]]: consecutive products 1*1 + 2*2 = 5 and 1*2 + 2*2 = 6
    torch.testing.assert_close(cc_repdistiller_loss(a, b), torch.tensor(5.5))


def reference_contrast_loss(scores, temperature, z, num_data, eps=1e-7):
    """RepDistiller's ContrastMemory output and ContrastLoss (crd/memory.py, crd/criterion.py)."""
    out = torch.exp(scores / temperature) / z
    m = out.shape[1] - 1
    pn = 1 / num_data
    log_d1 = torch.log(out[:, 0] / (out[:, 0] + m * pn + eps))
    log_d0 = torch.log((m * pn) / (out[:, 1:] + m * pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / out.shape[0]


def test_crd_nce_matches_repdistiller_formula_and_masks_drop_negatives():
    scores = F.normalize(torch.randn(3, 8), dim=1) @ F.normalize(torch.randn(8, 6), dim=0)
    for z in (1.0, 1000.0):
        ours = crd_nce_loss(scores / 0.07, 50, math.log(z))
        torch.testing.assert_close(ours, reference_contrast_loss(scores, 0.07, z, 50), rtol=1e-5, atol=1e-5)
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[:, 4] = False
    masked = crd_nce_loss(scores / 0.07, 50, 2.0, valid)
    torch.testing.assert_close(masked, crd_nce_loss(scores[:, :5] / 0.07, 50, 2.0))
    infonce = crd_infonce_loss(scores / 0.07, valid)
    first = torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(infonce, F.cross_entropy(scores[:, :5] / 0.07, first))


# --------------------------------------------------------------------------- CRD memory
def test_bank_momentum_update_labels_and_other_class_negatives():
    torch.manual_seed(0)
    bank = MemoryBank(size=12, dim=4, num_negatives=64, momentum=0.5, other_class=True)
    old = bank.student_keys.clone()
    index, targets = torch.tensor([0, 3]), torch.tensor([1, 2])
    new = F.normalize(torch.randn(2, 4), dim=1)
    bank.update(new, new, index, targets)
    torch.testing.assert_close(bank.student_keys[index], F.normalize(0.5 * old[index] + 0.5 * new, dim=1))
    assert torch.equal(bank.student_keys[1], old[1]) and bank.labels.tolist()[:4] == [1, -1, -1, 2]
    bank.labels.copy_(torch.arange(12) % 3)
    rows, valid = bank.draw(torch.tensor([4, 5]), torch.tensor([1, 2]))
    assert valid.all() and rows.shape == (2, 64)
    assert not (bank.labels[rows] == torch.tensor([[1], [2]])).any()
    assert not (rows == torch.tensor([[4], [5]])).any()


def test_queue_is_fifo_and_masks_own_sample_and_class():
    queue = MemoryQueue(size=4, dim=2, other_class=True)
    for step in range(3):
        keys = torch.full((2, 2), float(step))
        queue.update(keys, -keys, torch.tensor([2 * step, 2 * step + 1]), torch.tensor([step, 9]))
    assert queue.indices.tolist() == [4, 5, 2, 3] and int(queue.pointer) == 2
    assert queue.student_keys[:, 0].tolist() == [2.0, 2.0, 1.0, 1.0]
    assert queue.labels.tolist() == [2, 9, 1, 9]
    _, _, valid = queue.logits(torch.ones(1, 2), torch.ones(1, 2), torch.tensor([2]), torch.tensor([7]))
    assert valid.tolist() == [[True, True, False, True]]
    _, _, valid = queue.logits(torch.ones(1, 2), torch.ones(1, 2), torch.tensor([2]), torch.tensor([9]))
    assert valid.tolist() == [[True, False, False, False]]


def _ddp_worker(rank, store, out_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    bank = MemoryBank(size=8, dim=4, num_negatives=4, momentum=0.5, other_class=False)
    queue = MemoryQueue(size=8, dim=4, other_class=False)
    new = torch.full((2, 4), float(rank + 1))
    index = torch.tensor([2 * rank, 2 * rank + 1])
    bank.update(new, new, index, index)
    queue.update(new, new, index, index)
    torch.save({"bank": bank.state_dict(), "queue": queue.state_dict()}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_ranks_gather_and_keep_identical_memories(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for part in ("bank", "queue"):
        for key, value in states[0][part].items():
            assert torch.equal(value, states[1][part][key]), (part, key)
    assert states[0]["bank"]["labels"].tolist() == [0, 1, 2, 3, -1, -1, -1, -1]
    assert states[0]["queue"]["indices"].tolist()[:4] == [0, 1, 2, 3]


# --------------------------------------------------------------------------- distillers
CONTEXT = DistillContext(num_classes=10, input_shape=(1, 8, 8), num_train_samples=40,
                         student_name="cnn_tiny", teacher_name="cnn_small")


def distiller(name, **params):
    torch.manual_seed(0)
    student = build_model("cnn_tiny", 10, in_channels=1)
    teacher = build_model("cnn_small", 10, in_channels=1)
    config = MethodConfig(name=name, params={**SMALL.get(name, {}), **params})
    return build_distiller(config, student, teacher, CONTEXT)


@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_student_and_method_parts_never_teacher(name):
    d = distiller(name).train()
    bn = next(m for m in d.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running = bn.running_mean.clone()
    batch = Batch(torch.randn(8, 1, 8, 8), torch.arange(8) % 3, torch.arange(8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert all(v.dtype == torch.float32 for v in d(batch).losses.values())
    out = d(batch)
    assert set(out.losses) == set(d.terms)
    weighted_sum(out.losses, d.weights).backward()
    assert all(p.grad is not None for p in d.student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in d.named_parameters()
               if not n.startswith("student."))
    assert all(p.grad is None for p in d.teacher.parameters())
    assert torch.equal(bn.running_mean, running)
    expected_extra = {"vid": True, "cc": True, "crd": True}.get(name, False)
    assert (d.extra_parameter_count() > 0) == expected_extra


def test_crd_memory_is_state_and_z_is_estimated_once():
    d = distiller("crd").train()
    assert {"memory.student_keys", "memory.teacher_keys", "memory.labels", "z"} <= set(d.state_dict())
    assert set(d._ddp_params_and_buffers_to_ignore) == {"memory.student_keys", "memory.teacher_keys",
                                                        "memory.labels"}
    batch = Batch(torch.randn(8, 1, 8, 8), torch.arange(8) % 3, torch.arange(8))
    d(batch)
    z = d.z.clone()
    assert (z > 0).all()
    d(batch)
    assert torch.equal(d.z, z)
    d.eval()
    keys = d.memory.student_keys.clone()
    d(batch)
    assert torch.equal(d.memory.student_keys, keys)


@pytest.mark.parametrize(("name", "params", "key"), [
    ("vid", {"student_layers": ["stage2", "stage3"]}, "student_layers"),
    ("sp", {"teacher_layers": ["stage2", "stage3"]}, "student_layers"),
    ("rkd", {"student_layers": ["stage3", "fc:input"]}, "student_layers"),
    ("crd", {"queue_size": 100}, "queue_size"),
    ("crd", {"memory": "queue"}, "num_negatives"),
    ("cc", {"kernel": "polynomial"}, "kernel"),
])
def test_bad_params_get_one_clear_line(name, params, key):
    with pytest.raises(ConfigError, match=rf"method\.params\.{key}"):
        distiller(name, **params)


def test_layers_can_be_named_and_resolution_mismatch_is_pooled():
    d = distiller("vid", student_layers=["stage1"], teacher_layers=["stage2"])
    out = d(Batch(torch.randn(4, 1, 8, 8), torch.arange(4), torch.arange(4)))
    assert torch.isfinite(out.losses["vid"])


# --------------------------------------------------------------------------- training runs
@pytest.mark.parametrize("name", METHODS)
def test_method_trains_on_digits(digits_config, name):
    teacher = build_model("cnn_small", 10, in_channels=1)
    config = validate(digits_config(
        name=name, method={"name": name, "params": SMALL.get(name, {})}, teacher={"name": "cnn_small"},
        data={"subset": 200}, train={"epochs": None, "steps": 3}))
    result = train(config, teacher=teacher)
    assert result.summary["steps"] == 3
    state = load(result.run_dir / "last.pt")["model"]
    if name == "crd":
        assert state["memory.labels"].ne(-1).sum() >= 2 * 64


def synthetic(digits_config, name, student, teacher, params, channels_last=False):
    return validate(digits_config(
        name=f"{name}-{student}", student={"name": student}, teacher={"name": teacher},
        method={"name": name, "params": params},
        data={"name": "synthetic", "batch_size": 8, "val_fraction": 0.0, "image_size": 32,
              "options": {"num_classes": 10, "num_train": 32, "num_test": 16}},
        optim={"lr": 0.01}, train={"epochs": None, "steps": 2, "channels_last": channels_last}))


@pytest.mark.parametrize("name", METHODS)
# resnet8x4 has resnet32x4's stage widths and embedding at a sixth of its cost; mobilenetv2 has 4 stages
@pytest.mark.parametrize(("student", "teacher"), [("resnet8", "resnet14"), ("mobilenetv2", "resnet8x4")])
def test_method_trains_on_cifar_sized_pairs(digits_config, name, student, teacher):
    config = synthetic(digits_config, name, student, teacher, SMALL.get(name, {}))
    result = train(config, teacher=build_model(teacher, 10))
    assert result.summary["steps"] == 2


@pytest.mark.parametrize("name", METHODS)
def test_method_trains_on_the_stock_torchvision_pair(digits_config, name):
    """resnet18 -> mobilenet_v3_small as torchvision builds them: taps from the detected presets."""
    config = synthetic(digits_config, name, "torchvision:mobilenet_v3_small", "torchvision:resnet18",
                       SMALL.get(name, {}))
    result = train(config, teacher=build_model("torchvision:resnet18", 10).eval())
    assert result.summary["steps"] == 2 and result.summary["extra_params"] >= 0


def test_crd_queue_and_infonce_train(digits_config):
    config = synthetic(digits_config, "crd", "shufflenetv2", "resnet8",
                       {"memory": "queue", "queue_size": 12, "objective": "infonce", "negatives": "uniform"},
                       channels_last=True)
    result = train(config, teacher=build_model("resnet8", 10))
    assert int(load(result.run_dir / "last.pt")["model"]["memory.pointer"]) == 2 * 8 % 12


def test_crd_resume_restores_memory_and_z_exactly(digits_config):
    base = dict(method={"name": "crd", "params": SMALL["crd"]}, teacher={"name": "cnn_small"},
                data={"subset": 200}, train={"epochs": None, "steps": 4, "eval_every": 2})
    teacher = build_model("cnn_small", 10, in_channels=1)
    full = train(validate(digits_config(name="full", **base)), teacher=teacher)
    config = validate(digits_config(name="cut", **base))
    with pytest.raises(KeyboardInterrupt):
        train(config, teacher=teacher, callbacks=[Interrupt(3)])
    run_dir = full.run_dir.parent / "cut"
    train(config, teacher=teacher, resume=run_dir)
    assert_bitwise_equal(load(full.run_dir / "last.pt")["model"], load(run_dir / "last.pt")["model"])
