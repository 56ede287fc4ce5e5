"""Malformed configs (the fault probe's kinds) are one line and exit code 2, never a traceback or a run."""

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdlab.config.load import load_config
from tests.helpers import one_line_error, write

COUNTS = ["data.batch_size", "data.eval_batch_size", "train.steps", "train.log_every", "train.eval_every",
          "train.seed", "data.subset", "data.split_seed", "averaging.bn_batches", "data.num_workers"]
REALS = ["optim.lr", "optim.momentum", "optim.weight_decay", "train.grad_clip", "schedule.gamma",
         "data.val_fraction", "schedule.min_lr"]


@pytest.mark.parametrize(("override", "expected"), [
    ("train.device=meta", "train.device"),
    ("train.device=mps", "train.device"),
    ("data.image_size=1000000", "more than this machine's"),
    ("optim.lr=1e300", "largest float32"),
    ("name=" + "r" * 300, "at most 255 bytes"),
    ("data.batch_size=true", "'data.batch_size' = True"),
    ("optim.lr=true", "'optim.lr' = True"),
    ("train.grad_clip=true", "'train.grad_clip' = True"),
    ("data.num_workers=-1", "data.num_workers"),
    ("train.epochs=2", "not both"),
    ("train.steps=1e3", "'train.steps' = 1000.0"),
    ("train.steps=0x10", "'train.steps' = '0x10'"),
])
def test_the_probes_cases_are_one_line(tmp_path, capsys, quick, override, expected):
    assert expected in one_line_error(capsys, ["train", write(tmp_path, quick()), override, "--quiet"])


@pytest.mark.parametrize(("options", "expected"), [
    ({"num_train": 10**12}, "more than this machine's"),
    ({"channels": 0}, "channels >= 1"),
])
def test_synthetic_sizes_are_checked_before_allocating(tmp_path, capsys, quick, options, expected):
    tree = quick(data={"name": "synthetic", "batch_size": 8, "image_size": 8,
                       "options": {"num_test": 8, "num_classes": 2, **options}})
    assert expected in one_line_error(capsys, ["train", write(tmp_path, tree), "--quiet"])


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"data: {name: caf\xe9}\n")
    assert "not UTF-8 text" in one_line_error(capsys, ["train", str(path)])


def test_a_deeply_nested_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("data: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in one_line_error(capsys, ["train", str(path)])


def test_decimal_numbers_still_read_as_numbers(digits_config):
    overrides = ["train.seed=10", "optim.lr=1e-3", "optim.betas=[0.9,0.99]"]
    config = load_config(base=digits_config(), overrides=overrides)
    assert config.train.seed == 10 and config.optim.lr == 1e-3 and config.optim.betas == (0.9, 0.99)


def yaml_text(value):
    return value if isinstance(value, str) else yaml.safe_dump(value).removesuffix("\n...\n").strip()


BAD_COUNT = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != int(v) or abs(v) >= 1),
    st.integers(max_value=-1),
    st.sampled_from(["0x10", "0o17", "010", "1e3", "12abc"]),
)
BAD_REAL = st.one_of(
    st.booleans(),
    st.floats(min_value=1e39, max_value=1e300),
    st.floats(max_value=-1e-6, allow_infinity=False, allow_nan=False),
    st.sampled_from([".nan", ".inf", "-.inf", "fast", "[1, 2]"]),
)
MALFORMED = st.one_of(
    st.tuples(st.sampled_from(COUNTS), BAD_COUNT),
    st.tuples(st.sampled_from(REALS), BAD_REAL),
    st.tuples(st.just("train.device"), st.text("abcdefghmpsu:0123456789", min_size=1, max_size=8).filter(
        lambda d: d not in ("auto", "cpu", "cuda") and not d.startswith("cuda:"))),
    st.tuples(st.just("name"), st.text("abcxyz-_", min_size=256, max_size=400)),
    st.tuples(st.just("train.epochs"), st.integers(min_value=1, max_value=10)),
    st.tuples(st.just("data.image_size"), st.integers(min_value=10**6, max_value=10**9)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(MALFORMED)
def test_generated_malformed_configs_are_one_line_and_exit_code_2(tmp_path, capsys, quick, case):
    key, value = case
    override = f"{key}={yaml_text(value)}"
    err = one_line_error(capsys, ["train", write(tmp_path, quick()), override, "--quiet"])
    assert key.split(".")[0] in err or "data:" in err, (override, err)
