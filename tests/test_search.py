"""Hyper-parameter search as a study axis: seeded draws, expansion, selection on validation, the report."""

import json
import subprocess
import sys

import pytest
import yaml

from kdlab.config.load import ConfigError
from kdlab.protocols.grid import expand
from kdlab.protocols.records import read_results
from kdlab.protocols.search import HParamSpace, draw
from kdlab.protocols.study_schema import StudyConfig, load_study
from kdlab.report import write_report
from kdlab.report.search import keep_selected, select_draws
from tests.test_study import InProcess, make_study, study_tree

SPACE = {"method.params.temperature": {"distribution": "log_uniform", "low": 1, "high": 16, "default": 4},
         "method.weights.kd": {"distribution": "uniform", "low": 0.1, "high": 0.9},
         "data.batch_size": {"distribution": "choice", "values": [16, 32]},
         "train.steps": {"distribution": "int_uniform", "low": 2, "high": 4}}


def spaces():
    return {key: HParamSpace.model_validate(value) for key, value in SPACE.items()}


def test_draws_are_a_pure_function_of_seed_label_and_index():
    first = [draw(spaces(), 0, "kd", k) for k in range(6)]
    assert first == [draw(spaces(), 0, "kd", k) for k in range(6)]
    assert first[0] == {"method.params.temperature": 4}  # draw 0: the defaults
    assert first[1:] != [draw(spaces(), 1, "kd", k) for k in range(1, 6)]
    assert first[1:] != [draw(spaces(), 0, "dkd", k) for k in range(1, 6)]
    for values in first[1:]:
        assert 1 <= values["method.params.temperature"] <= 16 and 0.1 <= values["method.weights.kd"] <= 0.9
        assert values["data.batch_size"] in (16, 32) and values["train.steps"] in (2, 3, 4)
    code = ("from kdlab.protocols.search import HParamSpace, draw; import json; "
            f"s = {{k: HParamSpace.model_validate(v) for k, v in {SPACE!r}.items()}}; "
            "print(json.dumps([draw(s, 0, 'kd', k) for k in range(6)]))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "7", "PATH": ""}).stdout
    assert json.loads(other) == first  # the same in another process, whatever its hash seed


def searched_tree(tmp_path, draws=3):
    kd = {"name": "kd", "weights": {"ce": 0.5, "kd": 0.5},
          "search": {"method.params.temperature": SPACE["method.params.temperature"],
                     "method.weights.kd": SPACE["method.weights.kd"]}}
    return study_tree(tmp_path, methods=[{"name": "ce"}, kd], conditions={}, search={"draws": draws})


def test_a_searched_method_gets_draws_per_cell_each_after_its_teacher(tmp_path):
    jobs = expand(StudyConfig.model_validate(searched_tree(tmp_path)), tmp_path, tmp_path / "s")
    kd = [j for j in jobs if j.method == "kd"]
    assert [j.id for j in kd] == [f"student_clean_cnn_tiny-to-cnn_tiny_kd_d{k}_s0" for k in range(3)]
    assert {j.depends for j in kd} == {"teacher_clean_cnn_tiny_s0"}
    assert kd[0].tree["method"]["params"]["temperature"] == 4 and kd[0].tree["method"]["weights"]["kd"] == 0.5
    assert kd[0].searched == {"method.params.temperature": 4, "method.weights.kd": 0.5}
    for job in kd[1:]:
        assert job.tree["method"]["weights"]["kd"] == job.searched["method.weights.kd"] != 0.5
    assert [j.draw for j in jobs if j.method == "ce"] == [None]


def test_a_bad_search_space_is_one_line(tmp_path):
    tree = searched_tree(tmp_path)
    tree["methods"][1]["search"]["method.weights.kd"] = {"distribution": "uniform", "low": 1, "high": 0.5}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=r"methods.1.search.method.weights.kd.*needs low <= high"):
        load_study(path)


def fake(draw_index, seed, val, test):
    return {"id": f"kd_d{draw_index}_s{seed}", "role": "student", "pair": "p", "condition": "clean",
            "method": "kd", "seed": seed, "draw": draw_index,
            "searched": {"method.params.temperature": 1.0 + draw_index},
            "metrics": {"val_last": {"top1": val}, "test_last": {"top1": test}},
            "result": {"selected": {"metric": "top1", "value": val}}}


def test_selection_uses_validation_only():
    records = [fake(0, s, 80.0, 90.0) for s in (0, 1)] + [fake(1, s, 85.0 + s, 70.0) for s in (0, 1)]
    chosen = select_draws(records, "test_last")[("p", "clean", "kd")]
    assert chosen.draw == 1 and chosen.val.mean == 85.5 and chosen.test.mean == 70.0
    assert chosen.test_range == (70.0, 90.0) and chosen.draws == 2
    assert {r["draw"] for r in keep_selected(records, {("p", "clean", "kd"): chosen})} == {1}
    better_test = [{**r, "metrics": {**r["metrics"], "test_last": {"top1": 99.0}}} if r["draw"] == 0 else r
                   for r in records]
    assert select_draws(better_test, "test_last")[("p", "clean", "kd")].draw == 1


def test_a_searched_study_runs_and_its_report_shows_the_selected_draw(tmp_path):
    config = StudyConfig.model_validate(searched_tree(tmp_path, draws=2))
    study = make_study(tmp_path, InProcess(), **searched_tree(tmp_path, draws=2))
    assert study.run().ok and config.search.draws == 2
    lines = read_results(study.dir / "results.jsonl")
    drawn = sorted((r for r in lines if r.get("draw") is not None), key=lambda r: r["draw"])
    assert [r["axes"]["draw"] for r in drawn] == [0, 1]
    for line in drawn:
        written = yaml.safe_load((study.dir / line["run_dir"] / "config.yaml").read_text())
        assert written["method"]["weights"]["kd"] == line["searched"]["method.weights.kd"]
        assert line["hparams"]["method.params.temperature"] == line["searched"]["method.params.temperature"]
    text = write_report(study.dir).read_text()
    assert "## Hyper-parameter search" in text and "| clean | kd | 2 |" in text
    png = study.dir / "report" / "search_cnn_tiny-to-cnn_tiny_clean_method.params.temperature.png"
    assert png.stat().st_size > 10_000 and png.name in text
    accuracy = text.split("## cnn_tiny->cnn_tiny")[1].split("## Hyper-parameter search")[0]
    kd_row = next(row for row in accuracy.splitlines() if row.startswith("| kd |"))
    assert "±" not in kd_row  # one seed of the selected draw, not a spread over both draws
