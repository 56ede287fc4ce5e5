"""The ``kdlab`` command line: train, cache-teacher, eval, demo, list, dg, study, report, export."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kdlab import __version__
from kdlab.config.load import load_config
from kdlab.core import distributed
from kdlab.core.checkpoint import NO_SPACE
from kdlab.core.errors import ConfigError, RunInterrupted, UserError
from kdlab.protocols.executor import ExecutorConfig

CHECKPOINT_HELP = "a kdlab checkpoint, or a run directory (the model its summary reports: averaged.pt, " \
                  "best.pt or last.pt)"
MODEL_HELP = "the student (default), or another model the method evaluates, e.g. peer1 of a dml cohort"


def cmd_train(args: argparse.Namespace) -> int:
    from kdlab.run import train

    if args.resume is not None:
        saved = Path(args.resume) / "config.yaml"
        overrides = ([args.config] if args.config else []) + list(args.overrides)
        config = load_config(saved, overrides)
    elif args.config is None:
        raise ConfigError("kdlab train: give a CONFIG file, or --resume RUN_DIR")
    else:
        config = load_config(args.config, args.overrides)
    if args.quiet:
        config.train.progress = False
    result = train(config, resume=args.resume)
    print(json.dumps({"run_dir": str(result.run_dir), "test_last": result.summary["test_last"],
                      "test_selected": result.summary["test_selected"]}, indent=2))
    return 0


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    from kdlab.teacher_cache import fill_teacher_cache

    config = load_config(args.config, args.overrides)
    root = fill_teacher_cache(config, shard=args.shard, num_shards=args.num_shards)
    print(f"teacher cache: {root}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from kdlab.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(args.checkpoint, args.overrides, splits=args.split, model=args.model)
    print(json.dumps(results, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kdlab.demo import format_table, run_demo

    root, rows = run_demo(args.out_dir, seed=args.seed, epochs=args.epochs)
    print(format_table(rows))
    print(f"\nrun directory: {root}")
    return 0


def executor_config(args: argparse.Namespace, base: ExecutorConfig) -> ExecutorConfig:
    """``base`` (a study file's ``executor`` section) with the command line's executor flags laid over it;
    ``--ray-address`` implies ``--backend ray``."""
    flags = {"backend": args.backend, "address": args.ray_address, "num_cpus": args.num_cpus,
             "num_gpus": args.num_gpus, "retries": args.retries}
    if args.ray_address is not None:
        if args.backend == "local":
            raise ConfigError("--ray-address: names a Ray cluster, which --backend local does not use")
        flags["backend"] = "ray"
    given = {key: value for key, value in flags.items() if value is not None}
    return ExecutorConfig.model_validate({**base.model_dump(), **given})


def cmd_study(args: argparse.Namespace) -> int:
    from kdlab.protocols.study import Study
    from kdlab.protocols.study_schema import load_study

    config, folder = load_study(args.study)
    config.executor = executor_config(args, config.executor)
    study = Study(config, folder, workers=args.workers)
    if args.dry_run:
        study.check()
        for job in study.jobs:
            print(f"{job.id}" + (f"  (after {job.depends})" if job.depends else ""))
        print(f"{len(study.jobs)} runs in {study.dir}")
        return 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a polite kill stops the runs like Ctrl-C
    try:
        outcome = study.run()
    except KeyboardInterrupt:
        print(f"kdlab: interrupted; resume with: kdlab study {args.study}", file=sys.stderr)
        return 130
    return 0 if outcome.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from kdlab.report import write_report

    path = write_report(args.directory, args.out, split=args.split)
    print(f"report: {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from kdlab.cli.listing import listing

    print(listing(args.what))
    return 0


def cmd_dg(args: argparse.Namespace) -> int:
    from kdlab.protocols.dg import run_dg
    from kdlab.report.domains import write_domain_tables

    configs = [c for c in args.configs if "=" not in c]
    overrides = [c for c in args.configs if "=" in c]
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        outcome, lines = run_dg(configs, overrides, teacher=args.teacher, seeds=args.seeds,
                               targets=args.targets, out_dir=args.out_dir, split_seed=args.split_seed,
                               executor=executor_config(args, ExecutorConfig()), workers=args.workers,
                               echo=(lambda _: None) if args.quiet else print)
    except KeyboardInterrupt:
        print("kdlab: interrupted; rerun the same kdlab dg command to resume", file=sys.stderr)
        return 130
    if lines:
        print(write_domain_tables(lines, Path(args.out_dir) / "results.md"))
        print(f"results: {Path(args.out_dir) / 'results.md'} and {Path(args.out_dir) / 'results.jsonl'}")
    if not outcome.ok:
        print(f"kdlab: {len(outcome.failed)} run(s) failed and {len(outcome.blocked)} blocked; their output "
              f"is in {Path(args.out_dir) / 'logs'}", file=sys.stderr)
    return 0 if outcome.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    from kdlab.export import export_student

    report = export_student(args.checkpoint, args.out, args.overrides,
                            formats=args.format or ("state_dict", "torchscript", "onnx"),
                            check_batch=args.check_batch, model=args.model)
    print(json.dumps(report, indent=2))
    return 0


def amount(*, zero: bool) -> Callable[[str], float]:
    """An argparse type: a number above 0 (or, with ``zero``, of at least 0)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value >= 0 if zero else value > 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a number {'of at least' if zero else 'above'} 0, "
                                             f"got {text}")
        return value

    return parse


def executor_flags(p: argparse.ArgumentParser) -> None:
    """The flags that choose where runs execute (docs/scaling.md)."""
    p.add_argument("--backend", choices=["local", "ray"],
                   help="local subprocesses (default) or Ray tasks (pip install \"kdlab[ray]\")")
    p.add_argument("--ray-address", metavar="ADDRESS",
                   help="ray: 'auto' or HOST:PORT of a running cluster (default: start Ray on this machine)")
    p.add_argument("--num-cpus", type=amount(zero=False), help="ray: CPUs per run (default 1; its threads)")
    p.add_argument("--num-gpus", type=amount(zero=True), help="ray: GPUs per run (default 0)")
    p.add_argument("--retries", type=count(0), help="tries again of a failed run, each resuming (default 1)")


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected at least {minimum}, got {value}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kdlab", description="Knowledge distillation for image classifiers.")
    top.add_argument("--version", action="version", version=f"kdlab {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a run from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config (optional with --resume)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.1 train.epochs=5")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar; log lines only")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache-teacher", help="fill a replayable teacher-output cache (teacher_cache section)")
    p.add_argument("config", help="the run's YAML config; its teacher_cache section says where and what")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. teacher_cache.epochs=20")
    p.add_argument("--shard", type=count(0), default=0,
                   help="this process's share of the work: 0..num-shards-1")
    p.add_argument("--num-shards", type=count(1), default=1, help="processes filling the cache together")
    p.set_defaults(func=cmd_cache_teacher)

    p = sub.add_parser("eval", help="evaluate a checkpoint (a .pt file or a run directory)")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("overrides", nargs="*", help="dotted overrides of the saved config, e.g. data.root=...")
    p.add_argument("--split", choices=["val", "test"], action="append", help="default: test")
    p.add_argument("--model", default="student", help=MODEL_HELP)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="teacher, student and KD student on scikit-learn digits",
                       description="Train a teacher CNN, a student from scratch and a KD student on "
                                   "scikit-learn's bundled digits (no download), and print their test top-1.")
    p.add_argument("--seed", type=count(0), default=0, help="seed of every run (default: 0)")
    p.add_argument("--epochs", type=count(1), default=20, help="epochs of each of the three runs")
    p.add_argument("--out-dir", default="runs", help="where the demo's run directories go (default: runs)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("dg", help="leave-one-domain-out: every target domain, teachers and students, a table")
    p.add_argument("configs", nargs="+", help="student configs (YAML), then KEY=VALUE overrides for all runs")
    p.add_argument("--teacher", metavar="CONFIG",
                   help="teacher config, trained on the source domains per target and seed")
    p.add_argument("--seeds", type=count(0), nargs="+", default=[0],
                   help="seeds (also the in/out split seed)")
    p.add_argument("--split-seed", type=count(0),
                   help="one in/out split for every seed (and one teacher per target); default: split = seed")
    p.add_argument("--targets", nargs="+", help="target domains by index or name (default: all)")
    p.add_argument("--out-dir", default="runs/dg")
    p.add_argument("--workers", type=count(1), help="parallel runs (default: 1 locally; on ray, no cap)")
    p.add_argument("--quiet", action="store_true", help="the table only: no line per run started or done")
    executor_flags(p)
    p.set_defaults(func=cmd_dg)

    p = sub.add_parser("export", help="a trained student as a state_dict, TorchScript and ONNX, checked")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("overrides", nargs="*", help="dotted overrides of the saved config, e.g. data.root=...")
    p.add_argument("--out", required=True, metavar="DIR", help="where model.pt, .torchscript.pt, .onnx go")
    p.add_argument("--format", choices=["state_dict", "torchscript", "onnx"], action="append",
                   help="default: all three")
    p.add_argument("--check-batch", type=count(1), default=32, help="test images compared against PyTorch")
    p.add_argument("--model", default="student", help=MODEL_HELP)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("study", help="run a grid of runs (methods x conditions x pairs x seeds), resumably")
    p.add_argument("study", help="study YAML file")
    p.add_argument("--workers", type=count(1), help="parallel runs (default: the study file's 'workers')")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    executor_flags(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("report", help="markdown tables and PNG plots from a study's results.jsonl")
    p.add_argument("directory", help="a study directory (or a results.jsonl file)")
    p.add_argument("--out", help="output folder (default: DIRECTORY/report)")
    p.add_argument("--split", choices=["test_last", "test_selected"],
                   help="which test metrics to tabulate (default: the study file's report.split)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("list", help="list registered methods, models or datasets, one line each")
    p.add_argument("what", choices=["methods", "models", "datasets"])
    p.set_defaults(func=cmd_list)
    for command in sub.choices.values():
        command.set_defaults(parser=command)
    return top


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed command line; ``KEY=VALUE`` overrides may come anywhere after the subcommand, and any
    other error prints the subcommand's usage."""
    args, extra = parser().parse_known_args(argv)
    overrides = [text for text in extra if "=" in text and not text.startswith("-")]
    field = "configs" if args.command == "dg" else "overrides"
    rest = [text for text in extra if text not in overrides] if hasattr(args, field) else extra
    if rest:
        args.parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if overrides:
        setattr(args, field, [*getattr(args, field), *overrides])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except UserError as exc:
        print(f"kdlab: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        print(f"kdlab: error: {exc.filename or 'a run file'}: no space left on the device; free some space "
              "and run again", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        print(f"kdlab: interrupted; resume with {exc.resume}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("kdlab: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()  # under torchrun: leave the process group before the interpreter exits


if __name__ == "__main__":
    sys.exit(main())
