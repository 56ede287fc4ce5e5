"""``kdlab export``: a trained student as a plain state_dict, TorchScript and ONNX, each checked.

The student comes from a kdlab checkpoint or run directory (the model its summary reports:
``averaged.pt``, else ``best.pt``, else ``last.pt``): the student, an averaged model, the merged network
of ``batchensemble_kd``; ``model`` picks another model the method evaluates (``peer1``, ... of ``dml``).
A checkpoint that holds a BatchEnsemble student (``last.pt`` of a ``batchensemble_kd`` run) is merged
first (:func:`kdlab.ensemble.merge_batchensemble`). Files written to ``out_dir``:

- ``model.pt``: ``torch.save`` of the state_dict of the model's architecture (plain tensors; loads
  with ``torch.load(weights_only=True)`` into a freshly built model of that architecture; checked by
  loading it into a zeroed copy);
- ``model.torchscript.pt``: ``torch.jit.trace`` of the model in eval mode (TorchScript is deprecated
  in recent PyTorch, but still the format many deployments read);
- ``model.onnx``: the ``torch.export``-based ONNX exporter, with a dynamic batch dimension (needs the
  ``export`` extra: onnx, onnxscript, onnxruntime);
- ``export.json``: architecture, class count, input shape and the input normalization the model
  expects (it takes *normalized* inputs: ``(pixel - mean) / std``), and per format the largest
  absolute difference from PyTorch's logits on a batch of the run's test split, or of seeded random
  inputs when the run's data were given from Python (``check_inputs``; ONNX is run with onnxruntime).
  A difference above ``atol + rtol * |logits|`` fails the export.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.assembly import SavedModel, load_saved_model
from kdlab.core.errors import UserError

FORMATS = ("state_dict", "torchscript", "onnx")
ONNX_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


class ExportError(UserError, ValueError):
    """An export that could not be written or whose output differs from PyTorch's; one line."""


def _check(name: str, got: Tensor, expected: Tensor, atol: float, rtol: float) -> float:
    diff = (got.float() - expected.float()).abs()
    if not bool((diff <= atol + rtol * expected.float().abs()).all()):
        raise ExportError(f"{name} export differs from PyTorch by up to {float(diff.max()):.3g} "
                          f"(atol {atol}, rtol {rtol})")
    return float(diff.max())


@contextlib.contextmanager
def _export_step(name: str) -> Iterator[None]:
    """A converter's failure (an operator it does not support, say) as one :class:`ExportError` line."""
    try:
        yield
    except (ExportError, ImportError):
        raise
    except Exception as exc:  # the converters raise many types; each is this model not exporting
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"{name} export failed ({type(exc).__name__}: {first}); export the other formats "
                          f"with --format, e.g. --format state_dict") from None


def _torchscript(model: nn.Module, batch: Tensor, path: Path) -> Tensor:
    with warnings.catch_warnings(), _export_step("TorchScript"):
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(model, (batch,)).save(str(path))
        with torch.no_grad():
            return torch.jit.load(str(path))(batch)


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Loggers ``names`` at WARNING inside the block (the ONNX optimizer logs every pass at INFO)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _onnx(model: nn.Module, batch: Tensor, path: Path) -> Tensor:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'kdlab[export]'") \
            from None
    batch_dim = torch.export.Dim("batch")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_loggers(*ONNX_LOGGERS):
        warnings.simplefilter("ignore")
        try:
            with _export_step("ONNX"):
                torch.onnx.export(model, (batch,), str(path), dynamo=True, verbose=False, external_data=False,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_shapes=({0: batch_dim},))
        except ImportError as exc:
            raise ExportError(f"ONNX export needs {exc.name}: pip install 'kdlab[export]'") from None
    with _export_step("ONNX"):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (logits,) = session.run(["logits"], {"input": batch.numpy()})
    return torch.from_numpy(logits)


def export_student(location: str | Path, out_dir: str | Path, overrides: Sequence[str] = (),
                   formats: Sequence[str] = FORMATS, check_batch: int = 32, atol: float = 1e-4,
                   rtol: float = 1e-4, model: str = "student") -> dict[str, Any]:
    """Write the student (or another model of the run: ``model``) of ``location`` to ``out_dir`` in
    ``formats``; returns what ``export.json`` holds."""
    check_formats(formats)
    saved = load_saved_model(location, overrides, device="cpu", model=model)
    return export_saved(saved, out_dir, formats, check_batch, atol, rtol, model)


def check_formats(formats: Sequence[str]) -> None:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ExportError(f"unknown export format {unknown[0]!r}; formats: {', '.join(FORMATS)}")


def check_inputs(saved: SavedModel, count: int) -> Tensor:
    """The batch every format is checked on: the run's first test images, or seeded standard-normal
    inputs (the normalized scale) when the run's data are not at hand."""
    if saved.data is None:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(count, *saved.facts.input_shape, generator=generator)
    saved.data.test.set_epoch(0)
    return next(iter(saved.data.test)).inputs[:count].float().cpu().contiguous()


def export_saved(saved: SavedModel, out_dir: str | Path, formats: Sequence[str] = FORMATS,
                 check_batch: int = 32, atol: float = 1e-4, rtol: float = 1e-4,
                 run_model: str = "student") -> dict[str, Any]:
    """:func:`export_student` of a model already read back (:func:`kdlab.assembly.load_saved_model`)."""
    check_formats(formats)
    network = copy.deepcopy(saved.model).float().cpu().eval()
    batch = check_inputs(saved, check_batch)
    with torch.no_grad():
        expected = network(batch)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out: {out} is a file, not a folder for the exported files")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    facts = saved.facts
    try:
        report = {"checkpoint": str(saved.path), "model": saved.architecture, "run_model": run_model,
                  "num_classes": facts.num_classes, "input_shape": list(facts.input_shape),
                  "mean": list(facts.mean), "std": list(facts.std), "check_batch": int(batch.shape[0]),
                  "check_inputs": "test" if saved.data is not None else "random",
                  **_write_formats(network, batch, expected, staging, formats, atol, rtol)}
        (staging / "export.json").write_text(json.dumps(report, indent=2) + "\n")
        out.mkdir(exist_ok=True)
        for file in staging.iterdir():
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _write_formats(network: nn.Module, batch: Tensor, expected: Tensor, out: Path, formats: Sequence[str],
                   atol: float, rtol: float) -> dict[str, Any]:
    """Write and check each format in ``out``: the ``files`` and ``max_abs_diff`` of ``export.json``."""
    report: dict[str, Any] = {"files": {}, "max_abs_diff": {}}
    if "state_dict" in formats:
        target = out / "model.pt"
        torch.save({k: v.detach().clone() for k, v in network.state_dict().items()}, target)
        fresh = copy.deepcopy(network)
        for tensor in fresh.state_dict().values():
            tensor.zero_()
        fresh.load_state_dict(torch.load(target, weights_only=True))
        with torch.no_grad():
            report["max_abs_diff"]["state_dict"] = _check("state_dict", fresh(batch), expected, atol, rtol)
        report["files"]["state_dict"] = target.name
    if "torchscript" in formats:
        target = out / "model.torchscript.pt"
        report["max_abs_diff"]["torchscript"] = _check("TorchScript", _torchscript(network, batch, target),
                                                       expected, atol, rtol)
        report["files"]["torchscript"] = target.name
    if "onnx" in formats:
        target = out / "model.onnx"
        report["max_abs_diff"]["onnx"] = _check("ONNX", _onnx(network, batch, target), expected, atol, rtol)
        report["files"]["onnx"] = target.name
    return report
