from pathlib import Path

import pytest

from kdlab.config import load_config
from kdlab.methods import METHODS
from kdlab.methods.registry import resolve_weights
from kdlab.models import list_models

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml")
                 if not p.name.startswith("_"))


def test_configs_are_shipped():
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_config_validates(path):
    config = load_config(path)
    method = METHODS.get(config.method.name)
    resolve_weights(method, config.method.name, config.method.weights)
    method.validate_params(config.method.params)
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
