"""The house explains itself: module-level imports run one way (no circles), the engine
imports no face, and backend-neutral modules import no framework at module level."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "inertia"
FACES = {"inertia.sgd", "inertia.legacy", "inertia.mlx", "inertia.torch", "inertia.loss_scale"}
FRAMEWORKS = {"torch", "jax", "jaxlib", "tensorflow", "mlx", "keras", "tf_keras"}
# Modules allowed to import a framework at module level: its backend, and the torch face and
# its flat buffers (both imported only by users of torch).
FRAMEWORK_MODULES = {
    "inertia.backend.torch", "inertia.backend.jax", "inertia.backend.tensorflow", "inertia.backend.mlx", "inertia.torch",
    "inertia.torch_flat",
    "inertia.engine.tf_training_ops",  # TensorFlow's fused kernels, imported by a step on tf.Variables
    "inertia.distributed.torch",  # imported by the torch face, and by users of torch.distributed
    "inertia.distributed.jax",  # a backend module of inertia.distributed, imported on first use
    "inertia.distributed.dtensor",  # imported by the torch backend only once torch.distributed.tensor is in use
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported: module-level statements only, those in
    module-level ``try`` / ``if`` blocks included (imports inside functions run lazily, when
    called)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    names: set[str] = set()
    statements = list(tree.body)
    for node in statements:
        if isinstance(node, ast.Try):
            statements += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.If):
            statements += node.body + node.orelse
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


MODULES = {_module_name(path): path for path in SOURCE.rglob("*.py")}
# A package's __init__ runs before any of its modules, whatever they import from it (``from
# inertia import kernels`` imports the module inertia.kernels): edges into packages are left out.
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}
GRAPH = {
    name: {imported for imported in _top_level_imports(path) if imported in MODULES and imported not in PACKAGES | {name}}
    for name, path in MODULES.items()
}


def test_module_level_imports_have_no_circle():
    visiting, done, cycles = set(), set(), []

    def visit(name: str, trail: list) -> None:
        if name in done:
            return
        if name in visiting:
            cycles.append(trail[trail.index(name):] + [name])
            return
        visiting.add(name)
        for imported in sorted(GRAPH[name]):
            visit(imported, trail + [name])
        visiting.discard(name)
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, [])
    assert cycles == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("inertia.engine")))
def test_the_engine_imports_no_face(name):
    assert not (GRAPH[name] & FACES), f"{name} imports {GRAPH[name] & FACES}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n not in FRAMEWORK_MODULES))
def test_backend_neutral_modules_import_no_framework(name):
    imported = {module.split(".")[0] for module in _top_level_imports(MODULES[name])}
    assert not (imported & FRAMEWORKS), f"{name} imports {imported & FRAMEWORKS} at module level"


def test_the_checks_see_a_circle_and_a_framework():
    """The graph is real: known edges are found (so the tests above can fail)."""
    assert "inertia.engine.host" in GRAPH["inertia.engine.optimizer_host"]
    assert "inertia.optimizer" in GRAPH["inertia.sgd"]
    assert "torch" in {m.split(".")[0] for m in _top_level_imports(MODULES["inertia.torch"])}
