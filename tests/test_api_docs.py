"""The API reference builds from the docstrings, and every public name has one."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import millpond

PUBLIC_MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(millpond.__path__, "millpond.")
    if not any(part.startswith("_") for part in info.name.split(".")[1:])
    and info.name not in {"millpond.cli.__main__"}
)

# What pdoc is given; it walks each package's submodules itself.
TOP_LEVEL = [name for name in PUBLIC_MODULES if name.count(".") == 1]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_of_a_module_has_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert inspect.getdoc(module), f"{module_name} has no module docstring"
    missing = []
    for name in getattr(module, "__all__", ()):
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            if not inspect.getdoc(value):
                missing.append(name)
            if inspect.isclass(value):
                missing += [
                    f"{name}.{member}"
                    for member, attribute in vars(value).items()
                    if not member.startswith("_")
                    and (inspect.isfunction(attribute) or isinstance(attribute, property))
                    and not inspect.getdoc(attribute)
                ]
    assert not missing, f"{module_name}: no docstring on {missing}"


@pytest.mark.time_limit(120)
def test_the_api_reference_builds(tmp_path: Path) -> None:
    # pdoc imports every module and renders every docstring: a module that
    # does not import, or a docstring that does not render, fails here.
    result = subprocess.run(
        [sys.executable, "-m", "pdoc", "millpond", *TOP_LEVEL, "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr
    assert "Warn" not in result.stderr, result.stderr
    assert (tmp_path / "millpond.html").exists()
    for module_name in TOP_LEVEL:
        assert (tmp_path / (module_name.replace(".", "/") + ".html")).exists(), module_name
