"""The Trio task tree of the running process, each task with the line it waits at.

This module owns the ``tasks`` page's data: a walk from Trio's root task
through every nursery, and for each task the chain of frames it is awaiting
(``Task.iter_await_frames``), outermost first. Tasks that look the same (the
same name, the same frames, the same children) are folded into one entry
with a count, as Go's ``goroutine?debug=1`` profile folds identical stacks:
a server with ten thousand idle connections shows one line "10000 x
millpond.connection, waiting at stream.py:NNN", not ten thousand.

A task's "waiting at" is its innermost frame in the program's own code (not
Trio's, ``outcome``'s or millpond's): for a connection, the handler's line
that awaits ``receive_some`` or ``send_all``. A task with no such frame (the
server's own) shows its innermost millpond frame, and Trio's own tasks their
outermost frame. The full chain is kept too. Walking costs one step per frame of every task; it runs
on the Trio thread, so the tree cannot change underneath it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import outcome
import trio

__all__ = ["NurseryNode", "TaskNode", "task_tree"]

# Frames in these directories are Trio's machinery, not where a task chose to wait.
_MACHINERY = (
    os.path.dirname(trio.__file__) + os.sep,
    os.path.dirname(outcome.__file__) + os.sep,
)

# millpond's own frames: where a handler waits inside millpond, its own line is
# the more useful "waiting at" (the millpond frames are in ``frames``).
_MILLPOND = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


@dataclass(frozen=True, slots=True)
class TaskNode:
    """``count`` tasks alike: their name, where they wait, their frames, their nurseries.

    ``frames`` are ``"file:line in function"``, outermost first; ``waiting_at``
    is the innermost one in the program's code (else millpond's, else the outermost).
    """

    name: str
    count: int
    waiting_at: str
    frames: tuple[str, ...]
    nurseries: tuple[NurseryNode, ...]


@dataclass(frozen=True, slots=True)
class NurseryNode:
    """A nursery of a task: its child tasks, folded alike."""

    tasks: tuple[TaskNode, ...]


def task_tree() -> TaskNode:
    """The current Trio run's task tree, from the root task, alike tasks folded."""
    root = trio.lowlevel.current_root_task()
    assert root is not None  # we are running in it
    return _node(root)


def _node(task: trio.lowlevel.Task) -> TaskNode:
    frames = tuple(_frames(task))
    nurseries = tuple(
        NurseryNode(_fold([_node(child) for child in nursery.child_tasks]))
        for nursery in task.child_nurseries
    )
    return TaskNode(
        name=task.name,
        count=1,
        waiting_at=_waiting_at(task),
        frames=frames,
        nurseries=nurseries,
    )


def _fold(nodes: list[TaskNode]) -> tuple[TaskNode, ...]:
    # Alike tasks (equal but for the count) become one node; most numerous first.
    counts: dict[TaskNode, int] = {}
    for node in nodes:
        counts[node] = counts.get(node, 0) + 1
    folded = [
        TaskNode(n.name, count, n.waiting_at, n.frames, n.nurseries) for n, count in counts.items()
    ]
    folded.sort(key=lambda n: (-n.count, n.name))
    return tuple(folded)


def _frames(task: trio.lowlevel.Task) -> Iterator[str]:
    for frame, lineno in task.iter_await_frames():
        yield _place(frame.f_code.co_filename, lineno, frame.f_code.co_name)


def _waiting_at(task: trio.lowlevel.Task) -> str:
    # The innermost frame of the program's own code; else millpond's; else the first.
    innermost = {"program": "", "millpond": "", "any": "(not started, or running)"}
    for frame, lineno in task.iter_await_frames():
        filename = frame.f_code.co_filename
        place = _place(filename, lineno, frame.f_code.co_name)
        if innermost["any"].startswith("("):  # Trio's own tasks: where they begin
            innermost["any"] = place
        if filename.startswith(_MILLPOND):
            innermost["millpond"] = place
        elif not filename.startswith(_MACHINERY):
            innermost["program"] = place
    return innermost["program"] or innermost["millpond"] or innermost["any"]


def _place(filename: str, lineno: int, function: str) -> str:
    return f"{_short(filename)}:{lineno} in {function}"


@functools.lru_cache(maxsize=1024)
def _short(filename: str) -> str:
    # Cached: relpath asks for the working directory each time, and a server
    # with 10,000 connections has 10,000 frames of the same few files.
    # site-packages/trio/_core/_run.py -> trio/_core/_run.py; a project's files
    # stay relative to the working directory when they are under it.
    marker = os.sep + "site-packages" + os.sep
    if marker in filename:
        return filename.rsplit(marker, 1)[1]
    try:
        relative = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if relative.startswith("..") else relative
