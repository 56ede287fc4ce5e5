"""Read a YAML run config, apply dotted command-line overrides, validate, explain errors in one line."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kdlab.config.schema import RunConfig
from kdlab.core.errors import ConfigError
from kdlab.core.registry import closest


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` and ``5E+4`` as floats (YAML 1.1 needs a dot there), reads
    only decimal integers (``0x10``, ``010`` and ``1:30`` stay strings, which no count accepts) and
    refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


INT_TAG = "tag:yaml.org,2002:int"
DECIMAL_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")
_Loader.add_implicit_resolver(INT_TAG, DECIMAL_INT, list("-+0123456789"))
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != INT_TAG or regexp is DECIMAL_INT]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text: str) -> Any:
    """YAML ``text`` read with ``_Loader``; nesting too deep for PyYAML's recursion is a ``YAMLError``."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
    except RecursionError:
        raise yaml.YAMLError("lists or mappings nested too deeply") from None


def _section_model(root: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``path`` (for listing valid keys)."""
    model: type[BaseModel] | None = root
    for part in path[:-1]:
        if isinstance(part, int):  # an index into a list of sections keeps the section's model
            continue
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def explain(error: ValidationError, source: str, root: type[BaseModel] = RunConfig, prefix: str = "") -> str:
    """Turn the first validation error into one line naming the key, the problem and the fix.

    ``prefix`` is the dotted path of ``root`` inside the whole config (e.g. ``method.params.``).
    """
    first = error.errors()[0]
    loc = list(first["loc"])
    key = prefix + ".".join(str(p) for p in loc) or "<root>"
    kind = first["type"]
    if kind == "extra_forbidden":
        owner = _section_model(root, loc)
        valid = sorted(owner.model_fields) if owner else []
        hint = closest(str(loc[-1]), valid)
        listing = f"valid keys here: {', '.join(valid)}" if valid else "this section takes no keys"
        return f"{source}: unknown key '{key}'{hint}; {listing}"
    if kind == "missing":
        return f"{source}: missing required key '{key}'"
    value = first.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: '{key}' = {shown}: {message}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.lr=0.1`` -> (["optim", "lr"], 0.1); the value is read as a YAML scalar, never evaluated."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. optim.lr=0.1")
    try:
        value = safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"override {text!r}: value is not valid YAML ({problem})") from None
    return key.split("."), value


def set_dotted(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """``tree[a][b][c] = value`` for ``path = [a, b, c]``, creating sections as needed."""
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: '{part}' is not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``KEY.PATH=VALUE`` strings to a nested dict."""
    for text in overrides:
        set_dotted(tree, *parse_override(text))
    return tree


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file; ``extends: OTHER.yaml`` (relative to this file) inherits and overrides, and
    ``extends: [BASE.yaml, MIXIN.yaml]`` merges several, later ones over earlier ones."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    try:
        tree = safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    parents = [parent] if isinstance(parent, str) else parent
    if not isinstance(parents, list) or not parents or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: 'extends' must be a path to another config file, or a list of them")
    merged: dict[str, Any] = {}
    for other in parents:
        merged = deep_merge(merged, read_yaml(path.parent / other, (*_seen, path.resolve())))
    return deep_merge(merged, tree)


def override_source(error: ValidationError, overrides: Sequence[str]) -> str | None:
    """``command line override 'KEY=VALUE'`` when the first error's key was set (or its section created)
    by one of ``overrides`` (the last such wins, as it does when applied); None otherwise."""
    loc = [str(part) for part in error.errors()[0]["loc"]]
    found = None
    for text in overrides:
        path, _ = parse_override(text)
        if loc and (loc[:len(path)] == path or path[:len(loc)] == loc):
            found = f"command line override {text!r}"
    return found


def validate(tree: dict[str, Any], source: str = "config", overrides: Sequence[str] = ()) -> RunConfig:
    """The validated ``RunConfig``; an error is one line naming ``source``, or the command-line override
    among ``overrides`` that set the offending key."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(explain(exc, override_source(exc, overrides) or source)) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                base: dict[str, Any] | None = None) -> RunConfig:
    """Load ``path`` (or start from ``base``), apply overrides, and validate."""
    tree = read_yaml(path) if path is not None else copy.deepcopy(base or {})
    return validate(apply_overrides(tree, overrides), str(path) if path else "config", overrides)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
