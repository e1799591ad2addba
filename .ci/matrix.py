"""Run the test suite in every configuration millpond claims, beside the main run.

The README's test command ends with this script, so CI and a developer's
machine check the same claims. The main run (``python -m pytest``) covers
the interpreter that ran the command; this script adds:

- ``py3.12``, ``py3.13``: the other CPythons ``pyproject.toml`` claims, each in
  its own virtual environment with the package (editable) and its ``[test]``
  extra (less the linters, which the main step ran);
- ``py3.11-trio-<minimum>``: CPython 3.11 with ``trio==<minimum>``, the
  minimum read from ``pyproject.toml``'s ``dependencies`` (so the declared
  minimum and the tested one can never disagree);
- ``no-fast-traps``: the main environment (CPython 3.11 on CI) again with
  ``MILLPOND_FAST_TRAPS=0``, so the fallback of ``traps.py`` passes the whole
  suite too.

Virtual environments live in ``.venvs/<name>`` (git-ignored) and are reused
while the interpreter, the requirements and ``pyproject.toml`` are unchanged
(a stamp file records them); otherwise they are made anew. An interpreter is
looked for under pyenv (``$PYENV_ROOT/versions/3.12.*``, newest patch first),
then as ``python3.12`` on ``PATH``; a missing one fails its configuration, it
is never skipped.

Every configuration is set up first (two at a time: pip and venv), then the
suites run one at a time (see ``DEFAULT_JOBS``). Each configuration prints
one line when its suite ends: its result, the
interpreter and trio it ran, and how long the suite and the set-up took; a
failed one's whole output follows at the end. The last line counts tests
over all configurations in the form CI reads (``matrix: N passed, N
failed``); the exit status is non-zero if any configuration failed or ran
no test.

Usage: ``python .ci/matrix.py [--jobs N] [NAME ...]`` from anywhere; NAME
picks configurations (all by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / ".venvs"
STAMP_NAME = "millpond-matrix.json"

# Pytest as the main run calls it, minus the cache: several runs share one
# tree, and the cache only serves --lf/--ff, which CI never uses.
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]

# Suites at a time. CI has two cores and a suite is one process, so two at a
# time would nearly halve the matrix; but a suite that shares the machine
# with a busy process fails a timing-sensitive test now and then:
# test_wait_send_all_might_not_block_waits_while_unsent_queue_is_long, run
# alone, failed 0 times in 40, and 4 times in 60 beside one busy core (the
# kernel sends what it had deferred after the test saw "not writable"). Once
# that test tolerates a busy neighbour, make this 2 (or pass --jobs 2).
DEFAULT_JOBS = 1

# Set-ups at a time: mostly pip, with no suite running beside it.
SETUP_JOBS = 2

# The counts in pytest's closing line ("3 failed, 305 passed, 1 skipped in 20.1s").
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)\b")
_TRIO_MINIMUM = re.compile(r"trio\s*>=\s*([0-9][0-9.]*)\s*(?:,|$)")


class MatrixError(Exception):
    """A configuration could not be set up (no interpreter, a failed install)."""


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One way to run the suite.

    ``python`` is a CPython version such as ``"3.12"`` (run in a virtual
    environment of its own), or ``None`` for the interpreter running this
    script, as it is installed. ``trio`` pins an exact trio release.
    """

    name: str
    python: str | None
    trio: str | None = None
    env: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass
class Run:
    """One configuration's run, filled in by ``set_up``, then by ``run_suite``."""

    config: Configuration
    python: Path | None = None  # None until set up, and after a failed set-up
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    versions: str = ""
    setup_seconds: float = 0.0
    test_seconds: float = 0.0
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    ok: bool = False
    log: list[str] = dataclasses.field(default_factory=list)


def minimum_trio(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The version in ``pyproject.toml``'s ``"trio>=X"`` dependency."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    found = [m.group(1) for d in dependencies if (m := _TRIO_MINIMUM.match(d))]
    if len(found) != 1:
        raise MatrixError(f"pyproject.toml must require trio as 'trio>=X', once: {dependencies}")
    return found[0]


def configurations(pyproject: Path = ROOT / "pyproject.toml") -> list[Configuration]:
    """Every configuration, the slowest suites first (3.12 and 3.13 run it ~1.5x slower)."""
    oldest = minimum_trio(pyproject)
    return [
        Configuration("py3.12", "3.12"),
        Configuration("py3.13", "3.13"),
        Configuration("no-fast-traps", None, env=(("MILLPOND_FAST_TRAPS", "0"),)),
        Configuration(f"py3.11-trio-{oldest}", "3.11", trio=oldest),
    ]


def _version_of(python: str | Path) -> tuple[int, int, int] | None:
    """CPython's version as ``python`` reports it, or None if it is not a working CPython."""
    probe = "import sys; print(sys.implementation.name, *sys.version_info[:3])"
    try:
        done = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 4 or words[0] != "cpython":
        return None
    return int(words[1]), int(words[2]), int(words[3])


def find_python(version: str) -> Path:
    """The newest CPython ``version`` (``"3.12"``) on this machine; MatrixError if none."""
    wanted = tuple(int(part) for part in version.split("."))
    candidates: list[Path] = []
    if sys.version_info[:2] == wanted:
        candidates.append(Path(sys.executable))
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    releases = [
        d
        for d in (pyenv_root / "versions").glob(f"{version}.*")
        if re.fullmatch(r"\d+\.\d+\.\d+", d.name)
    ]
    releases.sort(key=lambda d: tuple(int(part) for part in d.name.split(".")), reverse=True)
    candidates += [d / "bin" / "python" for d in releases]
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        found = _version_of(candidate)
        if found is not None and found[:2] == wanted:
            return candidate
    raise MatrixError(
        f"no CPython {version}: looked under {pyenv_root}/versions/{version}.* and for "
        f"python{version} on PATH (install it, e.g. 'pyenv install {version}')"
    )


def _run(argv: Sequence[str | Path], env: dict[str, str], log: list[str]) -> int:
    """Run a command in the repository root, appending its output to ``log``."""
    done = subprocess.run(
        [str(arg) for arg in argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    log.append(f"$ {' '.join(str(arg) for arg in argv)}\n{done.stdout}")
    return done.returncode


# Installed by the README's first step for its linting steps; the matrix runs pytest only.
LINTERS = ("ruff", "mypy")


def _project(requirement: str) -> str:
    """The project a requirement names: ``"mypy>=1.10"`` -> ``"mypy"``."""
    return re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0].lower()


def requirements(config: Configuration, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """What the suite needs in ``config``'s environment, besides the package itself.

    The package's dependencies and ``[test]`` extra (less the linters), the
    pinned trio, and the build back-end, so that the editable install needs
    no isolated build environment of its own.
    """
    document = tomllib.loads(pyproject.read_text())
    project = document["project"]
    extras = project["optional-dependencies"]
    tests = [
        r
        for r in _without_self(extras["test"], extras, project["name"])
        if _project(r) not in LINTERS
    ]
    pins = [f"trio=={config.trio}"] if config.trio else []
    return [*project["dependencies"], *tests, *pins, *document["build-system"]["requires"]]


def _without_self(wanted: list[str], extras: dict[str, list[str]], name: str) -> list[str]:
    """``wanted`` with the project's own extras (``"millpond[anyio]"``) replaced by what they hold.

    pip resolves such a self-reference only while installing the project itself; these
    requirements are installed before it, from the index, where the project is not.
    """
    expanded: list[str] = []
    for requirement in wanted:
        if _project(requirement) != name:
            expanded.append(requirement)
            continue
        listed = re.search(r"\[([^\]]*)\]", requirement)
        for extra in listed.group(1).split(",") if listed else []:
            expanded += _without_self(extras[extra.strip()], extras, name)
    return expanded


# An editable install writes the package's metadata into the source tree
# (src/millpond.egg-info): one at a time. Dependencies install concurrently.
_EDITABLE_INSTALL_LOCK = threading.Lock()


def prepare(config: Configuration, venv: Path, env: dict[str, str], log: list[str]) -> Path:
    """Make (or reuse) ``venv`` for ``config``; return its interpreter.

    The environment is made without pip, and the running interpreter's pip
    (``pip --python``, pip 22.3+) installs into it, with ``--no-compile``
    and the build back-end installed beside the requirements: no copy of
    pip per environment, no byte-compiling, no isolated build environment.
    A 3.12 environment took 35 s with its own pip and ``-e ".[test]"``,
    about 17 s this way.
    """
    assert config.python is not None
    base = find_python(config.python)
    wanted = requirements(config)
    stamp = {
        "python": str(base),
        "version": ".".join(map(str, _version_of(base) or ())),
        "requirements": wanted,
        "pyproject_sha256": hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest(),
    }
    python = venv / "bin" / "python"
    stamp_file = venv / STAMP_NAME
    if python.exists() and stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return python
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", python]
    pip += ["install", "-q", "--no-compile"]
    if _run([base, "-m", "venv", "--clear", "--without-pip", venv], env, log) != 0:
        raise MatrixError(f"could not make a virtual environment with {base}")
    if _run([*pip, *wanted], env, log) != 0:
        raise MatrixError(f"pip could not install {' '.join(wanted)}")
    with _EDITABLE_INSTALL_LOCK:
        if _run([*pip, "--no-deps", "--no-build-isolation", "-e", "."], env, log) != 0:
            raise MatrixError("pip could not install the package (editable)")
    stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
    return python


def _installed(python: Path, env: dict[str, str]) -> tuple[str, str]:
    """(CPython version, trio version) as ``python`` sees them."""
    probe = "import platform, trio; print(platform.python_version(), trio.__version__)"
    done = subprocess.run(
        [str(python), "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise MatrixError(f"{python} cannot import trio:\n{done.stderr}")
    cpython, trio = done.stdout.split()[-2:]
    return cpython, trio


def _same_release(a: str, b: str) -> bool:
    """Whether two plain release numbers are equal (``0.29`` is ``0.29.0``)."""
    pa, pb = [int(x) for x in a.split(".")], [int(x) for x in b.split(".")]
    width = max(len(pa), len(pb))
    return pa + [0] * (width - len(pa)) == pb + [0] * (width - len(pb))


def set_up(run: Run) -> Run:
    """Find the interpreter, make or reuse the environment, check what it holds."""
    started = time.monotonic()
    config = run.config
    run.env = dict(os.environ)
    venv = VENVS / config.name
    if config.python is not None:
        # As if activated: the environment holds everything, the package
        # included, and a test that starts ``python`` or a script finds its own.
        for name in ("PYTHONPATH", "PYTHONHOME"):
            run.env.pop(name, None)
        run.env["VIRTUAL_ENV"] = str(venv)
        run.env["PATH"] = os.pathsep.join([str(venv / "bin"), run.env.get("PATH", "")])
    run.env.update(config.env)
    try:
        if config.python is None:
            python = Path(sys.executable)
        else:
            python = prepare(config, venv, run.env, run.log)
        cpython, trio = _installed(python, run.env)
        if config.trio is not None and not _same_release(trio, config.trio):
            raise MatrixError(f"trio {trio} installed where trio=={config.trio} was asked for")
    except MatrixError as error:
        run.log.append(f"error: {error}\n")
    else:
        run.python = python
        run.versions = f"CPython {cpython}, trio {trio}"
    run.setup_seconds = time.monotonic() - started
    return run


def run_suite(run: Run) -> Run:
    """Run the suite in a configuration that was set up."""
    if run.python is None:
        return run
    started = time.monotonic()
    returncode = _run([run.python, *PYTEST], run.env, run.log)
    closing = run.log[-1].rstrip().rsplit("\n", 1)[-1]
    run.counts = {kind.replace("errors", "error"): int(n) for n, kind in _COUNT.findall(closing)}
    run.ok = returncode == 0 and run.counts.get("passed", 0) > 0
    run.test_seconds = time.monotonic() - started
    return run


def summary(run: Run) -> str:
    """One line: name, result, versions, durations."""
    counts = ", ".join(f"{n} {kind}" for kind, n in run.counts.items()) or "no test ran"
    return (
        f"[matrix] {run.config.name:<20} {'ok' if run.ok else 'FAILED':<6} {counts} "
        f"({run.versions or 'not set up'}) in {run.test_seconds:.1f} s "
        f"(set-up {run.setup_seconds:.1f} s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the configurations named in ``argv`` (all by default); 0 if every one passed."""
    every = configurations()
    names = [c.name for c in every]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(names)}")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="suites at a time")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown configuration {', '.join(unknown)}; choose from {', '.join(names)}")
    chosen = [c for c in every if not args.names or c.name in args.names]
    jobs = max(1, min(args.jobs, len(chosen)))
    print(f"[matrix] {', '.join(c.name for c in chosen)}: {jobs} suite(s) at a time", flush=True)
    started = time.monotonic()
    runs = [Run(config) for config in chosen]
    # Every set-up first, so that no suite runs beside pip (see DEFAULT_JOBS).
    with ThreadPoolExecutor(max_workers=SETUP_JOBS) as pool:
        list(pool.map(set_up, runs))
    print(f"[matrix] set up in {time.monotonic() - started:.1f} s", flush=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in as_completed([pool.submit(run_suite, run) for run in runs]):
            print(summary(future.result()), flush=True)
    failed = [run for run in runs if not run.ok]
    for run in failed:
        output = "".join(run.log)
        print(f"\n[matrix] ---- output of {run.config.name} ----\n{output}", flush=True)
    passed = sum(run.counts.get("passed", 0) for run in runs)
    # Failed tests and errors; a configuration that failed without a failing
    # test (no interpreter, a failed install, no test run) counts as one.
    failures = sum(
        run.counts.get("failed", 0) + run.counts.get("error", 0) or int(not run.ok) for run in runs
    )
    print(
        f"[matrix] {len(chosen) - len(failed)} of {len(chosen)} configurations passed "
        f"in {time.monotonic() - started:.1f} s"
    )
    print(f"matrix: {passed} passed, {failures} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
