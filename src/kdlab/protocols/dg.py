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

The protocol writes ``OUT/results.jsonl``: one line per finished run in kdlab's one results format
(:mod:`.result_line`: its cell (config, target, seed), hyper-parameters, every split's metrics, the
target domain's accuracy, cost). It covers every finished run of the output directory: a call merges
its runs into the ``results.jsonl`` already there (one line per run directory), so another seed or
config adds rows instead of replacing them. ``kdlab dg`` then writes ``OUT/results.md`` from it
(:mod:`kdlab.report.domains`: DomainBed's table, configs x target domains, mean ± standard error over
seeds), as ``kdlab report OUT`` does.

The runs go to the same executor as a study's (:mod:`.runner` on :mod:`.executor`: local subprocesses,
``workers`` at a time, or Ray tasks), each student after its teacher, with the same guarantees: finished
runs (a readable ``summary.json``) are reused, interrupted ones resume from ``last.pt``, a failed run is
tried again ``retries`` times and its students are blocked. ``OUT/configs``, ``OUT/logs`` and
``OUT/status`` hold each run's config, output and state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.config.load import ConfigError, apply_overrides, read_yaml, set_dotted, validate
from kdlab.config.schema import RunConfig
from kdlab.data.domains import DOMAIN_SETS, DomainSet
from kdlab.protocols.executor import ExecutorConfig, make_executor
from kdlab.protocols.records import RESULTS, read_results, read_summary
from kdlab.protocols.result_line import reported_split, run_line, upgrade
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
    ids = {str(run.run_dir): run_id(run, out) for run in runs}
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


def run_id(run: RunSpec, out_dir: Path) -> str:
    """The run's id: its directory under ``out_dir``, parts joined by ``__``."""
    return "__".join(run.run_dir.relative_to(out_dir).parts)


def dg_line(run: RunSpec, spec: DomainSet, out_dir: Path) -> dict[str, Any] | None:
    """The results line (:mod:`.result_line`) of a finished run (None when it has not finished): its
    cell (config, target domain, seed), its data and averaging, and its test accuracy on the target."""
    summary = read_summary(run.run_dir)
    if summary is None:
        return None
    averaging = summary.get("averaging") or {}
    target_name = spec.domains[run.target]
    identity = {
        "role": "teacher" if run.label == "teacher" else "student",
        "config": run.label,
        "dataset": run.config.data.name,
        "target": run.target,
        "target_name": target_name,
        "split_seed": run.config.data.split_seed,
        "method": run.config.method.name,
        "averaging": averaging.get("strategy", "none"),
        "averaged_steps": [averaging.get("first_step"), averaging.get("last_step")] if averaging else None,
        "teacher_run": run.config.teacher.checkpoint if run.config.teacher is not None else None,
    }
    tree = run.config.model_dump(mode="json")
    line = run_line(protocol="dg", run_id=run_id(run, out_dir), run_dir=run.run_dir, results_dir=out_dir,
                    tree=tree, axes={"config": run.label, "target": target_name, "seed": run.seed},
                    seed=run.seed, identity=identity, summary=summary)
    line["domains"] = {target_name: summary[reported_split(summary)]["top1"]}
    return line


def merge_lines(earlier: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]], out_dir: Path
                ) -> list[dict[str, Any]]:
    """``earlier`` results lines whose run directory still exists, with ``lines`` laid over them: one
    line per run id, a rerun's line in its old place, new runs at the end. Lines of an earlier
    kdlab are replaced by this call's line of the same run, else kept as they are."""
    def key(line: dict[str, Any]) -> str | None:
        run_dir = line.get("run_dir")
        if not isinstance(run_dir, str) or not (out_dir / run_dir).is_dir():
            return None
        path = (out_dir / run_dir).resolve()
        inside = path.is_relative_to(out_dir.resolve())
        return "__".join(path.relative_to(out_dir.resolve()).parts) if inside else str(path)

    merged = {k: line for line in earlier if (k := key(line)) is not None}
    merged.update((line["id"], line) for line in lines)
    return list(merged.values())


def collect(runs: Sequence[RunSpec], spec: DomainSet, out_dir: str | Path) -> list[dict[str, Any]]:
    """Merge the finished runs into ``results.jsonl`` (written whole, atomically, lines of an earlier
    kdlab converted to the current format); returns every line it lists."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [line for run in runs if (line := dg_line(run, spec, out)) is not None]
    earlier = [upgrade(line) or line for line in read_results(out / RESULTS)]
    every = merge_lines(earlier, lines, out)
    tmp = out / f"{RESULTS}.tmp"
    tmp.write_text("".join(json.dumps(line) + "\n" for line in every))
    os.replace(tmp, out / RESULTS)
    return every


def run_dg(configs: Sequence[str | Path], overrides: Sequence[str] = (), *, teacher: str | Path | None = None,
           seeds: Sequence[int] = (0,), targets: Sequence[int | str] | None = None,
           out_dir: str | Path = "runs/dg", split_seed: int | None = None,
           executor: ExecutorConfig | None = None, workers: int | None = None,
           echo: Callable[[str], None] = print) -> tuple[Outcome, list[dict[str, Any]]]:
    """Plan, train what is missing, and list the finished runs in ``results.jsonl``; returns the
    outcome and every line of that file."""
    spec, runs = plan(configs, overrides, teacher=teacher, seeds=seeds, targets=targets, out_dir=out_dir,
                      split_seed=split_seed)
    outcome = execute(runs, out_dir, executor, workers=workers, echo=echo)
    return outcome, collect(runs, spec, out_dir)
