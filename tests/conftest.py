import pytest
import torch

from kdlab.cli.main import main
from tests.helpers import write

torch.set_num_threads(2)


@pytest.fixture
def digits_config(tmp_path):
    """A small, fast run on scikit-learn digits; tests override what they need."""

    def make(**sections):
        tree = {
            "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.2},
            "student": {"name": "cnn_tiny"},
            "method": {"name": "ce"},
            "optim": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4},
            "schedule": {"name": "multistep", "milestones": [2]},
            "train": {"epochs": 3, "precision": "fp32", "progress": False, "log_every": 5},
            "out_dir": str(tmp_path / "runs"),
        }
        if "steps" in sections.get("train", {}):  # a step budget replaces the epochs (one budget only)
            tree["train"].pop("epochs")
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(tree.get(key), dict):
                tree[key] = {**tree[key], **value}
            else:
                tree[key] = value
        return tree

    return make


@pytest.fixture
def quick(digits_config):
    def make(**sections):
        train = {"steps": 3, "epochs": None, "eval_every": 3, **sections.pop("train", {})}
        tree = digits_config(train=train, **sections)
        tree.setdefault("name", "quick")
        return tree

    return make


@pytest.fixture
def finished_run(tmp_path, quick, capsys):
    assert main(["train", write(tmp_path, quick(name="done")), "--quiet"]) == 0
    capsys.readouterr()
    return tmp_path / "runs" / "done"
