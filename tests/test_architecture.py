"""The shape of the code: imports run one way down the layers, and every package imports on its own."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: the layers of docs/architecture.md, bottom first; a module may import its own layer and those below
LAYERS = [
    ["kdlab.core"],
    ["kdlab.config"],
    ["kdlab.data", "kdlab.models", "kdlab.ensemble"],
    ["kdlab.methods"],
    ["kdlab.engine"],
    ["kdlab.assembly", "kdlab.robustness"],
    ["kdlab.teacher_cache"],
    ["kdlab.run"],
    ["kdlab.protocols", "kdlab.evaluate", "kdlab.export", "kdlab.saved_run"],
    ["kdlab.cli", "kdlab.report", "kdlab.api", "kdlab.demo", "kdlab"],
]


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of ``module``: that of the longest layer entry it is, or lies under."""
    best, index = "", -1
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > len(best):
                best, index = entry, i
    assert index >= 0, f"{module} is in no layer of LAYERS"
    return index


def kdlab_imports(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, module) of every kdlab module ``path`` imports, wherever the import statement stands."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name == "kdlab" or name.startswith("kdlab.")]
    return found


def test_imports_run_down_the_layers():
    upward = []
    for path in sorted((SRC / "kdlab").rglob("*.py")):
        source = module_name(path)
        for line, target in kdlab_imports(path):
            if layer_of(target) > layer_of(source):
                upward.append(f"{path.relative_to(SRC)}:{line}: {source} (layer {layer_of(source)}) imports "
                              f"{target} (layer {layer_of(target)})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "kdlab" / "models" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def late():\n    from ..engine import Trainer\n")
    assert kdlab_imports(bad, tmp_path) == [(2, "kdlab.engine")]
    assert layer_of("kdlab.engine") > layer_of("kdlab.models.bad")


def test_every_package_and_public_module_imports_first_in_a_fresh_interpreter():
    """Each is imported with no other kdlab module loaded before it (third-party packages are loaded
    once up front, to keep this fast)."""
    names = sorted({module_name(p) for p in (SRC / "kdlab").rglob("__init__.py")}
                   | {module_name(p) for p in (SRC / "kdlab").glob("*.py")})
    script = (
        "import importlib, sys\n"
        "import numpy, pydantic, torch, torchvision, yaml\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for key in [k for k in sys.modules if k == 'kdlab' or k.startswith('kdlab.')]:\n"
        "        del sys.modules[key]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", done.stdout
    assert len(names) > 20
