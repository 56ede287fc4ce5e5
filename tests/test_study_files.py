"""Torn study files (a results line or a summary cut by a crash): one rerun completes the set."""

from kdlab.protocols.records import append_result, read_results
from tests.test_study import InProcess, make_study

CHANGES = {"conditions": {}, "methods": [{"name": "ce"}, {"name": "kd"}], "baseline": None}


def test_an_append_after_a_torn_line_starts_a_fresh_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "te')
    append_result(path, {"id": "c"})
    assert [r["id"] for r in read_results(path)] == ["a", "c"]


def test_one_rerun_completes_a_study_with_a_torn_results_line_and_summary(tmp_path):
    first = InProcess()
    assert make_study(tmp_path, first, **CHANGES).run().ok
    study_dir = tmp_path / "studies" / "tiny"
    jobs = sorted(r["id"] for r in read_results(study_dir / "results.jsonl"))
    assert len(jobs) == 3
    results = study_dir / "results.jsonl"
    text = results.read_text()
    results.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # the last line torn
    torn_summary = study_dir / "runs" / jobs[0] / "summary.json"
    torn_summary.write_text(torn_summary.read_text()[:40])

    second = InProcess()
    assert make_study(tmp_path, second, **CHANGES).run().ok
    assert second.jobs() == [jobs[0]] and "--resume" in second.commands[0]
    assert sorted(r["id"] for r in read_results(results)) == jobs
    third = InProcess()
    assert make_study(tmp_path, third, **CHANGES).run().ok and third.commands == []
