"""The architecture's import rules, checked on the import graph (function-level imports included).

Run as a script (``python test/test_layering.py``) to print the graph's summary.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flowclas_ros"

# (importing layer, imported layer): arrows the design forbids. A layer is the first part
# under flowclas_ros (a subpackage, or a top-level module such as replay).
LIBRARY = ("model", "deploy", "runtime", "metrics", "training", "synthetic", "replay", "demo", "bench", "annotate",
           "bagio", "errors", "files", "images", "logs", "vocabulary")
FORBIDDEN = {
    ("model", "runtime"), ("model", "deploy"), ("model", "training"), ("model", "replay"),
    ("deploy", "runtime"), ("deploy", "training"),
    ("metrics", "model"), ("metrics", "runtime"),
    *((layer, "commands") for layer in LIBRARY),
    *((layer, "ros") for layer in LIBRARY),
    *((layer, "training") for layer in ("model", "runtime", "metrics", "deploy")),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (functions, try blocks)."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    package = module_name(path, root).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # ``from pkg import module``
    return found


def import_graph() -> dict[str, set[str]]:
    """flowclas_ros module -> the flowclas_ros modules it imports."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in imports_of(path) if m in modules and m != name}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    edges = graph
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_forbidden_arrow():
    bad = sorted(
        f"{src} -> {dst}"
        for src, targets in import_graph().items()
        for dst in targets
        if (layer(src), layer(dst)) in FORBIDDEN
    )
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_no_import_cycle():
    graph = import_graph()
    # a package's __init__ importing its own submodules (re-exports) is not a cycle of design
    graph = {m: {t for t in ts if not (m.count(".") and t.startswith(m + "."))} for m, ts in graph.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_only_ros_imports_rclpy_and_message_packages():
    ros_only = ("rclpy", "sensor_msgs", "std_msgs", "vision_msgs", "diagnostic_msgs", "rcl_interfaces", "lifecycle_msgs")
    offenders = sorted(
        f"{module_name(p)} imports {m}"
        for p in PACKAGE.rglob("*.py")
        for m in imports_of(p)
        if m.split(".")[0] in ros_only and layer(module_name(p)) != "ros"
    )
    assert not offenders, offenders


def test_commands_are_a_leaf():
    importers = sorted(src for src, ts in import_graph().items() for t in ts
                       if layer(t) == "commands" and layer(src) != "commands")
    assert not importers, importers


@pytest.mark.parametrize("rule", sorted(FORBIDDEN)[:3])
def test_the_check_would_catch_a_violation(tmp_path, rule):
    """The checker sees function-level imports: a planted one is found."""
    src = tmp_path / "flowclas_ros" / rule[0] / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text(f"def f():\n    from flowclas_ros.{rule[1]} import thing\n")
    found = {m for m in imports_of(src, tmp_path) if m.startswith("flowclas_ros.")}
    assert any((layer(module_name(src, tmp_path)), layer(m)) == rule for m in found)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


if __name__ == "__main__":
    graph = import_graph()
    arrows = defaultdict(set)
    for src, targets in graph.items():
        for dst in targets:
            if layer(src) != layer(dst):
                arrows[layer(src)].add(layer(dst))
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports between them")
    for src in sorted(arrows):
        print(f"  {src:10s} -> {', '.join(sorted(arrows[src]))}")
    cycle = find_cycle({m: {t for t in ts if not (m.count('.') and t.startswith(m + '.'))} for m, ts in graph.items()})
    print("cycle:", " -> ".join(cycle) if cycle else "none")
    bad = [f"{s} -> {d}" for s, ts in graph.items() for d in ts if (layer(s), layer(d)) in FORBIDDEN]
    print("forbidden arrows:", ", ".join(bad) if bad else "none")
