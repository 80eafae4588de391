"""docs/architecture.md is a true map: every module of stvg_ros and stvg_train is in it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_architecture_map_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    packages = [ROOT / "stvg_ros" / "stvg_ros", ROOT / "training" / "stvg_train"]
    modules = [p for package in packages for p in package.rglob("*.py") if p.name != "__init__.py"]
    assert len(modules) > 50
    missing = [str(p.relative_to(ROOT)) for p in modules if p.name not in text]
    assert not missing, f"docs/architecture.md does not mention {missing}"


#: Layers, lowest first: a module may import its own layer and those below. synthetic/ is test and
#: demo data: its scene generator needs only core (detector calibration uses its frames), its tiny
#: models are built with perception's and grounding's tools. cli/ and benchmarks/ sit on top.
LAYERS = {"core": 0, "synthetic.scenes": 0.5, "perception": 1, "grounding": 2, "synthetic": 3, "nodes": 4,
          "evaluation": 5, "benchmarks": 6, "cli": 6}  # fmt: skip


def _layer(module: str) -> float | None:
    parts = module.split(".")
    return LAYERS.get(".".join(parts[1:3]), LAYERS.get(parts[1])) if len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported stvg_ros module, imported at module level) for every import in the file."""
    import ast

    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [(name, id(node) in top) for name in names if name.startswith("stvg_ros.")]
    return found


def test_imports_go_down_the_layers_and_module_level_imports_have_no_cycles():
    package = ROOT / "stvg_ros" / "stvg_ros"
    graph: dict[str, set[str]] = {}
    upward = []
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        layer = _layer(name)
        for target, module_level in _imports(path):
            target_layer = _layer(target)
            if layer is not None and target_layer is not None and target_layer > layer:
                upward.append(f"{name} -> {target}")
            if not module_level:
                continue
            # importing a.b.c runs the package a.b's __init__ first: an edge to it as well
            parts = target.split(".")
            for upto in range(2, len(parts) + 1):
                imported = ".".join(parts[:upto])
                if imported != name and not name.startswith(imported + "."):
                    graph.setdefault(name, set()).add(imported)
    assert not upward, upward

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    cycles = sorted(name for name in graph if reaches(name, name, set()))
    assert not cycles, f"module-level import cycles through {cycles}"
