import torch

import kdlab
from kdlab.demo import format_table, run_demo
from kdlab.models import build_model

FAST = {"train.precision": "fp32", "train.progress": False, "data.val_fraction": 0.2,
        "optim.lr": 0.05}


def test_distill_in_a_few_lines_with_module_teacher_and_named_student(tmp_path):
    teacher = kdlab.distill(None, "cnn_small", data="digits", method="ce", epochs=3, out_dir=tmp_path,
                            name="teacher", overrides=FAST)
    module = build_model("cnn_small", 10)
    module.load_state_dict(teacher.student.state_dict())
    student = kdlab.distill(module, "cnn_tiny", data="digits", epochs=2, out_dir=tmp_path, name="kd",
                            overrides={**FAST, "method.params.temperature": 2.0})
    assert student.summary["test_selected"]["top1"] > 50.0
    assert kdlab.load_config(student.run_dir / "config.yaml").teacher.name == "cnn_small"
    assert sum(p.numel() for p in student.student.parameters()) == student.summary["student_params"]


def test_demo_is_repeatable_for_a_seed(tmp_path):
    first = run_demo(tmp_path / "a", seed=3, epochs=1)[1]
    second = run_demo(tmp_path / "b", seed=3, epochs=1)[1]
    for a, b in zip(first, second, strict=True):
        assert a.result.summary["test_selected"] == b.result.summary["test_selected"]
    table = format_table(first)
    assert table.count("\n") == 4 and "student (cnn_tiny, KD)" in table
    first_kd, second_kd = first[2].result.student, second[2].result.student
    assert torch.equal(next(first_kd.parameters()), next(second_kd.parameters()))
