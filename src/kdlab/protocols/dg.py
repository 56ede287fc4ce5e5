"""Leave-one-domain-out domain generalization (DomainBed's protocol, Gulrajani & Lopez-Paz, 2021).

For every target domain and seed, ``kdlab dg`` schedules ordinary runs on the other (source) domains:

1. the teacher: trained on the sources from ``--teacher CONFIG`` (a run directory per target and
   seed), or loaded from the student config's ``teacher.checkpoint``, which must then name the
   target-specific teacher with ``{target}`` (the domain's short name) and ``{seed}`` placeholders;
2. each student config, distilled on the same sources, in domain-balanced batches, with the same
   per-domain in/out split (``data.split_seed`` = the seed, as DomainBed's trial seed).

With ``split_seed`` set, every seed uses that one split and only the training seed varies; one teacher
per target domain then serves all seeds (its directory is ``teacher/<domain>/split<k>``, and a
``{seed}`` placeholder means the split seed).

Selection uses *training-domain validation* only (the pooled held-out parts of the source domains);
the target domain is never used to select. Each run reports the test accuracy (target domain, "in"
part) of the model its config defines as the result: the validation-selected model, or, for averaging
strategies whose result is the final average (SWA, EMA, SWAD, WAKD), that final average. No oracle
(test-domain validation) row is computed.

The protocol writes ``OUT/results.jsonl`` (one JSON line per run: config, target, seed, accuracies,
cost) and ``OUT/results.md``: one row per config, one column per target domain with the mean and the
standard error over seeds (DomainBed's convention, std / sqrt(n); a cell of one seed shows its value
alone), and their average. Both files cover every finished run of the output directory: a call merges
its runs into the ``results.jsonl`` already there (one line per run directory), so another seed or
config adds rows instead of replacing the table.

The runs go to the same executor as a study's (:mod:`.runner` on :mod:`.executor`: local subprocesses,
``workers`` at a time, or Ray tasks), each student after its teacher, with the same guarantees: finished
runs (a readable ``summary.json``) are reused, interrupted ones resume from ``last.pt``, a failed run is
tried again ``retries`` times and its students are blocked. ``OUT/configs``, ``OUT/logs`` and
``OUT/status`` hold each run's config, output and state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.config.load import ConfigError, apply_overrides, read_yaml, set_dotted, validate
from kdlab.config.schema import RunConfig
from kdlab.data.domains import DOMAIN_SETS, DomainSet
from kdlab.protocols.executor import ExecutorConfig, make_executor
from kdlab.protocols.records import read_results, read_summary
from kdlab.protocols.runner import Outcome, Run, Runner

SHARED_DATA_KEYS = ("name", "root", "val_fraction")
SHARED_OPTIONS = ("domain_size", "data_seed")
PLACEHOLDERS = ("{target}", "{seed}")


@dataclass(frozen=True)
class RunSpec:
    """One scheduled run: which config, target domain and seed, and where it lives."""

    label: str
    target: int
    seed: int
    run_dir: Path
    config: RunConfig


def _tree(path: str | Path, overrides: Sequence[str]) -> dict[str, Any]:
    return apply_overrides(read_yaml(path), overrides)


def _domain_set(tree: dict[str, Any], source: str) -> DomainSet:
    name = (tree.get("data") or {}).get("name")
    if name not in DOMAIN_SETS:
        raise ConfigError(f"{source}: data.name {name!r} is not a domain dataset; kdlab dg needs one of "
                          f"{', '.join(DOMAIN_SETS.names())}")
    return DOMAIN_SETS.get(name)


def _for_run(tree: dict[str, Any], spec: DomainSet, target: int, seed: int, run_dir: Path,
             source: str, split_seed: int | None = None) -> RunConfig:
    tree = json.loads(json.dumps(tree))
    set_dotted(tree, ["data", "options", "test_domains"], [spec.domains[target]])
    set_dotted(tree, ["data", "split_seed"], seed if split_seed is None else split_seed)
    set_dotted(tree, ["train", "seed"], seed)
    tree["out_dir"], tree["name"] = str(run_dir.parent), run_dir.name
    return validate(tree, f"{source} (target {spec.domains[target]}, seed {seed})")


def _check_same_data(student: dict[str, Any], teacher: dict[str, Any], source: str) -> None:
    """Teacher and student must split the domains identically (augmentation may differ)."""
    pairs = [(f"data.{k}", student["data"].get(k), teacher["data"].get(k)) for k in SHARED_DATA_KEYS]
    pairs += [(f"data.options.{k}", (student["data"].get("options") or {}).get(k),
               (teacher["data"].get("options") or {}).get(k)) for k in SHARED_OPTIONS]
    for key, mine, theirs in pairs:
        if mine != theirs:
            raise ConfigError(f"{source}: {key} = {mine!r} differs from the teacher config's {theirs!r}; "
                              "teacher and student must see the same domains and splits")


def _teacher_path(tree: dict[str, Any], spec: DomainSet, target: int, seed: int, source: str) -> str:
    checkpoint = str((tree.get("teacher") or {}).get("checkpoint") or "")
    if not all(p in checkpoint for p in PLACEHOLDERS):
        raise ConfigError(
            f"{source}: teacher.checkpoint must name a teacher per target domain and seed with {{target}} "
            "and {seed} (a teacher trained on every domain has seen the target), or pass --teacher CONFIG")
    return checkpoint.format(target=spec.domains[target], seed=seed)


def plan(configs: Sequence[str | Path], overrides: Sequence[str] = (), *, teacher: str | Path | None = None,
         seeds: Sequence[int] = (0,), targets: Sequence[int | str] | None = None,
         out_dir: str | Path = "runs/dg", split_seed: int | None = None) -> tuple[DomainSet, list[RunSpec]]:
    """Every run of the protocol, teachers first, in the order they will run."""
    if not configs:
        raise ConfigError("kdlab dg: give at least one student CONFIG")
    out = Path(out_dir)
    students = [(Path(c).stem, _tree(c, overrides), str(c)) for c in configs]
    spec = _domain_set(students[0][1], str(configs[0]))
    for _, tree, source in students:
        if _domain_set(tree, source) is not spec:
            raise ConfigError(f"{source}: every config of one kdlab dg call must use dataset {spec.title}")
    try:
        chosen = list(range(len(spec.domains))) if not targets else \
            [spec.domain_index(t) for t in targets]
    except ValueError as exc:
        raise ConfigError(f"--targets: {exc}") from None
    for flag, values in (("--targets", chosen), ("--seeds", list(seeds))):
        if len(set(values)) != len(values):
            raise ConfigError(f"{flag}: each may be given once (got {' '.join(map(str, values))})")
    teacher_tree = _tree(teacher, overrides) if teacher is not None else None
    if teacher_tree is not None:
        for _, tree, source in students:
            _check_same_data(tree, teacher_tree, source)
    runs: list[RunSpec] = []
    for target in chosen:
        domain = spec.domains[target]
        for seed in seeds:
            teacher_seed = seed if split_seed is None else split_seed
            teacher_dir = out / "teacher" / domain / \
                (f"seed{seed}" if split_seed is None else f"split{split_seed}")
            if teacher_tree is not None and (split_seed is None or seed == seeds[0]):
                config = _for_run(teacher_tree, spec, target, teacher_seed, teacher_dir, str(teacher),
                                  split_seed)
                runs.append(RunSpec("teacher", target, teacher_seed, teacher_dir, config))
            for label, tree, source in students:
                run_dir = out / label / domain / f"seed{seed}"
                if tree.get("teacher"):
                    path = str(teacher_dir) if teacher_tree is not None else \
                        _teacher_path(tree, spec, target, teacher_seed, source)
                    tree = {**tree, "teacher": {**tree["teacher"], "checkpoint": path}}
                config = _for_run(tree, spec, target, seed, run_dir, source, split_seed)
                runs.append(RunSpec(label, target, seed, run_dir, config))
    return spec, runs


def as_runs(runs: Sequence[RunSpec], out_dir: str | Path) -> list[Run]:
    """The runner's runs: ids from the run directories, each student after the teacher run it names."""
    out = Path(out_dir)
    ids = {str(run.run_dir): "__".join(run.run_dir.relative_to(out).parts) for run in runs}
    return [Run(ids[str(run.run_dir)], run.run_dir, run.config.model_dump(mode="json"),
                ids.get(run.config.teacher.checkpoint) if run.config.teacher is not None else None)
            for run in runs]


def execute(runs: Sequence[RunSpec], out_dir: str | Path, executor: ExecutorConfig | None = None, *,
            workers: int | None = None, echo: Callable[[str], None] = print) -> Outcome:
    """Train every run that has no ``summary.json`` yet (resuming those with a ``last.pt``)."""
    config = executor or ExecutorConfig()
    backend = make_executor(config, workers=workers)
    try:
        return Runner(Path(out_dir), backend, retries=config.retries, echo=echo).run(as_runs(runs, out_dir))
    finally:
        backend.close()


def result_line(run: RunSpec, spec: DomainSet) -> dict[str, Any] | None:
    """The JSON line of a finished run (None when it has not finished)."""
    summary = read_summary(run.run_dir)
    if summary is None:
        return None
    averaging = summary.get("averaging") or {}
    reported = averaging.get("report", "test_selected")
    steps = max(summary["steps"], 1)
    return {
        "config": run.label,
        "dataset": run.config.data.name,
        "target": run.target,
        "target_name": spec.domains[run.target],
        "seed": run.seed,
        "split_seed": run.config.data.split_seed,
        "method": run.config.method.name,
        "averaging": averaging.get("strategy", "none"),
        "reported": reported,
        "test_acc": summary[reported]["top1"],
        "test_last": summary["test_last"]["top1"],
        "test_selected": summary["test_selected"]["top1"],
        "online_test_acc": (summary.get("online_test_last") or {}).get("top1"),
        "val_selected": (summary.get("selected") or {}).get("value"),
        "averaged_steps": [averaging.get("first_step"), averaging.get("last_step")] if averaging else None,
        "steps": summary["steps"],
        "step_time_ms": round(1000 * summary["train_time_s"] / steps, 2),
        "img_per_s": summary["img_per_s"],
        "train_time_s": summary["train_time_s"],
        "run_dir": str(run.run_dir),
    }


def _mean_err(values: Sequence[float]) -> str:
    """``mean ± standard error``, or the mean alone for one value (its spread is undefined)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    err = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values) / len(values))
    return f"{mean:.1f} ± {err:.1f}"


def _row(label: str, lines: Sequence[dict[str, Any]], key: str, targets: Sequence[int]) -> list[str]:
    """One table row: the ``key`` accuracy per target domain (mean ± s.e. over seeds) and their mean."""
    cells, means = [], []
    for t in targets:
        values = [x[key] for x in lines if x["target"] == t]
        cells.append(_mean_err(values) if values else "-")
        if values:
            means.append(sum(values) / len(values))
    return [label, *cells, f"{sum(means) / len(means):.1f}" if len(means) == len(targets) else "-"]


def table(lines: Sequence[dict[str, Any]], spec: DomainSet, targets: Sequence[int]) -> str:
    """A DomainBed-style markdown table: configs x target domains (mean ± s.e. over seeds) and Avg."""
    labels = list(dict.fromkeys(line["config"] for line in lines))
    header = ["Config", *(spec.domains[t] for t in targets), "Avg"]
    rows = []
    for label in labels:
        rows.append(_row(label, [x for x in lines if x["config"] == label], "test_acc", targets))
        if any(x.get("online_test_acc") is not None for x in lines if x["config"] == label):
            online = [x for x in lines if x["config"] == label and x.get("online_test_acc") is not None]
            rows.append(_row(f"{label} (online student)", online, "online_test_acc", targets))
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def merge_lines(earlier: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``earlier`` results lines whose run directory still exists, with ``lines`` laid over them: one
    line per run directory, a rerun's line in its old place, new runs at the end."""
    merged = {line["run_dir"]: line for line in earlier
              if isinstance(line.get("run_dir"), str) and Path(line["run_dir"]).is_dir()}
    merged.update((line["run_dir"], line) for line in lines)
    return list(merged.values())


def collect(runs: Sequence[RunSpec], spec: DomainSet, out_dir: str | Path
            ) -> tuple[list[dict[str, Any]], str]:
    """Merge the finished runs into ``results.jsonl`` and write ``results.md`` over every run it lists of
    this dataset; returns the lines of this call's runs and the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [line for run in runs if (line := result_line(run, spec)) is not None]
    every = merge_lines(read_results(out / "results.jsonl"), lines)
    (out / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in every))
    dataset = runs[0].config.data.name if runs else None
    shown = [line for line in every if line.get("dataset") == dataset]
    targets = sorted({line["target"] for line in shown})
    seeds = sorted({line["seed"] for line in shown if line["config"] != "teacher"})
    splits = sorted({line["split_seed"] for line in shown if line.get("split_seed") is not None})
    text = (f"{spec.title}, leave-one-domain-out, training-domain validation; test accuracy (%) on the "
            f"target domain, mean ± standard error over seeds {seeds} (in/out split seeds {splits}; a "
            f"single seed's value has no spread)\n\n{table(shown, spec, targets)}\n")
    (out / "results.md").write_text(text)
    return lines, text


def run_dg(configs: Sequence[str | Path], overrides: Sequence[str] = (), *, teacher: str | Path | None = None,
           seeds: Sequence[int] = (0,), targets: Sequence[int | str] | None = None,
           out_dir: str | Path = "runs/dg", split_seed: int | None = None,
           executor: ExecutorConfig | None = None, workers: int | None = None,
           echo: Callable[[str], None] = print) -> tuple[Outcome, str]:
    """Plan, train what is missing, and aggregate the finished runs; returns the outcome and the
    markdown table."""
    spec, runs = plan(configs, overrides, teacher=teacher, seeds=seeds, targets=targets, out_dir=out_dir,
                      split_seed=split_seed)
    outcome = execute(runs, out_dir, executor, workers=workers, echo=echo)
    return outcome, collect(runs, spec, out_dir)[1]
