import pytest

from kdlab.config import ConfigError, load_config
from kdlab.config.load import parse_override
from kdlab.config.schema import MethodConfig
from kdlab.methods.registry import resolve_method

BASE = {"data": {"name": "digits"}, "student": {"name": "cnn_tiny"}, "train": {"epochs": 1}}


def config_error(overrides, base=BASE) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(base=base, overrides=overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_names_valid_keys_and_closest_match():
    message = config_error(["optim.lrr=0.1"])
    assert "optim.lrr" in message
    assert "did you mean 'lr'" in message
    assert "weight_decay" in message


def test_unknown_top_level_key():
    message = config_error(["trian.epochs=3"])
    assert "'trian'" in message and "did you mean 'train'" in message


def test_wrong_type_names_path_and_expected_type():
    message = config_error(["optim.lr=fast"])
    assert "'optim.lr'" in message and "number" in message


def test_literal_choices_are_listed():
    assert "'sgd', 'adam' or 'adamw'" in config_error(["optim.name=rmsprop"])


def test_budget_required():
    assert "train.epochs or train.steps" in config_error(["train.epochs=null"])


def test_overrides_are_yaml_scalars_never_evaluated():
    assert parse_override("optim.lr=1e-3") == (["optim", "lr"], 1e-3)
    assert parse_override("schedule.milestones=[150, 180]") == (["schedule", "milestones"], [150, 180])
    assert parse_override("name=__import__('os')") == (["name"], "__import__('os')")
    config = load_config(base=BASE, overrides=["optim.lr=0.2", "data.subset=100", "student.kwargs.width=8"])
    assert config.optim.lr == 0.2 and config.data.subset == 100 and config.student.kwargs == {"width": 8}


def test_malformed_override():
    message = config_error(["optim.lr"])
    assert "KEY.PATH=VALUE" in message


def test_base_is_not_mutated():
    load_config(base=BASE, overrides=["optim.lr=0.3"])
    assert "optim" not in BASE


def test_yaml_file_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("data: {name: digits}\nstudent: {name: cnn_tiny}\ntrain: {epochs: 2}\noptim: {lrr: 1}\n")
    with pytest.raises(ConfigError, match=r"good\.yaml: unknown key 'optim\.lrr'"):
        load_config(good)


def test_extends_merges_parent_sections(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "data: {name: digits, batch_size: 16}\nstudent: {name: cnn_tiny}\ntrain: {epochs: 2}\n"
        "optim: {lr: 0.1, weight_decay: 5e-4}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\noptim: {lr: 0.01}\n")
    config = load_config(tmp_path / "child.yaml")
    assert config.optim.lr == 0.01 and config.optim.weight_decay == 5e-4 and config.data.batch_size == 16
    (tmp_path / "mixin.yaml").write_text("optim: {weight_decay: 0.0}\ntrain: {epochs: 5}\n")
    (tmp_path / "both.yaml").write_text("extends: [base.yaml, mixin.yaml]\ntrain: {epochs: 3}\n")
    both = load_config(tmp_path / "both.yaml")
    assert (both.optim.lr, both.optim.weight_decay, both.train.epochs) == (0.1, 0.0, 3)
    (tmp_path / "bad.yaml").write_text("extends: [base.yaml, 3]\n")
    with pytest.raises(ConfigError, match="a list of them"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "loop.yaml")


def test_an_unknown_key_in_a_section_without_keys_says_it_takes_none():
    expected = r"unknown key 'method\.params\.label_smoothing'; this section takes no keys$"
    with pytest.raises(ConfigError, match=expected):
        resolve_method(MethodConfig(name="ce", params={"label_smoothing": 0.1}))
