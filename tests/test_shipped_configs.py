from pathlib import Path

import pytest

from kdlab.config import load_config
from kdlab.core.runtime import Runtime
from kdlab.methods.registry import resolve_method
from kdlab.models import list_models

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml")
                 if not p.name.startswith("_"))


def test_configs_are_shipped():
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_config_validates(path):
    config = load_config(path)
    resolve_method(config.method, str(path))
    models = set(list_models())
    assert config.student.name in models or config.student.name.startswith(("torchvision:", "timm:"))
    if config.teacher is not None:
        assert config.teacher.name in models or config.teacher.name.startswith(("torchvision:", "timm:"))
        assert config.teacher.checkpoint or config.teacher.pretrained


def test_benchmark_recipe_is_the_published_one():
    config = load_config(Path(__file__).parents[1] / "configs/cifar100/kd_resnet32x4_resnet8x4.yaml")
    assert (config.train.epochs, config.data.batch_size, config.optim.lr) == (240, 64, 0.05)
    assert config.schedule.milestones == [150, 180, 210] and config.optim.weight_decay == 5e-4
    assert config.method.weights == {"ce": 0.1, "kd": 0.9} and config.method.params == {"temperature": 4}


#: (classes, channels, image side) of each shipped config's dataset, for building its parts without data
DATA_SHAPES = {"cifar100": (100, 3, 32), "cifar10": (10, 3, 32), "imagefolder": (10, 3, 32),
               "mnist": (10, 1, 28), "pacs": (7, 3, 224), "office_home": (65, 3, 224),
               "rotated_mnist": (10, 1, 28)}


def random_network(config, classes, channels):
    from kdlab.models import build_model

    return build_model(config.name, classes, in_channels=channels, **config.kwargs)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_config_builds_its_distiller_and_stages(path):
    """Every layer a method taps and every module a stage freezes exists in the models the config names
    (randomly initialised: no checkpoint or download is read)."""
    import torch

    from kdlab.assembly import build_run_distiller
    from kdlab.data import build_data
    from kdlab.engine.freeze import check_paths
    from kdlab.engine.stages import plan_stages
    from kdlab.ensemble import TeacherEnsemble

    torch.manual_seed(0)
    config = load_config(path)
    classes, channels, side = DATA_SHAPES[config.data.name]
    data = build_data({"name": "synthetic", "batch_size": 8, "image_size": side, "val_fraction": 0,
                       "options": {"num_classes": classes, "channels": channels, "num_train": 2 * classes,
                       "num_test": 8}}, Runtime())
    student = random_network(config.student, classes, channels)
    teacher = None
    if config.teacher is not None:
        teacher = random_network(config.teacher, classes, channels)
    elif config.teachers:
        teacher = TeacherEnsemble([random_network(t, classes, channels) for t in config.teachers])
    distiller = build_run_distiller(config, data, student=student, teacher=teacher)
    for stage in plan_stages(config, None if config.stages else distiller.default_stages(config)):
        check_paths(distiller, stage.freeze, f"stages.{stage.name}.freeze")
        check_paths(distiller, stage.train_only or (), f"stages.{stage.name}.train_only")
