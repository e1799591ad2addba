"""Hostile clients against millpond and the servers a Python user would pick instead.

One subcommand per scenario; each measures what the attack does to the server and to a
well-behaved client served beside it, per server, in interleaved rounds (medians)::

    python benchmarks/hostile.py flood                    # 1000 clients that never read
    python benchmarks/hostile.py flood --runs 5 --servers millpond,millpond-trio,trio
    python benchmarks/hostile.py --help                   # the scenarios

Every server is started fresh for each measurement, pinned to ``--server-cpu`` with
``taskset``; the C load generator (``benchmarks/loadgen.c``, built on first use) runs on
``--client-cpu``; everything goes to 127.0.0.1 and every process is stopped by its pid.
Results are printed as a markdown table and appended as JSON lines to
``benchmarks/results/hostile.jsonl`` (``--no-save``: not). See benchmarks/README.md.

Adding a scenario: a module ``benchmarks/hostile_<name>.py`` that defines ``HELP`` (one
line), ``add_arguments(parser)`` (its own options) and ``run(bench, args) -> int``, and one
line in ``SCENARIOS`` below. ``Bench`` gives it the servers, the load generator, the
pinned cores and the well-behaved client's measurement.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any, Protocol

from echo_compare import (
    BENCH_DIR,
    DEFAULT_MILLPOND_ECHO,
    HOST,
    Config,
    RunningServer,
    core_busy_pct,
    core_times,
    environment_info,
    git_commit,
    git_dirty_files,
    log,
    measure_window,
    prepare_machine,
    raise_nofile,
    running_server,
    select_servers,
    start_loadgen,
    wait_for_quiet_cores,
)

Row = dict[str, Any]

# The scenarios, by subcommand name: the module that implements each (see the docstring).
SCENARIOS: dict[str, str] = {
    "flood": "hostile_flood",
}

# Issue 16's other scenarios, long versions (the tests run short ones): they live in
# hostile_scenarios.py with options of their own, and ``hostile.py NAME ...`` runs them
# there, so that this stays the one entry point (``hostile.py slowloris --help``).
SCENARIO_SCRIPT_NAMES = ("slowloris", "reset", "halfclose", "fds", "memory", "cancel", "faults")

# The peers of issue 16: millpond, the idiomatic Trio server, and the fastest asyncio
# streams server a Python user would pick (any server of echo_compare.py may be named).
DEFAULT_SERVERS = "millpond,trio,uvloop-streams"
RESULTS = BENCH_DIR / "results" / "hostile.jsonl"


class Scenario(Protocol):
    """What a scenario module provides."""

    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, bench: Bench, args: argparse.Namespace) -> int: ...


@dataclass
class Bench:
    """What every scenario gets: the servers, the load generator and the pinned cores."""

    servers: dict[str, list[str]]
    loadgen: Path
    server_cpu: int
    client_cpu: int
    runs: int
    quiet_wait: float
    results: Path | None
    nice: int = 0  # of the server and the attack's load generator
    client_boost: int = 0  # the well-behaved client runs at nice - client_boost
    command: str = ""  # how this run was started, for the report
    env: Row = field(default_factory=dict)  # echo_compare.environment_info()
    common: Row = field(default_factory=dict)  # run_id, commit, scenario: on every JSON line

    def config(self, well_behaved: bool = False) -> Config:
        """echo_compare's configuration, for its process helpers (only these fields matter);
        ``well_behaved``: for the well-behaved client's load generator (its priority)."""
        nice = self.nice - self.client_boost if well_behaved else self.nice
        return Config(
            servers=self.servers,
            loadgen=self.loadgen,
            runs=self.runs,
            duration=0.0,
            warmup=0.0,
            conns=0,
            size=0,
            idle=0,
            idle_rate=0,
            server_cpu=self.server_cpu,
            client_cpu=self.client_cpu,
            startup_timeout=20.0,
            settle=0.0,
            results=None,
            loadgen_prefix=("nice", "-n", str(nice)) if nice else (),
        )

    @contextmanager
    def server(
        self, name: str, scenario: str, extra: Sequence[str] = ()
    ) -> Iterator[RunningServer]:
        """Start server ``name`` (plus ``extra`` arguments) pinned, on a free port; stop it
        by pid on exit. Its output goes to benchmarks/build/logs/NAME-SCENARIO.log."""
        with running_server(self.config(), name, scenario, extra) as server:
            yield server

    def start_loadgen(self, args: Sequence[str], stdin: int) -> Popen[bytes]:
        """Start the load generator pinned to the client core (``args[0]`` is its mode)."""
        return start_loadgen(self.config(), args, stdin)

    def wait_quiet(self) -> float:
        """Wait (up to --quiet-wait s) until both cores are idle; returns the seconds waited."""
        return wait_for_quiet_cores((self.server_cpu, self.client_cpu), self.quiet_wait)

    def well_behaved(
        self, server: RunningServer, duration: float, warmup: float, size: int = 64
    ) -> Row:
        """One ping-pong client (one ``size``-byte message in flight, every byte checked)
        for ``duration`` s after ``warmup`` s: its rate and latency, the load generator's
        CPU%, the server's CPU% and both cores' busy% over the window."""
        args = ["echo", HOST, str(server.port), "1", str(size), str(duration), str(warmup)]
        window = measure_window(self.config(True), server, args, warmup + duration + 90)
        report = window["loadgen"]
        keys = ("msgs_per_s", "p50_us", "p99_us", "p999_us", "max_us", "msgs", "errors")
        return {**{key: report[key] for key in keys}, **window}

    def core_sample(self) -> dict[int, tuple[int, int]]:
        """Per-core busy/total jiffies now (for ``cores_busy_since``)."""
        return core_times((self.server_cpu, self.client_cpu))

    def cores_busy_since(self, before: dict[int, tuple[int, int]]) -> tuple[float, float]:
        """Busy % of the server's and the client's core since ``before``."""
        after = self.core_sample()
        return (
            core_busy_pct(before[self.server_cpu], after[self.server_cpu]),
            core_busy_pct(before[self.client_cpu], after[self.client_cpu]),
        )

    def save(self, rows: Sequence[Row]) -> None:
        """Append ``rows`` (tagged with run_id and commit) to the results file."""
        if self.results is None:
            return
        self.results.parent.mkdir(parents=True, exist_ok=True)
        with self.results.open("a") as out:
            for row in rows:
                out.write(json.dumps({**self.common, **row}, sort_keys=True) + "\n")


def load_scenario(name: str) -> Scenario:
    """The module that implements subcommand ``name``."""
    module: Scenario = importlib.import_module(SCENARIOS[name])
    return module


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The common options, then the chosen scenario's."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Also: " + ", ".join(SCENARIO_SCRIPT_NAMES) + " (hostile_scenarios.py's own "
        "options: hostile.py slowloris --help).",
    )
    commands = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name in SCENARIOS:
        scenario = load_scenario(name)
        sub = commands.add_parser(name, help=scenario.HELP, description=scenario.HELP)
        sub.add_argument("--runs", type=int, default=3, help="rounds, servers interleaved")
        sub.add_argument(
            "--servers",
            default=DEFAULT_SERVERS,
            help="comma-separated, in this order (echo_compare.py's names)",
        )
        sub.add_argument("--millpond-echo", type=Path, default=DEFAULT_MILLPOND_ECHO)
        sub.add_argument("--server-cpu", type=int, default=0)
        sub.add_argument("--client-cpu", type=int, default=1)
        sub.add_argument(
            "--quiet-wait",
            type=float,
            default=30.0,
            help="before each measurement, wait up to S s for both cores to be idle",
        )
        sub.add_argument(
            "--nice",
            type=int,
            default=0,
            help="nice value of the servers and the attack's load generator (below 0 needs "
            "root: keeps other processes on the machine from disturbing the figures)",
        )
        sub.add_argument(
            "--client-boost",
            type=int,
            default=5,
            help="the well-behaved client runs this much higher in priority than the attack, "
            "whose load generator shares its core: its figures then show the server, not "
            "the two load generators' contention (0: same priority)",
        )
        sub.add_argument("--results", type=Path, default=RESULTS, help="JSON lines output")
        sub.add_argument("--no-save", action="store_true", help="write no results")
        scenario.add_arguments(sub)
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 50:
        parser.error("--runs must be 1..50")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Check the machine, build the load generator, run the chosen scenario."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] and arguments[0] in SCENARIO_SCRIPT_NAMES:
        import hostile_scenarios

        sys.argv = [str(Path(hostile_scenarios.__file__)), *arguments]
        return hostile_scenarios.main()
    args = parse_args(argv)
    servers = select_servers(args.servers, args.millpond_echo.resolve())
    if servers is None:
        return 2
    if "c-ref" in servers:
        print("c-ref is an echo reference, not a peer here; leave it out", file=sys.stderr)
        return 2
    loadgen = prepare_machine(args.server_cpu, args.client_cpu)
    if isinstance(loadgen, int):
        return loadgen
    raise_nofile()
    if min(args.nice, args.nice - args.client_boost) < 0 and os.geteuid() != 0:
        log("not root: --nice and --client-boost cannot raise priorities; running at nice 0")
        args.nice, args.client_boost = max(args.nice, 0), 0
    if args.nice:
        servers = {name: ["nice", "-n", str(args.nice), *argv] for name, argv in servers.items()}
    run_id = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    command = "python benchmarks/hostile.py " + " ".join(sys.argv[1:] if argv is None else argv)
    bench = Bench(
        servers=servers,
        loadgen=loadgen,
        server_cpu=args.server_cpu,
        client_cpu=args.client_cpu,
        runs=args.runs,
        quiet_wait=args.quiet_wait,
        results=None if args.no_save else args.results,
        nice=args.nice,
        client_boost=args.client_boost,
        command=command,
        env=environment_info(),
        common={"run_id": run_id, "commit": git_commit(), "scenario": args.scenario},
    )
    bench.save([{"kind": "meta", "command": command, "env": bench.env, "dirty": git_dirty_files()}])
    log(f"run {run_id}: {args.scenario} on {', '.join(servers)}; loadavg {bench.env['loadavg']}")
    return load_scenario(args.scenario).run(bench, args)


if __name__ == "__main__":
    sys.exit(main())
