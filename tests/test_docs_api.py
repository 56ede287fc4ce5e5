"""docs/api.md runs as written: every ``python`` block, in order, in one namespace, in a fresh folder."""

import re
from pathlib import Path

import pytest

from kdlab.methods import METHODS

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_every_example_of_the_api_page_runs(tmp_path, monkeypatch):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    try:
        for index, block in enumerate(blocks):
            try:
                exec(compile(block, f"{DOC.name} block {index + 1}", "exec"), namespace)
            except Exception as exc:
                pytest.fail(f"{DOC.name} block {index + 1} failed: {type(exc).__name__}: {exc}")
    finally:
        METHODS._items.pop("logit_mse", None)
    assert namespace["again"].evaluate(namespace["test_set"])["n"] == 80
    assert namespace["stopper"].history and namespace["stopper"].history[0][0] == 5
    assert (tmp_path / "exported" / "model.torchscript.pt").is_file()
