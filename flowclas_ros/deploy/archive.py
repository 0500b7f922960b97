"""torch.export archives (``.pt2``): saving without pickles, auditing before loading, checking after.

Trust: ``torch.export.load`` (torch 2.13, "pt2 archive" zip) reads plain tensors as raw
bytes and the graph as JSON, but it also unpickles (``torch.load(weights_only=False)``,
``pickle.loads``) legacy weight and constant files (``data/weights/<model>.pt``,
``data/constants/<model>.pt``), tensor subclasses, custom and opaque objects, sample inputs
and, as a fallback, the older 2.7 zip layout; it resolves every graph call target to any
attribute of ``torch``, and it parses symbolic shape expressions with ``sympy.sympify``,
which evaluates Python. :func:`audit_program_archive` therefore accepts exactly the entries
torch writes today for our networks (:data:`ENTRIES`, one pattern per kind, stored, one root
folder), weights and constants only as raw tensors, sample inputs only empty, graph targets
only from the operator allow-list (:mod:`flowclas_ros.deploy.ops`) and shape expressions only
in the plain arithmetic torch writes. :func:`load_program` audits, loads, and checks the
loaded graph again. ``ExportedProgram.module()`` execs the archive's ``guards_code`` when
the program has sample inputs: callers use ``module(check_guards=False)``.
"""

from __future__ import annotations

import copy
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from flowclas_ros.deploy.errors import UnsafeArtefactError
from flowclas_ros.deploy.ops import check_program, op_refusal
from flowclas_ros.errors import UserError
from flowclas_ros.structured import expect_mapping, load_json


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """``torch.export.save`` without the sample inputs (they would be pickled)."""
    program = copy.copy(program)
    program.example_inputs = None
    torch.export.save(program, str(path))


# Every entry torch 2.13's torch.export.save writes for our networks (model name "model"),
# by kind, below the archive's one root folder; any other entry is refused.
ENTRIES = {
    "format": r"archive_format",
    "version": r"archive_version",
    "byte order": r"byteorder",
    "zip version": r"\.data/version",
    "serialization id": r"\.data/serialization_id",
    "graph": r"models/model\.json",
    "weights config": r"data/weights/model_weights_config\.json",
    "weight": r"data/weights/weight_\d+",
    "constants config": r"data/constants/model_constants_config\.json",
    "constant": r"data/constants/tensor_\d+",
    "sample inputs": r"data/sample_inputs/model\.pt",  # empty: we save without them
}
_ENTRY = re.compile(r"(?P<root>\w[\w.-]*)/(?P<rest>" + "|".join(f"(?P<k{i}>{p})" for i, p in enumerate(ENTRIES.values())) + ")")
_KINDS = list(ENTRIES)
MAX_GRAPH_BYTES = 256 * 2**20
MAX_EXPR_CHARS = 4096
# Shape expressions as torch writes them, e.g. "Symbol('s77', positive=True, integer=True)",
# "2*s35", "FloorDiv(s0, 8)": these names, numbers, quoted symbol names and arithmetic only
# (no attribute access, no subscripts, no powers), so sympify's eval can compute nothing else.
_EXPR_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Add", "Mul", "Max", "Min", "FloorDiv", "CeilDiv", "CleanDiv", "Mod",
    "PythonMod", "ModularIndexing", "IntTrueDiv", "FloatTrueDiv", "CeilToInt", "FloorToInt", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "True", "False", "positive", "integer", "nonnegative", "real", "finite", "oo", "int_oo",
})
_EXPR_TOKEN = re.compile(r"\s+|'[a-z]+\d*'|\d+(\.\d+)?|[A-Za-z_]\w*|==|!=|<=|>=|[-+*/%(),=<>]")


def _expr_refusal(expr: Any) -> str | None:
    """Why a serialized shape expression is not one torch writes, or None."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        return "is not a short expression string"
    if "**" in expr:
        return "raises to a power"
    pos = 0
    while pos < len(expr):
        match = _EXPR_TOKEN.match(expr, pos)
        if match is None:
            return f"has {expr[pos:pos + 10]!r}"
        token = match.group()
        if (token[0].isalpha() or token[0] == "_") and token not in _EXPR_NAMES and not re.fullmatch(r"[a-z]\d+", token):
            return f"names {token!r}"
        pos = match.end()
    return None


def _dicts(value: Any) -> Iterator[dict]:
    """Every mapping inside ``value``, in document order (so errors name the first offender)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(reversed(item.values()))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def _audit_graph(graph: Any, path: Path) -> None:
    """Every call target on the allow-list, every shape expression plain arithmetic."""
    for item in _dicts(expect_mapping(graph, f"{path} graph")):
        if {"target", "inputs", "outputs"} <= item.keys():
            if (reason := op_refusal(str(item["target"]))) is not None:
                raise UnsafeArtefactError(f"{path}: {reason}; refusing to load")
        if "expr_str" in item and (reason := _expr_refusal(item["expr_str"])) is not None:
            raise UnsafeArtefactError(f"{path}: a shape expression {reason}; refusing to load")


def _audit_payloads(config: Any, what: str, prefix: str, present: set[str], path: Path) -> set[str]:
    """The raw-tensor files a weights/constants config names (none pickled, all present)."""
    entries = expect_mapping(expect_mapping(config, what).get("config"), what)
    named = set()
    for fqn, meta in entries.items():
        meta = expect_mapping(meta, f"{what} {fqn}")
        name = meta.get("path_name")
        if meta.get("use_pickle") is not False or not isinstance(name, str) or not re.fullmatch(prefix + r"\d+", name):
            raise UnsafeArtefactError(f"{path}: {fqn} is not stored as a raw tensor (a pickle?); refusing to load")
        if name not in present:
            raise UnsafeArtefactError(f"{path}: {fqn} names a missing entry {name!r}; refusing to load")
        named.add(name)
    return named


def audit_program_archive(path: Path) -> None:
    """Refuse a pt2 archive holding anything our exporter does not write (UnsafeArtefactError)."""
    try:
        with zipfile.ZipFile(path) as archive:
            _audit_zip(archive, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, ValueError) as exc:
        raise UnsafeArtefactError(f"{path} is not a valid torch.export archive ({exc}); refusing to load") from None
    except UnsafeArtefactError:
        raise
    except UserError as exc:  # a malformed JSON entry
        raise UnsafeArtefactError(f"{path} is not a torch.export archive we wrote ({exc}); refusing to load") from None


def _audit_zip(archive: zipfile.ZipFile, path: Path) -> None:
    kinds: dict[str, list[zipfile.ZipInfo]] = {kind: [] for kind in _KINDS}
    roots, names = set(), set()
    for info in archive.infolist():
        match = _ENTRY.fullmatch(info.filename)
        if match is None or info.filename in names:
            raise UnsafeArtefactError(f"{path}: unexpected entry {info.filename!r}; refusing to load")
        if info.compress_type != zipfile.ZIP_STORED:
            raise UnsafeArtefactError(f"{path}: entry {info.filename!r} is compressed, torch never does that; refusing to load")
        names.add(info.filename)
        roots.add(match["root"])
        kind = next(k for i, k in enumerate(_KINDS) if match[f"k{i}"] is not None)
        kinds[kind].append(info)
    if len(roots) != 1:
        raise UnsafeArtefactError(f"{path}: entries under {len(roots)} root folders, not one; refusing to load")
    if any(info.file_size for info in kinds["sample inputs"]):
        raise UnsafeArtefactError(f"{path}: holds pickled sample inputs; refusing to load")
    read = archive.read
    if [read(i) for i in kinds["format"]] != [b"pt2"] or [read(i) for i in kinds["version"]] != [b"0"]:
        raise UnsafeArtefactError(f"{path} is not a version 0 pt2 archive; refusing to load")
    if len(kinds["graph"]) != 1 or kinds["graph"][0].file_size > MAX_GRAPH_BYTES:
        raise UnsafeArtefactError(f"{path}: no graph, or one over {MAX_GRAPH_BYTES >> 20} MiB; refusing to load")
    _audit_graph(load_json(read(kinds["graph"][0]), f"{path} graph"), path)
    for config, payload, prefix in (("weights config", "weight", "weight_"), ("constants config", "constant", "tensor_")):
        present = {info.filename.rsplit("/", 1)[1] for info in kinds[payload]}
        named: set[str] = set()
        for info in kinds[config]:
            named |= _audit_payloads(load_json(read(info), f"{path} {config}"), f"{path} {config}", prefix, present, path)
        if present - named:
            raise UnsafeArtefactError(f"{path}: {sorted(present - named)[0]} is not named by the {config}; refusing to load")


def load_program(path: Path) -> torch.export.ExportedProgram:
    """Audit, ``torch.export.load``, then check the loaded graph (UnsafeArtefactError when refused)."""
    audit_program_archive(path)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # a third-party deserialiser on a file: any failure is the file's
        first = " ".join(str(exc).split())[:200]
        raise UnsafeArtefactError(f"{path}: torch.export.load failed ({type(exc).__name__}: {first})") from None
    check_program(program, path)
    return program
