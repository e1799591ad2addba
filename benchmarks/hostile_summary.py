"""Several runs of one hostile scenario on one server, summed up as one row.

``hostile_scenarios.py --runs N`` runs every server's rounds interleaved (round 1 of each
server, then round 2, ...) and hands each server's rows here: a rate or a time becomes
its median and its [min–max] over the runs; what must be zero after every run (what was
left behind, bytes lost, errors escaped, lines logged) becomes its maximum, so that one
bad run shows. Pure functions, no I/O.
"""

from __future__ import annotations

import statistics
from typing import Any

Figures = dict[str, Any]

# Figures that must be 0 after every run: a summary shows the worst run, not the median.
MUST_BE_ZERO = frozenset(
    {
        "errors_escaped",
        "echoes_with_bytes_lost",
        "echoes_reset",
        "echoes_failed",
        "answers_with_bytes_lost",
        "setup_errors",
        "never_reaped",
    }
)
# Figures whose worst run matters but that may be non-zero by design: the lines a server
# logged (millpond and Trio log each accept back-off while out of descriptors).
WORST_RUN = frozenset({"server_log_lines"})


def must_be_zero(key: str) -> bool:
    """Whether ``key`` is a leftover or a loss (summed up as the maximum over runs)."""
    return key.endswith("_left") or key in MUST_BE_ZERO


def summarize(rows: list[Figures]) -> Figures:
    """One row for several runs: medians with ``KEY_range`` [min, max], leftovers' maxima.

    A yes/no figure is yes only if it held in every run; a text is kept if every run
    agrees; nested figures are left out."""
    if not rows:
        raise ValueError("summarize needs at least one row")
    summary: Figures = {"runs": len(rows)}
    for key in rows[0]:
        if key == "round":
            continue
        values = [row[key] for row in rows if key in row]
        if all(isinstance(value, bool) for value in values):
            summary[key] = all(values)
        elif all(isinstance(value, int | float) for value in values):
            if must_be_zero(key) or key in WORST_RUN:
                summary[key] = max(values)
            else:
                summary[key] = statistics.median(values)
                summary[f"{key}_range"] = [min(values), max(values)]
        elif all(isinstance(value, str) for value in values) and len(set(values)) == 1:
            summary[key] = values[0]
    return summary


def describe(summary: Figures) -> str:
    """The summary as one readable line: ``key median [min–max]``, leftovers flagged."""
    parts = []
    for key, value in summary.items():
        if key.endswith("_range") or key in {"when", "command", "scenario"}:
            continue
        if f"{key}_range" in summary:
            low, high = summary[f"{key}_range"]
            parts.append(f"{key} {_number(value)} [{_number(low)}–{_number(high)}]")
        elif must_be_zero(key):
            parts.append(f"{key} max {value}" + (" (NOT ZERO)" if value else ""))
        elif key in WORST_RUN:
            parts.append(f"{key} max {value}")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def _number(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) and abs(value) < 100 else f"{value:.0f}"
