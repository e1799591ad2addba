"""What the atheris harnesses (``fuzz_*.py``) and the tests that run them share."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Callable


def harness_main(seeds: Callable[[], list[bytes]], test_one_input: Callable[[bytes], None]) -> None:
    """A harness's command line: ``--seed-corpus DIR`` writes the seeds, anything else fuzzes."""
    import atheris

    if sys.argv[1:2] == ["--seed-corpus"]:
        corpus = pathlib.Path(sys.argv[2])
        corpus.mkdir(parents=True, exist_ok=True)
        for number, seed in enumerate(seeds()):
            (corpus / f"seed-{number}").write_bytes(seed)
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def run_short(harness: pathlib.Path, workdir: pathlib.Path, runs: int = 20000) -> None:
    """Seed a corpus and fuzz ``runs`` inputs; fails on a crash or a hang (5 s an input)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    corpus = workdir / "corpus"
    subprocess.run(
        [sys.executable, str(harness), "--seed-corpus", str(corpus)],
        check=True, timeout=30, env=environment,
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(harness), str(corpus), f"-runs={runs}", "-max_total_time=40",
         "-timeout=5", "-rss_limit_mb=2048", f"-artifact_prefix={workdir}/"],
        capture_output=True, text=True, timeout=80, env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr
