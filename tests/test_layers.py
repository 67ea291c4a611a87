"""Imports go one way (docs/architecture.md): each package imports only from its own layer and
the layers below it, and the core imports neither torch nor numpy. Read from the source."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Lowest first. "core" is the data and Redis state every process shares (no torch); "facade" is
# the package's own __init__, which hands out arceus.build_model on first use (tests/test_imports.py
# checks that importing it imports no torch).
LAYERS = ("core", "wire", "engine", "control", "launch", "cli", "facade")
CORE = {
    "errors",
    "settings",
    "config",
    "keys",
    "events",
    "liveness",
    "plan",
    "blobs",
    "tensorfile",
    "checkpoints",
    "codeid",
}


def _layer(module: str) -> str:
    if module == "arceus":
        return "facade"
    part = module.split(".")[1]
    return "core" if part in CORE else part


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)  # `from . import keys`
    return found


def test_arceus_imports_go_down_the_layers_only():
    wrong = []
    for path in sorted((ROOT / "arceus").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mine = LAYERS.index(_layer(module))
        for name in _imports(path):
            if name.startswith("arceus.") and _layer(name) in LAYERS and LAYERS.index(_layer(name)) > mine:
                wrong.append(f"{module} ({_layer(module)}) imports {name} ({_layer(name)})")
            if mine == 0 and name.split(".")[0] in ("torch", "numpy", "flask", "celery"):
                wrong.append(f"{module} is core and imports {name}")
            if name.split(".")[0] in ("flask", "celery", "api", "workers", "flask_smorest"):
                wrong.append(f"{module} imports {name}: arceus never imports the API or Celery")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_imports():
    """The check above reads real imports (so an empty result means something)."""
    stage = _imports(ROOT / "arceus" / "engine" / "stage.py")
    assert {"arceus.liveness", "arceus.engine.links", "torch"} <= stage
    assert "arceus.keys" in _imports(ROOT / "arceus" / "engine" / "streams.py")  # `from .. import keys`
    assert _layer("arceus.control.host") == "control" and _layer("arceus.plan.runspec") == "core"
