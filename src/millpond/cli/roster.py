"""The supervisor's decisions, with no process in them: which worker holds each slot, and what next.

``millpond serve --workers N`` runs N worker processes under a supervisor
(``supervisor.py``). Everything that supervisor *decides* lives here, as plain
bookkeeping that tests drive event by event without a process, a signal or a
clock, the way h11 keeps HTTP's rules apart from sockets. The supervisor
reports what happened (``started``, ``listening``, ``exited``, ``signal``,
``tick``) and carries out the actions it gets back: ``Start`` a worker for a
slot, ``Send`` a signal to a pid, ``Log`` a line, ``StopListening``,
``Exit`` with a status.
Every event carries ``now``, a monotonic clock reading; ``next_deadline``
says when ``tick`` is due.

A *slot* is one of the N places a worker serves from. Its index is the
worker's ``--worker-index``, kept across restarts; each slot has its own
listening socket, which the supervisor holds and every worker of the slot
inherits (why: ``supervisor.py``).

The decisions, each made in one place below:

- **Start-up** (``start``, ``listening``): slot 0's worker starts alone, the
  others once it listens. A mistake in the command (a TARGET that does not
  import, a certificate that does not load) makes every worker fail the same
  way, so it is said once, by one worker, and the supervisor exits 2 at once
  rather than start it again.
- **A worker that dies** (``exited``) is started again: at once if it had run
  for ``STABLE_SECONDS``, else after a backoff that doubles from
  ``RESTART_BACKOFF_FIRST`` up to ``RESTART_BACKOFF_MAX`` (systemd's
  ``RestartSec`` default is where it starts). A worker that dies before it
  listens, ``CRASH_LIMIT`` times in a row in one slot, is not a worker that
  will start: every worker is stopped and the supervisor exits 2 if the last
  one said the command is wrong, else 1.
- **Signals** (``signal``): the table ``_ON_SIGNAL``. The first SIGTERM or
  SIGINT stops every worker gracefully, and always with SIGTERM: under a
  terminal's Ctrl-C, systemd's ``KillMode=control-group`` or a ``kill`` of the
  process group, each worker has had the signal already, and a SIGTERM after
  it changes nothing for a worker, where a second SIGINT would cancel its
  connections. A SIGINT after that is passed on as SIGINT: the second
  Ctrl-C, cancel now. The supervisor exits once every worker has.
- **Rolling replace** (SIGHUP): slot by slot, a new worker starts next to the
  old one; once it listens the old one is told to stop gracefully, and the
  next slot begins. The old one drains in the background; the port never
  closes and at least one worker accepts at every moment. A SIGHUP during a
  replacement is *coalesced*: however many arrive, one more round runs after
  this one, so that every worker ends up started after the last SIGHUP. A
  new worker that exits before it listens (the new code is broken) ends the
  round and keeps the old workers serving, as ``nginx -s reload`` keeps its
  old workers when the new configuration does not load.
- **Deadlines** (``tick``): a worker that has not listened
  ``LISTEN_TIMEOUT_SECONDS`` after it started, or that has not exited
  ``KILL_MARGIN_SECONDS`` after its graceful time was up, is sent SIGKILL.
"""

from __future__ import annotations

import enum
import logging
import math
import signal
from dataclasses import dataclass
from typing import Final, TypeAlias

from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

__all__ = [
    "CRASH_LIMIT",
    "KILL_MARGIN_SECONDS",
    "LISTEN_TIMEOUT_SECONDS",
    "RESTART_BACKOFF_FIRST",
    "RESTART_BACKOFF_MAX",
    "STABLE_SECONDS",
    "Action",
    "Exit",
    "Log",
    "Roster",
    "Send",
    "Start",
    "StopListening",
    "describe_status",
    "restart_delay",
]

# A worker that ran this long before it died had been serving: start the next
# one at once. One that died sooner may die again as soon, so wait, longer
# each time (restart_delay). Ten seconds is systemd's StartLimitIntervalSec.
STABLE_SECONDS: Final = 10.0

# The first wait before starting again a worker that died young (systemd's
# RestartSec default), doubled at each young death in a row, up to the max.
# While a slot has no worker, the clients the kernel hands its socket wait in
# the backlog, so the max is what those clients may wait, plus a start: a
# few seconds, not gunicorn's or systemd's minutes.
RESTART_BACKOFF_FIRST: Final = 0.1
RESTART_BACKOFF_MAX: Final = 5.0

# Deaths before listening, in a row, in one slot, before the supervisor gives
# up: five, as systemd's StartLimitBurst. With the backoff above that is five
# starts in about 1.5 s: a broken worker is reported quickly, and a transient
# failure (a full disk, a dependency restarting) gets a few chances.
CRASH_LIMIT: Final = 5

# A worker that has not listened this long after it started is stuck (an
# import waiting on the network, a deadlock): killed, and counted as a death
# before listening. Generous, for applications that load large models.
LISTEN_TIMEOUT_SECONDS: Final = 60.0

# A worker cancels its connections itself when its --graceful-timeout is up,
# and exits a moment later; one still there this much later is stuck in code
# that does not yield to Trio, and is killed.
KILL_MARGIN_SECONDS: Final = 5.0


@dataclass(frozen=True, slots=True)
class Start:
    """Start a worker for ``slot``; ``replaces`` is the pid it takes over from (SIGHUP), if any."""

    slot: int
    replaces: int | None = None


@dataclass(frozen=True, slots=True)
class Send:
    """Send signal ``signum`` to worker ``pid``."""

    pid: int
    signum: int


@dataclass(frozen=True, slots=True)
class Log:
    """Log ``message`` at ``level`` (a ``logging`` level), on the supervisor's logger."""

    level: int
    message: str


@dataclass(frozen=True, slots=True)
class StopListening:
    """Close the supervisor's listening sockets: the kernel refuses new clients once the workers
    have closed theirs too (they do as they start stopping)."""


@dataclass(frozen=True, slots=True)
class Exit:
    """Every worker is gone: the supervisor exits with ``status``."""

    status: int


Action: TypeAlias = Start | Send | Log | StopListening | Exit


class Phase(enum.Enum):
    """Where the supervisor is in its life."""

    STARTING = "starting"  # not every slot has had a worker listen yet
    RUNNING = "running"
    STOPPING = "stopping"  # told to stop (or gave up): waiting for the workers to exit


# What a signal does, by phase: an explicit table, so that every case is
# written down once (h11's _state.py does this for HTTP).
_ON_SIGNAL: Final[dict[tuple[Phase, int], str]] = {
    (Phase.STARTING, signal.SIGTERM): "stop",
    (Phase.STARTING, signal.SIGINT): "stop",
    (Phase.STARTING, signal.SIGHUP): "replace",  # after start-up (coalesced below)
    (Phase.RUNNING, signal.SIGTERM): "stop",
    (Phase.RUNNING, signal.SIGINT): "stop",
    (Phase.RUNNING, signal.SIGHUP): "replace",
    (Phase.STOPPING, signal.SIGTERM): "nothing",  # systemd and killpg repeat it
    (Phase.STOPPING, signal.SIGINT): "cancel",  # the second Ctrl-C
    (Phase.STOPPING, signal.SIGHUP): "nothing",
}


def restart_delay(young_deaths: int) -> float:
    """How long to wait before starting a slot again, after ``young_deaths`` young deaths in a row.

    0 when the worker that died had been running for ``STABLE_SECONDS``
    (``young_deaths == 0``), then ``RESTART_BACKOFF_FIRST`` doubled at each
    further young death, up to ``RESTART_BACKOFF_MAX``.
    """
    if young_deaths <= 0:
        return 0.0
    return float(min(RESTART_BACKOFF_FIRST * 2 ** (young_deaths - 1), RESTART_BACKOFF_MAX))


def describe_status(returncode: int) -> str:
    """How a process ended, from its ``Popen.returncode``: ``exited with status 1``, ``killed by
    SIGKILL``."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}"


@dataclass(slots=True)
class _Worker:
    slot: int
    pid: int
    started_at: float
    listening: bool = False
    stopping: bool = False  # sent SIGTERM by the supervisor
    replaces: int | None = None  # the pid it takes over from (SIGHUP)
    deadline: float = math.inf  # SIGKILL if still starting or still stopping by then
    killed: bool = False  # sent SIGKILL by the supervisor

    def name(self) -> str:
        return f"worker {self.slot} (pid {self.pid})"


@dataclass(slots=True)
class _Slot:
    index: int
    pid: int | None = None  # its worker, starting or listening; None while it has none
    restart_at: float | None = None  # when to start its next worker, if one is due
    young_deaths: int = 0  # deaths within STABLE_SECONDS of their start, in a row
    early_deaths: int = 0  # deaths before listening, in a row
    listened: bool = False  # a worker of this slot has listened at least once


class Roster:
    """The workers of a ``--workers`` supervisor, and what to do about each thing that happens.

    Pure bookkeeping: feed it events, carry out the actions it returns, in
    order. The smallest correct use, as ``supervisor.py`` does it::

        roster = Roster(workers=2, grace=30.0)
        actions = roster.start(now)                  # [Start(slot=0)]
        # ... start a process for each Start, then:
        actions = roster.started(start, pid, now)    # [Log("worker 0 started (pid ...)")]
        actions = roster.listening(pid, now)         # [Start(1)]: the others follow
        actions = roster.signal(signal.SIGTERM, now) # [Log(...), Send(pid, SIGTERM), ...]
        actions = roster.exited(pid, 0, now)         # ... and at the last one, [Exit(0)]

    ``grace`` is the workers' ``--graceful-timeout`` (``math.inf`` for none):
    how long a worker told to stop may take before the supervisor kills it
    (plus ``KILL_MARGIN_SECONDS``).
    """

    def __init__(self, workers: int, grace: float) -> None:
        if type(workers) is not int or workers < 1:
            raise ValueError(f"workers must be a whole number >= 1, not {workers!r}")
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0 seconds, not {grace!r}")
        self._slots = [_Slot(index) for index in range(workers)]
        self._grace = grace
        self._workers: dict[int, _Worker] = {}
        self._phase = Phase.STARTING
        self._others_started = False  # slots 1.. start once slot 0's first worker listens
        self._exit_status = EXIT_OK
        # The rolling replace: the slots still to do, the one in progress (its
        # new worker is starting), and whether another round was asked for.
        self._round: list[int] = []
        self._replacing: int | None = None
        self._another_round = False

    @property
    def phase(self) -> Phase:
        """Where the supervisor is: starting, running, or stopping."""
        return self._phase

    @property
    def pids(self) -> list[int]:
        """Every worker still running (starting, serving or stopping), oldest first."""
        return list(self._workers)

    @property
    def replacing(self) -> bool:
        """Whether a rolling replace (SIGHUP) is in progress."""
        return self._replacing is not None

    def start(self, now: float) -> list[Action]:
        """The supervisor is up: start the first worker (the others follow once it listens)."""
        return [Start(0)]

    def started(self, start: Start, pid: int, now: float) -> list[Action]:
        """The worker ``start`` asked for runs as ``pid``."""
        worker = _Worker(start.slot, pid, now, replaces=start.replaces)
        worker.deadline = now + LISTEN_TIMEOUT_SECONDS
        self._workers[pid] = worker
        slot = self._slots[start.slot]
        if start.replaces is None:
            slot.pid = pid
        if self._phase is Phase.STOPPING:  # asked for before a stop, started after it
            return self._stop_worker(worker, now)
        replacing = f", to replace pid {start.replaces}" if start.replaces is not None else ""
        return [Log(logging.INFO, f"worker {start.slot} started (pid {pid}){replacing}")]

    def start_failed(self, start: Start, reason: str, now: float) -> list[Action]:
        """The worker ``start`` asked for could not be started (``fork`` or ``exec`` failed)."""
        actions: list[Action] = [
            Log(logging.ERROR, f"could not start worker {start.slot}: {reason}")
        ]
        if self._phase is Phase.STOPPING:
            return actions + self._exit_if_done()
        if start.replaces is not None:
            return actions + self._end_round(start.slot, now)
        return actions + self._after_death(self._slots[start.slot], None, EXIT_FAILURE, now)

    def listening(self, pid: int, now: float) -> list[Action]:
        """Worker ``pid`` said it listens (its server accepts)."""
        worker = self._workers.get(pid)
        if worker is None or worker.stopping or worker.listening:
            return []
        worker.listening = True
        worker.deadline = math.inf
        slot = self._slots[worker.slot]
        slot.early_deaths = 0
        slot.listened = True
        actions: list[Action] = []
        if worker.replaces is not None:
            actions += self._take_over(worker, now)
        if self._phase is Phase.STARTING:
            actions += self._start_up(worker, now)
        return actions

    def exited(self, pid: int, returncode: int, now: float) -> list[Action]:
        """Worker ``pid`` exited; ``returncode`` as ``Popen`` has it (< 0: killed by a signal)."""
        worker = self._workers.pop(pid, None)
        if worker is None:
            return []
        slot = self._slots[worker.slot]
        if slot.pid == pid:
            slot.pid = None
        how = describe_status(returncode)
        if self._phase is Phase.STOPPING:
            return self._stopped(worker, returncode, how)
        if worker.stopping:  # replaced by a SIGHUP, done draining
            return [Log(logging.INFO, f"{worker.name()} {how}: replaced")]
        if worker.replaces is not None and not worker.listening:
            message = (
                f"SIGHUP: the new {worker.name()} {how} before it listened; keeping the old "
                "workers (fix what it logged, then send SIGHUP again)"
            )
            return [Log(logging.ERROR, message), *self._end_round(worker.slot, now)]
        if self._replacing == worker.slot and slot.pid is None:
            # Its replacement is already starting: that is the restart.
            message = f"{worker.name()} {how} while its replacement starts"
            return [Log(logging.WARNING, message)]
        return self._after_death(slot, worker, returncode, now)

    def signal(self, signum: int, now: float) -> list[Action]:
        """The supervisor received ``signum`` (SIGTERM, SIGINT or SIGHUP)."""
        name = signal.Signals(signum).name
        step = _ON_SIGNAL.get((self._phase, signum), "nothing")
        if step == "stop":
            message = f"{name}: stopping every worker gracefully (SIGINT again cancels them)"
            return [Log(logging.INFO, message), *self._stop(EXIT_OK, now)]
        if step == "cancel":
            actions: list[Action] = [
                Log(logging.INFO, f"{name} while stopping: cancelling the connections left")
            ]
            for worker in self._workers.values():
                actions.append(Send(worker.pid, signal.SIGINT))
                if not worker.killed:
                    worker.deadline = min(worker.deadline, now + KILL_MARGIN_SECONDS)
            return actions
        if step == "replace":
            return self._replace(now)
        return [Log(logging.INFO, f"{name} while stopping: nothing more to do")]

    def tick(self, now: float) -> list[Action]:
        """Time passed: start the slots whose backoff is over, kill workers past their deadline."""
        actions: list[Action] = []
        if self._phase is not Phase.STOPPING:
            for slot in self._slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    slot.restart_at = None
                    actions.append(Start(slot.index))
        for worker in self._workers.values():
            if worker.deadline <= now and not worker.killed:
                worker.killed = True
                worker.deadline = math.inf
                if worker.stopping:
                    why = "did not stop in time"
                else:
                    why = f"did not listen within {LISTEN_TIMEOUT_SECONDS:g} s"
                actions.append(Log(logging.ERROR, f"{worker.name()} {why}: killing it"))
                actions.append(Send(worker.pid, signal.SIGKILL))
        return actions

    def next_deadline(self) -> float:
        """When ``tick`` is next due (``math.inf``: only an event can change anything)."""
        deadlines = [worker.deadline for worker in self._workers.values()]
        if self._phase is not Phase.STOPPING:
            deadlines += [s.restart_at for s in self._slots if s.restart_at is not None]
        return min(deadlines, default=math.inf)

    # --- start-up ---

    def _start_up(self, worker: _Worker, now: float) -> list[Action]:
        actions: list[Action] = []
        if not self._others_started:
            # The first worker listens: the command works. Start the rest.
            self._others_started = True
            actions += [Start(slot.index) for slot in self._slots[1:]]
        if all(slot.listened for slot in self._slots):
            self._phase = Phase.RUNNING
            count = len(self._slots)
            actions.append(Log(logging.INFO, f"all {count} worker(s) listening"))
            if self._another_round:
                self._another_round = False
                actions += self._replace(now)
        return actions

    # --- deaths and restarts ---

    def _after_death(
        self, slot: _Slot, worker: _Worker | None, returncode: int, now: float
    ) -> list[Action]:
        """A slot lost its worker (or could not start one): start another, later, or give up."""
        lived = 0.0 if worker is None else now - worker.started_at
        listened = worker is not None and worker.listening
        slot.young_deaths = slot.young_deaths + 1 if lived < STABLE_SECONDS else 0
        if not listened:
            slot.early_deaths += 1
        who = f"worker {slot.index}" if worker is None else worker.name()
        how = describe_status(returncode)
        if worker is not None and not listened and not any(s.listened for s in self._slots):
            if returncode == EXIT_USAGE:
                message = (
                    f"{who} {how} before it listened: the command is wrong (its message is "
                    "above); not starting it again"
                )
                return [Log(logging.ERROR, message), *self._stop(EXIT_USAGE, now)]
        if slot.early_deaths >= CRASH_LIMIT:
            status = EXIT_USAGE if returncode == EXIT_USAGE else EXIT_FAILURE
            message = (
                f"{who} {how} before it listened, {slot.early_deaths} times in a row: "
                "giving up, stopping every worker"
            )
            return [Log(logging.ERROR, message), *self._stop(status, now)]
        delay = restart_delay(slot.young_deaths)
        when = "starting another now" if delay == 0 else f"starting another in {delay:g} s"
        ran = f" after {lived:.1f} s" if worker is not None else ""
        actions: list[Action] = [Log(logging.WARNING, f"{who} {how}{ran}; {when}")]
        if delay == 0:
            actions.append(Start(slot.index))
        else:
            slot.restart_at = now + delay
        return actions

    # --- stopping ---

    def _stop(self, status: int, now: float) -> list[Action]:
        """Stop every worker gracefully; exit with ``status`` once they are gone."""
        self._phase = Phase.STOPPING
        self._exit_status = status
        self._round.clear()
        self._replacing = None
        self._another_round = False
        for slot in self._slots:
            slot.restart_at = None
        actions: list[Action] = [StopListening()]
        for worker in self._workers.values():
            actions += self._stop_worker(worker, now)
        return actions + self._exit_if_done()

    def _stop_worker(self, worker: _Worker, now: float) -> list[Action]:
        if worker.stopping:
            return []  # a replaced one, draining already, under its own deadline
        worker.stopping = True
        if not worker.killed:
            worker.deadline = now + self._grace + KILL_MARGIN_SECONDS
        return [Send(worker.pid, signal.SIGTERM)]

    def _stopped(self, worker: _Worker, returncode: int, how: str) -> list[Action]:
        # A worker that had not listened yet may die of the SIGTERM itself (its
        # signal handling starts with its server): that is stopping as asked.
        as_asked = returncode == EXIT_OK or (
            not worker.listening and not worker.killed and returncode != EXIT_USAGE
        )
        level = logging.INFO if as_asked else logging.ERROR
        if not as_asked and self._exit_status == EXIT_OK:
            self._exit_status = EXIT_FAILURE
        return [Log(level, f"{worker.name()} {how}"), *self._exit_if_done()]

    def _exit_if_done(self) -> list[Action]:
        if self._phase is Phase.STOPPING and not self._workers:
            return [Exit(self._exit_status)]
        return []

    # --- the rolling replace ---

    def _replace(self, now: float) -> list[Action]:
        """SIGHUP: start a round, or ask for one more after the round (or start-up) in progress."""
        if self._phase is Phase.STARTING or self._replacing is not None:
            already = self._another_round
            self._another_round = True
            if already:
                return [Log(logging.INFO, "SIGHUP: another round is queued already")]
            after = "start-up" if self._phase is Phase.STARTING else "this round"
            message = f"SIGHUP: replacing every worker again after {after}"
            return [Log(logging.INFO, message)]
        count = len(self._slots)
        self._round = [slot.index for slot in self._slots]
        message = f"SIGHUP: replacing the {count} worker(s) one at a time"
        return [Log(logging.INFO, message), *self._replace_next(now)]

    def _replace_next(self, now: float) -> list[Action]:
        while self._round:
            slot = self._slots[self._round.pop(0)]
            if slot.pid is None:
                continue  # dead, and its next worker starts from today's code anyway
            self._replacing = slot.index
            return [Start(slot.index, replaces=slot.pid)]
        self._replacing = None
        actions: list[Action] = [Log(logging.INFO, "SIGHUP: every worker replaced")]
        if self._another_round:
            self._another_round = False
            actions += self._replace(now)
        return actions

    def _take_over(self, worker: _Worker, now: float) -> list[Action]:
        """A replacement listens: it takes the slot, the old worker stops, the round goes on."""
        slot = self._slots[worker.slot]
        slot.pid = worker.pid
        actions: list[Action] = []
        old = self._workers.get(worker.replaces) if worker.replaces is not None else None
        if old is not None:
            message = f"{worker.name()} listens: stopping pid {old.pid} gracefully"
            actions += [Log(logging.INFO, message), *self._stop_worker(old, now)]
        worker.replaces = None
        return actions + self._replace_next(now)

    def _end_round(self, index: int, now: float) -> list[Action]:
        """A replacement failed: stop the round here; the slot keeps (or gets back) a worker."""
        self._round.clear()
        self._replacing = None
        slot = self._slots[index]
        actions: list[Action] = []
        if slot.pid is None and slot.restart_at is None:
            # Its old worker died while the replacement was starting.
            actions += [Start(index)]
        if self._another_round:
            self._another_round = False
            actions += self._replace(now)
        return actions
