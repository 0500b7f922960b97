"""Reading YAML and JSON that a user or a stranger wrote: safe constructors only, bounded
nesting, bounded alias expansion, one-line errors.

PyYAML's ``safe_load`` builds no objects, but a "billion laughs" document (aliases of aliases)
is a few hundred bytes that expands to billions of nodes the moment anything walks it, and
both parsers recurse, so a deeply nested document ends in RecursionError. Here the composed
YAML node graph is walked with aliases expanded and refused past ``MAX_NODES`` visits or
``MAX_DEPTH`` levels before anything is constructed; JSON gets the same depth bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from flowclas_ros.errors import UserError

MAX_DEPTH = 64  # our configs nest 4 levels; COCO annotations 4
MAX_NODES = 1_000_000  # values after alias expansion
MAX_CONFIG_BYTES = 16 * 2**20  # recipes, bundle configs, manifests, bag metadata


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200]


def _check_yaml_tree(root: yaml.Node, what: str) -> None:
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    visits = 0
    while stack:
        node, depth = stack.pop()
        visits += 1
        if visits > MAX_NODES:
            raise UserError(f"{what}: expands to more than {MAX_NODES} values (aliases of aliases?)")
        if depth > MAX_DEPTH:
            raise UserError(f"{what}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if (key.tag, key.value) in seen:  # YAML forbids it; PyYAML would keep the last silently
                        raise UserError(f"{what}: key {key.value[:40]!r} given twice in one mapping "
                                        f"(line {key.start_mark.line + 1})")
                    seen.add((key.tag, key.value))
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, depth + 1) for item in node.value)


def _check_json_tree(root: Any, what: str) -> None:
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UserError(f"{what}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def load_yaml(text: str, what: str) -> Any:
    """The value of one YAML document (``None`` when empty); ``what`` names it in errors."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_tree(node, what)
        return loader.construct_document(node)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:  # ValueError: a 5000-digit int, month 13
        raise UserError(f"{what}: not valid YAML: {_first_line(exc)}") from None
    except RecursionError:
        raise UserError(f"{what}: nested too deeply") from None
    finally:
        loader.dispose()


def load_json(text: str | bytes, what: str) -> Any:
    """The value of a JSON document; ``what`` names it in errors."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise UserError(f"{what}: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{what}: not valid JSON: {_first_line(exc)}") from None
    _check_json_tree(value, what)
    return value


def _read_text(path: Path, max_bytes: int) -> str:
    if path.exists() and not (path.is_file() or path.is_dir()):  # a FIFO or device would block or never end
        raise UserError(f"{path}: not a regular file, expected a config file")
    with path.open("rb") as file:
        data = file.read(max_bytes + 1)  # never more, whatever the size said a moment ago
    if len(data) > max_bytes:
        raise UserError(f"{path}: more than the {max_bytes} bytes a config may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None


def read_yaml(path: str | Path, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """``load_yaml`` of a file no larger than ``max_bytes``."""
    path = Path(path)
    return load_yaml(_read_text(path, max_bytes), str(path))


def read_json(path: str | Path, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """``load_json`` of a file no larger than ``max_bytes``."""
    path = Path(path)
    return load_json(_read_text(path, max_bytes), str(path))


def expect_mapping(value: Any, what: str, *, empty_ok: bool = True) -> dict[str, Any]:
    """``value`` as a dict with string keys (``None`` -> ``{}`` when ``empty_ok``), else a UserError."""
    if value is None and empty_ok:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{what}: expected a mapping of names to values, got {type(value).__name__}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise UserError(f"{what}: keys must be names, got {bad[0]!r}")
    return value
