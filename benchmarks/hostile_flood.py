"""``hostile.py flood``: is a well-behaved client still served while a flood never reads?

Per server and round, on one fresh server process:

1. the server's RSS once it listens (``VmRSS``);
2. **alone**: one ping-pong client (the load generator's ``echo`` mode, one 64-byte
   message in flight, every byte checked) for ``--duration`` s after ``--warmup`` s;
3. **flood**: ``--flooders`` clients connect (``loadgen flood``), write 64 KiB chunks
   whenever their socket takes them and never read; after ``--flood-settle`` s the same
   ping-pong client runs again, on a new connection, while the flood goes on;
4. the flood stops; the server's peak RSS (``VmHWM``) and the flooders' progress: the
   bytes their ``send()`` calls got rid of, in all and per connection (min, median).

Both load generators run on the client core; the millpond servers get
``--budget-mib`` (8 MiB). The target (issue 16): under the flood the well-behaved client
keeps at least 90 % of its alone rate, with a p99 within 2x of its alone p99, while the
server's RSS grows by at most the budget plus 3 KiB per connection.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from echo_compare import (
    CLK_TCK,
    HOST,
    BenchError,
    LineReader,
    RunningServer,
    cpu_ticks,
    fmt,
    loadgen_stderr,
    log,
    markdown_table,
    status_kib,
    stop_holding,
    stop_process,
)

if TYPE_CHECKING:
    from hostile import Bench

Row = dict[str, Any]

HELP = "a ping-pong client alone, then beside N clients that write 64 KiB chunks and never read"

# Servers that take examples/echo.py's --budget-mib (the pooled millpond ones).
BUDGET_SERVERS = ("millpond", "millpond-trio")

# A window in which other processes used more than this share of the server's core
# (core busy minus the server's own CPU) is measured again (--retries): on a shared
# machine they, not the flood, would set the figures.
DISTURBED_PCT = 10.0

# The targets.
RATE_KEPT = 0.90  # of the alone rate
P99_GROWTH = 2.0  # times the alone p99
RSS_PER_CONNECTION_KIB = 3  # on top of the budget, for every connection the server holds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flood's own options."""
    parser.add_argument("--flooders", type=int, default=1000, help="clients that never read")
    parser.add_argument(
        "--budget-mib", type=int, default=8, help="--budget-mib for the millpond servers"
    )
    parser.add_argument(
        "--duration", type=float, default=3.0, help="well-behaved client's window, s"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="before each window, s")
    parser.add_argument(
        "--flood-settle",
        type=float,
        default=1.0,
        help="seconds of flooding before the well-behaved client connects",
    )
    parser.add_argument("--rate", type=int, default=5000, help="flooders' connects per second")
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="measure again when other processes took over 10 %% of the server's core",
    )


def run(bench: Bench, args: argparse.Namespace) -> int:
    """Every server, ``--runs`` interleaved rounds; print the table; 1 if anything failed."""
    if not 1 <= args.flooders <= 20000 or args.budget_mib < 1:
        print("--flooders must be 1..20000 and --budget-mib >= 1")
        return 2
    if args.duration <= 0 or args.warmup < 0 or args.flood_settle < 0:
        print("--duration must be > 0, --warmup and --flood-settle >= 0")
        return 2
    rows: list[Row] = []
    failures: dict[str, int] = {}
    for run_number in range(1, bench.runs + 1):
        for name in bench.servers:
            row = measure_undisturbed(bench, name, args, run_number)
            if row is None:
                failures[name] = failures.get(name, 0) + 1
                continue
            rows.append(row)
            bench.save([row])
            print_row(row)
    print()
    print(report(bench, args, rows, failures))
    return 1 if failures else 0


def measure_undisturbed(
    bench: Bench, name: str, args: argparse.Namespace, run_number: int
) -> Row | None:
    """``measure``, again (up to --retries times) while other processes took more than
    DISTURBED_PCT of the server's core; None if it failed (logged and saved)."""
    for attempt in range(1, args.retries + 2):
        log(f"run {run_number}/{bench.runs}: flood {name} (attempt {attempt}) ...")
        quiet = bench.wait_quiet()
        try:
            row = measure(bench, name, args)
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            log(f"FAILED run {run_number} flood {name}: {exc}")
            bench.save([{"kind": "flood_error", "server": name, "error": str(exc)}])
            return None
        row.update(run=run_number, attempt=attempt, quiet_wait_s=round(quiet, 2))
        other = max(row[window]["server_core_other_pct"] for window in ("alone", "under_flood"))
        row["disturbed"] = other > DISTURBED_PCT
        if not row["disturbed"] or attempt > args.retries:
            return row
        log(f"other processes took {other:.0f} % of the server's core: measuring again")
        bench.save([row])  # kept in the JSON lines, not in the table
    raise AssertionError("unreachable")


def measure(bench: Bench, name: str, args: argparse.Namespace) -> Row:
    """One server: the client alone, then beside the flood; RSS and the flood's progress."""
    budget = name in BUDGET_SERVERS
    extra = ["--budget-mib", str(args.budget_mib)] if budget else []
    with bench.server(name, "flood", extra) as server:
        time.sleep(0.5)
        server.check_alive()
        rss_start = status_kib(server.pid, "VmRSS")
        alone = bench.well_behaved(server, args.duration, args.warmup)
        flood, under, server_cpu_pct, cores = flooded(bench, server, args)
        server.check_alive()
        rss_peak = status_kib(server.pid, "VmHWM")
        rss_end = status_kib(server.pid, "VmRSS")
    held = flood["held_s"]
    connections = args.flooders + 1
    return {
        "kind": "flood",
        "server": name,
        "flooders": args.flooders,
        "budget_mib": args.budget_mib if budget else None,
        "alone": alone,
        "under_flood": under,
        "rate_kept": under["msgs_per_s"] / alone["msgs_per_s"] if alone["msgs_per_s"] else 0.0,
        "p99_growth": under["p99_us"] / alone["p99_us"] if alone["p99_us"] else 0.0,
        "rss_start_kib": rss_start,
        "rss_peak_kib": rss_peak,
        "rss_end_kib": rss_end,
        "growth_kib": rss_peak - rss_start,
        "rss_bound_kib": (args.budget_mib << 10) + RSS_PER_CONNECTION_KIB * connections
        if budget
        else None,
        "flood_mib": flood["bytes_written"] / 2**20,
        "flood_mib_per_s": flood["bytes_written"] / 2**20 / held if held else 0.0,
        "flooder_kib_min": flood["conn_bytes_min"] / 1024,
        "flooder_kib_p50": flood["conn_bytes_p50"] / 1024,
        "flood_closed_by_server": flood["closed_by_peer"],
        "flood_loadgen_cpu_pct": 100.0 * flood["cpu_s"] / (flood["connect_s"] + held),
        "flood_server_cpu_pct": server_cpu_pct,
        "flood_server_core_pct": cores[0],
        "flood_client_core_pct": cores[1],
        "flood": flood,
    }


def flooded(
    bench: Bench, server: RunningServer, args: argparse.Namespace
) -> tuple[Row, Row, float, tuple[float, float]]:
    """Start the flood, measure the well-behaved client beside it, stop the flood.

    Returns the flood load generator's report, the client's figures, the server's CPU% and
    both cores' busy% from the moment every flooder was connected to the end.
    """
    command = ["flood", HOST, str(server.port), str(args.flooders), "600", str(args.rate)]
    proc = bench.start_loadgen(command, subprocess.PIPE)
    reader = LineReader(proc)
    try:
        line = reader.readline(time.monotonic() + args.flooders / args.rate + 70)
        if line is None or not line.startswith("connected "):
            raise BenchError(f"loadgen flood: {line!r}\n{loadgen_stderr('flood')}")
        started, ticks = time.monotonic(), cpu_ticks(server.pid)
        cores = bench.core_sample()
        time.sleep(args.flood_settle)
        server.check_alive()
        under = bench.well_behaved(server, args.duration, args.warmup)
        server_cpu_pct = 100.0 * (cpu_ticks(server.pid) - ticks) / CLK_TCK
        server_cpu_pct /= time.monotonic() - started
        busy = bench.cores_busy_since(cores)
        report = stop_holding(proc, reader)
    finally:
        reader.close()
        if proc.poll() is None:
            stop_process(proc, signal.SIGTERM)
    if report is None:
        raise BenchError(f"loadgen flood printed no report\n{loadgen_stderr('flood')}")
    return report, under, server_cpu_pct, busy


def print_row(row: Row) -> None:
    """One measurement, as it completes (cores: busy % of the server's / the client's core,
    and in brackets what the processes pinned there do not explain: other load)."""
    parts = [f"run {row['run']}  {row['server']}"]
    for label, window in (("alone", row["alone"]), ("flood", row["under_flood"])):
        parts.append(
            f"{label} {fmt(window['msgs_per_s'])} msgs/s p99 {fmt(window['p99_us'])} us "
            f"server CPU {window['server_cpu_pct']:.0f}% loadgen {window['client_cpu_pct']:.0f}% "
            f"cores {window['server_core_busy_pct']:.0f}/{window['client_core_busy_pct']:.0f}% "
            f"(other {window['server_core_other_pct']:.0f}/{window['client_core_other_pct']:.0f})"
        )
    parts.append(
        f"kept {row['rate_kept']:.0%}, RSS +{row['growth_kib'] / 1024:.1f} MiB, flood "
        f"{row['flood_mib']:.0f} MiB (per flooder min {row['flooder_kib_min']:.0f} KiB, median "
        f"{row['flooder_kib_p50']:.0f}), flooders' loadgen {row['flood_loadgen_cpu_pct']:.0f}%, "
        f"server {row['flood_server_cpu_pct']:.0f}% over the flood"
    )
    print(" | ".join(parts), flush=True)


# The table: (header, how to get the figure from a row, digits); the first two get a range.
COLUMNS: Sequence[tuple[str, Callable[[Row], float], int]] = (
    ("kept (flood/alone rate)", lambda r: r["rate_kept"], 2),
    ("p99 flood/alone", lambda r: r["p99_growth"], 1),
    ("alone msgs/s", lambda r: r["alone"]["msgs_per_s"], 0),
    ("flood msgs/s", lambda r: r["under_flood"]["msgs_per_s"], 0),
    ("p99 alone µs", lambda r: r["alone"]["p99_us"], 0),
    ("p99 flood µs", lambda r: r["under_flood"]["p99_us"], 0),
    ("RSS growth MiB", lambda r: r["growth_kib"] / 1024, 1),
    ("flood MiB taken", lambda r: r["flood_mib"], 0),
    ("per flooder KiB min / median", lambda r: r["flooder_kib_min"], 0),
    ("server CPU% (flood)", lambda r: r["flood_server_cpu_pct"], 0),
    ("loadgen CPU% echo alone / flood / flooders", lambda r: r["alone"]["client_cpu_pct"], 0),
)


def report(
    bench: Bench, args: argparse.Namespace, rows: list[Row], failures: dict[str, int]
) -> str:
    """The markdown summary: medians per server, [min–max] for the two ratios."""
    env = bench.env
    lines = [
        f"## hostile.py flood, run {bench.common['run_id']}",
        "",
        f"- commit `{bench.common['commit']}`; command: `{bench.command}`",
        f"- {env['cpu_model']} ({env['ncpu']} CPUs), Linux {env['kernel']}, Python "
        f"{env['python']}, Trio {env['trio']}, uvloop {env['uvloop']}; loadavg at start "
        f"{env['loadavg']}",
        f"- {args.flooders} flooders (64 KiB chunks, never read) and one ping-pong client "
        f"(64 B, one in flight; {args.duration:g} s window after {args.warmup:g} s warm-up, "
        f"{args.flood_settle:g} s into the flood); millpond servers with --budget-mib "
        f"{args.budget_mib}; server on CPU {bench.server_cpu}, both load generators on CPU "
        f"{bench.client_cpu}; server and flood at nice {bench.nice}, the well-behaved client "
        f"at nice {bench.nice - bench.client_boost}; medians of {bench.runs} interleaved "
        "round(s), ratios per round",
        "",
    ]
    headers = ["server", *(c[0] for c in COLUMNS), "runs"]
    table = []
    for name in bench.servers:
        mine = [r for r in rows if r["server"] == name]
        if not mine:
            table.append([name, *(["-"] * len(COLUMNS)), f"0 ({failures.get(name, 0)} FAILED)"])
            continue
        cells = [name]
        for index, (header, figure, digits) in enumerate(COLUMNS):
            values = [figure(r) for r in mine]
            cell = fmt(statistics.median(values), digits)
            if index < 2:
                cell += f" [{fmt(min(values), digits)}–{fmt(max(values), digits)}]"
            if header.startswith("per flooder"):
                cell += " / " + fmt(statistics.median(r["flooder_kib_p50"] for r in mine))
            if header.startswith("loadgen"):
                under = statistics.median(r["under_flood"]["client_cpu_pct"] for r in mine)
                flood = statistics.median(r["flood_loadgen_cpu_pct"] for r in mine)
                cell += f" / {under:.0f} / {flood:.0f}"
            cells.append(cell)
        notes = [f"{failures[name]} FAILED"] if failures.get(name) else []
        disturbed = sum(1 for r in mine if r.get("disturbed"))
        notes += [f"{disturbed} DISTURBED"] if disturbed else []
        runs = str(len(mine)) + (f" ({', '.join(notes)})" if notes else "")
        table.append([*cells, runs])
    lines.append(markdown_table(headers, table))
    lines += ["", *verdicts(bench, rows)]
    return "\n".join(lines) + "\n"


def verdicts(bench: Bench, rows: list[Row]) -> list[str]:
    """Per server: which of the issue's three targets the medians meet."""
    out = []
    for name in bench.servers:
        mine = [r for r in rows if r["server"] == name]
        if not mine:
            continue
        kept = statistics.median(r["rate_kept"] for r in mine)
        p99 = statistics.median(r["p99_growth"] for r in mine)
        growth = statistics.median(r["growth_kib"] for r in mine)
        bound = mine[0]["rss_bound_kib"]
        checks = [
            f"rate kept {kept:.0%} ({'meets' if kept >= RATE_KEPT else 'misses'} ≥ 90 %)",
            f"p99 {p99:.1f}x ({'meets' if p99 <= P99_GROWTH else 'misses'} ≤ 2x)",
        ]
        if bound is not None:
            verdict = "meets" if growth <= bound else "misses"
            checks.append(
                f"RSS +{growth / 1024:.1f} MiB ({verdict} ≤ budget + 3 KiB/conn = "
                f"{bound / 1024:.1f} MiB)"
            )
        else:
            checks.append(f"RSS +{growth / 1024:.1f} MiB (no budget)")
        out.append(f"- {name}: " + "; ".join(checks))
    return out
