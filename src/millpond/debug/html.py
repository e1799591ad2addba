"""The debug pages' HTML: one plain template, tables, and escaping.

This module owns how a debug page looks in a browser: a title, a line of
links to every page, the page's own body, no script and no external file
(the endpoint may be reached through an SSH tunnel from a machine with no
network, and a page must render while the server is in trouble). Every
value that comes from outside (a peer's address, a task's name, a file
name) goes through :func:`escape`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

__all__ = ["escape", "link", "page", "size", "table"]

#: Every page, in the order the links show them: (path, label).
PAGES = (
    ("/debug/millpond/", "index"),
    ("/debug/millpond/stats", "stats"),
    ("/metrics", "metrics"),
    ("/debug/millpond/connections", "connections"),
    ("/debug/millpond/buffers", "buffers"),
    ("/debug/millpond/heap", "heap"),
    ("/debug/millpond/heap/diff", "heap/diff"),
    ("/debug/millpond/tasks", "tasks"),
)

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 13px ui-monospace, monospace; }
p.note { background: #f6f6e8; border-left: 4px solid #cc9; padding: 4px 8px; max-width: 60em; }
ul.tree { list-style: none; padding-left: 1.2em; border-left: 1px dotted #bbb; }
"""


def escape(value: object) -> str:
    """``value`` as text, safe inside HTML elements and attributes."""
    return html.escape(str(value), quote=True)


def link(href: str, label: str) -> str:
    """An ``<a>`` element."""
    return f'<a href="{escape(href)}">{escape(label)}</a>'


def size(nbytes: int) -> str:
    """Bytes as a short human figure: ``1536`` -> ``1.5 KiB``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: int = 0) -> str:
    """A table; headers are HTML (so they may be links), cells are escaped text.

    The last ``numeric`` columns are right-aligned figures.
    """
    first_number = len(headers) - numeric
    head = "".join(
        f'<th class="n">{h}</th>' if i >= first_number else f"<th>{h}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{escape(c)}</td>' if i >= first_number else f"<td>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}">(none)</td></tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def page(title: str, path: str, body: str) -> str:
    """A whole HTML document: ``title``, links to every page and to this one as JSON, ``body``."""
    nav = " ".join(link(href, label) for href, label in PAGES)
    json_link = link(f"{path}{'&' if '?' in path else '?'}format=json", "this page as JSON")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>millpond: {escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><nav>{nav}</nav>\n<h1>{escape(title)}</h1>\n"
        f"<p>{json_link}</p>\n{body}\n</body></html>\n"
    )
