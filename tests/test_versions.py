"""The versions millpond claims: the declared trio minimum is the one tested, and enough.

``pyproject.toml`` declares ``trio>=X``; ``.ci/matrix.py`` runs the whole suite
once with ``trio==X``. These tests fail if the two could disagree, and if
``src/millpond`` names anything in trio that the running trio lacks. Run by
the matrix's oldest-trio configuration, the last one means: every trio name
the package uses exists in the declared minimum, including names on paths
no other test reaches.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import trio

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "millpond"


def load_matrix() -> ModuleType:
    """``.ci/matrix.py`` as a module (``.ci`` is not a package)."""
    spec = importlib.util.spec_from_file_location("millpond_ci_matrix", ROOT / ".ci" / "matrix.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def release(version: str) -> tuple[int, ...]:
    """``"0.29.0"`` -> ``(0, 29, 0)``: plain release numbers, as trio uses."""
    return tuple(int(part) for part in version.split("."))


def trio_names_used(package: Path) -> dict[str, str]:
    """Every dotted trio name the package's modules spell out, with one place using it.

    ``trio.lowlevel.checkpoint(...)``, ``trio.SocketStream`` in an annotation,
    and ``from trio.lowlevel import Abort`` give ``trio.lowlevel.checkpoint``,
    ``trio.SocketStream`` and ``trio.lowlevel.Abort``.
    """
    names: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            found: list[str] = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "trio":
                found = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Attribute):
                parts: list[str] = []
                inner: ast.expr = node
                while isinstance(inner, ast.Attribute):
                    parts.append(inner.attr)
                    inner = inner.value
                if isinstance(inner, ast.Name) and inner.id == "trio":
                    found = [".".join(["trio", *reversed(parts)])]
            for name in found:
                names.setdefault(name, f"{path.relative_to(ROOT)}:{node.lineno}")
    return names


def resolves(name: str) -> bool:
    """Whether ``trio.a.b.c`` exists in the installed trio (importing subpackages as needed)."""
    parts = name.split(".")
    obj: object = trio
    for depth, part in enumerate(parts[1:], start=2):
        if not hasattr(obj, part):
            try:
                obj = importlib.import_module(".".join(parts[:depth]))
            except ImportError:
                return False
            continue
        obj = getattr(obj, part)
    return True


def test_matrix_pins_exactly_the_declared_minimum_trio() -> None:
    matrix = load_matrix()
    declared = matrix.minimum_trio(ROOT / "pyproject.toml")
    pinned = [c.trio for c in matrix.configurations(ROOT / "pyproject.toml") if c.trio]
    assert pinned == [declared]


def test_declared_minimum_is_read_from_the_trio_requirement(tmp_path: Path) -> None:
    matrix = load_matrix()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["outcome", "trio >= 0.31.2"]\n')
    assert matrix.minimum_trio(pyproject) == "0.31.2"
    assert [c.trio for c in matrix.configurations(pyproject) if c.trio] == ["0.31.2"]


def test_running_trio_meets_the_declared_minimum() -> None:
    declared = load_matrix().minimum_trio(ROOT / "pyproject.toml")
    assert release(trio.__version__) >= release(declared)


def test_name_scan_sees_the_names_the_minimum_depends_on() -> None:
    # The scan must see attribute chains and from-imports, or the next test proves nothing.
    names = trio_names_used(PACKAGE)
    assert "trio.lowlevel.in_trio_run" in names
    assert "trio.lowlevel.wait_task_rescheduled" in names
    assert not resolves("trio.lowlevel.no_such_name_in_any_trio")


def test_every_trio_name_the_package_uses_exists_in_this_trio() -> None:
    missing = {
        name: where
        for name, where in sorted(trio_names_used(PACKAGE).items())
        if not resolves(name)
    }
    assert not missing, (
        f"trio {trio.__version__} lacks {missing}: raise the minimum in pyproject.toml "
        "(and say which name sets it) or stop using the name"
    )


def test_the_matrix_installs_the_projects_own_extras_by_what_they_hold() -> None:
    # pip cannot take "millpond[anyio]" from the index before millpond is installed.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / ".ci"))
    try:
        import matrix
    finally:
        sys.path.pop(0)
    wanted = matrix.requirements(matrix.Configuration("check", "3.12"))
    assert not [r for r in wanted if r.lower().startswith("millpond")]
    assert any(r.startswith("anyio") for r in wanted)
    assert any(r.startswith("h11") for r in wanted)
