"""The command's TARGET: ``module:handler`` or ``path/to/file.py:handler``, imported and checked.

This module owns finding the handler a TARGET names and saying, in one line,
why it cannot be used: the module is not found, it has a syntax error, it
raised while importing (which exception, and where), it has no such
attribute, or the attribute is not an async function. It runs the user's
module (importing it is how we find the handler), so it is called once,
before anything is bound.

Where modules are looked for, as ``python -m`` and ``python file.py`` do:
a module TARGET is searched in the current directory first, then
``sys.path``; a file TARGET is loaded from its path, as a module named after
the file, and its directory goes first on ``sys.path`` so that its sibling
modules import.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import cast

from ..server import Handler, check_handler
from .errors import CommandError

__all__ = ["Target", "load_handler", "parse_target"]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the handler lives: a module name or a ``.py`` path, and an attribute in it.

    Attributes:
      text: the TARGET as given, for messages.
      module: a dotted module name, or a path when ``is_file``.
      attribute: the handler's dotted name in the module (``app.handle``).
      is_file: whether ``module`` is a path to a ``.py`` file.
    """

    text: str
    module: str
    attribute: str
    is_file: bool


def _is_dotted_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def parse_target(text: str) -> Target:
    """Split a TARGET into where to import and what to take (an argparse ``type=``).

    A path ends in ``.py`` or has a directory separator in it; anything else
    must be a dotted module name. The last ``:`` splits (a Windows drive
    letter has one too).
    """
    module, colon, attribute = text.rpartition(":")
    if not colon or not module or not _is_dotted_name(attribute):
        raise argparse.ArgumentTypeError(
            f"expected module:handler or path/to/file.py:handler "
            f"(e.g. app:handle, app.main:server.handle, ./app.py:handle), not {text!r}"
        )
    is_file = module.endswith(".py") or "/" in module or os.sep in module
    if not is_file and not _is_dotted_name(module):
        raise argparse.ArgumentTypeError(
            f"{module!r} is neither a module name (dotted identifiers) nor a path to a .py file"
        )
    return Target(text, module, attribute, is_file)


def load_handler(target: Target) -> Handler:
    """Import the TARGET's module and return its handler; ``CommandError`` says why not."""
    module = _load_file(target) if target.is_file else _import_module(target)
    handler = _attribute(module, target)
    try:
        check_handler(handler)
    except TypeError:
        raise CommandError(
            f"TARGET {target.text!r} is {_describe(handler)}, not an async function: "
            f"the handler is `async def {target.attribute.rpartition('.')[2]}(stream)`"
        ) from None
    return cast(Handler, handler)


def _import_module(target: Target) -> ModuleType:
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)
    name = target.module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise CommandError(
                f"TARGET {target.text!r}: no module named {exc.name!r} "
                f"(looked in the current directory, then sys.path)"
            ) from None
        raise CommandError(_import_failure(target, exc)) from None
    except Exception as exc:
        raise CommandError(_import_failure(target, exc)) from None


def _load_file(target: Target) -> ModuleType:
    path = Path(target.module)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise CommandError(f"TARGET {target.text!r}: {str(path)!r} {what}")
    path = path.resolve()
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if getattr(loaded, "__file__", None) == str(path):
            return loaded
        raise CommandError(
            f"TARGET {target.text!r}: a module named {name!r} is already imported "
            f"(from {getattr(loaded, '__file__', None) or 'Python itself'}); rename the file"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CommandError(f"TARGET {target.text!r}: {str(path)!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module  # as an import would: dataclasses and pickle look it up
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise CommandError(_import_failure(target, exc)) from None
    return module


def _import_failure(target: Target, exc: Exception) -> str:
    if isinstance(exc, SyntaxError):
        return (
            f"TARGET {target.text!r}: syntax error in {_shorter(exc.filename)} "
            f"line {exc.lineno}: {exc.msg}"
        )
    # The frame that raised: the user's line, or the library call it made.
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {_shorter(frames[-1].filename)} line {frames[-1].lineno}" if frames else ""
    return (
        f"TARGET {target.text!r}: importing {target.module!r} raised "
        f"{type(exc).__name__}: {exc}{where}"
    )


def _shorter(filename: str | None) -> str:
    if not filename:
        return "<unknown file>"
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive, on Windows
        return filename
    return filename if relative.startswith("..") else relative


def _attribute(module: ModuleType, target: Target) -> object:
    found: object = module
    parts = target.attribute.split(".")
    for index, part in enumerate(parts):
        try:
            found = getattr(found, part)
        except AttributeError:
            if index == 0:
                owner, hint = f"module {target.module!r}", _async_functions_hint(module)
            else:
                owner, hint = repr(f"{target.module}:{'.'.join(parts[:index])}"), ""
            raise CommandError(
                f"TARGET {target.text!r}: {owner} has no attribute {part!r}{hint}"
            ) from None
    return found


def _async_functions_hint(module: ModuleType) -> str:
    names = sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    )
    if not names:
        return " (it defines no async function)"
    return f" (its async functions: {', '.join(names)})"


def _describe(value: object) -> str:
    if not callable(value):
        return f"of type {type(value).__name__}"
    if inspect.isclass(value):
        return f"a class ({value.__name__})"
    if inspect.isasyncgenfunction(value):
        return "an async generator function (it yields)"
    if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        return "a plain function (def, not async def)"
    return f"a callable {type(value).__name__} whose __call__ is not async"
