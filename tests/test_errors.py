"""A user's mistake is one line; a bug in kdlab (or in a user's own reader or model) keeps its traceback."""

import dataclasses
import json

import pytest
from torch import nn

from kdlab.cli.main import main
from kdlab.core.errors import ConfigError, UserError
from kdlab.data.catalog import DATASETS
from kdlab.models.presets import StagePreset
from kdlab.models.registry import MODELS, ModelSpec


def write(tmp_path, tree):
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(tree))
    return str(path)


@pytest.fixture
def broken_reader(monkeypatch):
    """The digits reader with a bug: it raises a plain ValueError, as a bug would."""
    def load(root, *, image_size=None):
        raise ValueError("a bug inside the reader")

    spec = dataclasses.replace(DATASETS.get("digits"), load=load)
    monkeypatch.setitem(DATASETS._items, "digits", spec)


@pytest.fixture
def broken_model(monkeypatch):
    """A registered model whose constructor has a bug (a TypeError from inside it)."""
    def factory(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
        return nn.Linear("not", "a size")

    spec = ModelSpec(factory, StagePreset(stages=(), classifier="fc"), "broken")
    monkeypatch.setitem(MODELS._items, "broken_cnn", spec)


def test_a_bug_in_a_dataset_reader_keeps_its_traceback(tmp_path, digits_config, broken_reader):
    with pytest.raises(ValueError, match="a bug inside the reader") as info:
        main(["train", write(tmp_path, digits_config()), "--quiet"])
    assert not isinstance(info.value, UserError)


def test_a_bug_in_a_model_constructor_keeps_its_traceback(tmp_path, digits_config, broken_model):
    with pytest.raises(TypeError) as info:
        main(["train", write(tmp_path, digits_config(student={"name": "broken_cnn"})), "--quiet"])
    assert not isinstance(info.value, UserError)


def test_user_mistakes_in_data_and_models_are_config_errors_naming_the_key(tmp_path, digits_config, capsys):
    cases = [
        (digits_config(data={"name": "digitz"}), "data.name: unknown dataset 'digitz'"),
        (digits_config(data={"options": {"colour": True}}), "data.options: 'digits' does not take"),
        (digits_config(student={"name": "cnn_tiny", "kwargs": {"depth": 3}}),
         "student.name: model 'cnn_tiny' got"),
        (digits_config(student={"name": "resnet9"}), "student.name: unknown model 'resnet9'"),
        (digits_config(data={"batch_size": 5000}), "data.batch_size: the training split has"),
    ]
    for tree, message in cases:
        assert main(["train", write(tmp_path, tree), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err


def test_config_errors_are_user_errors_and_value_errors():
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
