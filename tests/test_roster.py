"""The ``--workers`` supervisor's decisions (``millpond.cli.roster``), one event at a time.

Each test drives a ``Roster`` the way the supervisor does: an event in, the
actions out. ``Team`` plays the supervisor: it gives each ``Start`` a pid
and reports it started, and remembers what was sent to whom. Time is a
number the test moves. A hypothesis state machine at the end checks the
rolling replace's promise over random interleavings: while SIGHUPs come and
go, as many workers accept as there are slots, at every step.
"""

from __future__ import annotations

import itertools
import logging
import math
import signal

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from millpond.cli.roster import (
    CRASH_LIMIT,
    KILL_MARGIN_SECONDS,
    LISTEN_TIMEOUT_SECONDS,
    RESTART_BACKOFF_FIRST,
    RESTART_BACKOFF_MAX,
    STABLE_SECONDS,
    Action,
    Exit,
    Log,
    Phase,
    Roster,
    Send,
    Start,
    StopListening,
    describe_status,
    restart_delay,
)

GRACE = 30.0


class Team:
    """The supervisor's side, for tests: pids for ``Start``, a record of every action."""

    def __init__(self, workers: int, grace: float = GRACE) -> None:
        self.roster = Roster(workers, grace)
        self.now = 0.0
        self._pids = itertools.count(100)
        self.slot_of: dict[int, int] = {}
        self.sent: list[Send] = []
        self.logs: list[Log] = []
        self.exit: Exit | None = None
        self.stopped_listening = False
        self.last: list[Action] = []
        self.listened: set[int] = set()

    def carry_out(self, actions: list[Action]) -> list[Action]:
        """Do what the roster said (start processes, record the rest); everything it said."""
        done: list[Action] = []
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            done.append(action)
            if isinstance(action, Start):
                pid = next(self._pids)
                self.slot_of[pid] = action.slot
                queue += self.roster.started(action, pid, self.now)
            elif isinstance(action, Send):
                self.sent.append(action)
            elif isinstance(action, Log):
                self.logs.append(action)
            elif isinstance(action, StopListening):
                self.stopped_listening = True
            else:
                assert self.exit is None, "Exit twice"
                self.exit = action
        self.last = done
        return done

    def start(self) -> None:
        self.carry_out(self.roster.start(self.now))

    def listen(self, pid: int) -> list[Action]:
        self.listened.add(pid)
        return self.carry_out(self.roster.listening(pid, self.now))

    def starting(self) -> list[int]:
        """Workers that run and have not listened yet."""
        return [pid for pid in self.roster.pids if pid not in self.listened]

    def exit_(self, pid: int, returncode: int = 0) -> list[Action]:
        return self.carry_out(self.roster.exited(pid, returncode, self.now))

    def signal(self, signum: int) -> list[Action]:
        return self.carry_out(self.roster.signal(signum, self.now))

    def advance(self, seconds: float) -> list[Action]:
        self.now += seconds
        return self.carry_out(self.roster.tick(self.now))

    def pid_of(self, slot: int) -> int:
        """The newest running worker of ``slot``."""
        return max(pid for pid in self.roster.pids if self.slot_of[pid] == slot)

    def up(self) -> list[int]:
        """Start every worker and let each listen: the pids, slot by slot."""
        self.start()
        self.listen(self.pid_of(0))
        for slot in range(1, len(self._slots())):
            self.listen(self.pid_of(slot))
        assert self.roster.phase is Phase.RUNNING
        return [self.pid_of(slot) for slot in range(len(self._slots()))]

    def _slots(self) -> set[int]:
        return set(self.slot_of.values())

    def signals_to(self, pid: int) -> list[int]:
        return [send.signum for send in self.sent if send.pid == pid]

    def said(self, fragment: str) -> bool:
        return any(fragment in log.message for log in self.logs)


def starts(actions: list[Action]) -> list[Start]:
    return [action for action in actions if isinstance(action, Start)]


# --- start-up ---


def test_the_first_worker_starts_alone_and_the_others_once_it_listens() -> None:
    team = Team(3)
    team.start()
    assert team.roster.pids == [100]
    assert starts(team.listen(100)) == [Start(1), Start(2)]
    assert team.roster.phase is Phase.STARTING
    team.listen(101)
    team.listen(102)
    assert team.roster.phase is Phase.RUNNING
    assert team.said("all 3 worker(s) listening")


def test_started_workers_are_logged_with_their_pid() -> None:
    team = Team(1)
    team.start()
    assert team.said("worker 0 started (pid 100)")


def test_a_mistake_in_the_command_stops_at_the_first_worker() -> None:
    team = Team(4)
    team.start()
    actions = team.exit_(100, 2)
    assert not starts(actions)
    assert team.exit == Exit(2)
    assert team.said("the command is wrong")


def test_a_first_worker_that_crashes_is_started_again_after_a_backoff() -> None:
    team = Team(2)
    team.start()
    assert not starts(team.exit_(100, 1))
    assert team.roster.next_deadline() == RESTART_BACKOFF_FIRST
    assert starts(team.advance(RESTART_BACKOFF_FIRST)) == [Start(0)]


def test_workers_that_keep_dying_before_listening_stop_everything() -> None:
    team = Team(2)
    team.start()
    for death in range(1, CRASH_LIMIT + 1):
        team.exit_(team.pid_of(0), 1)
        if death < CRASH_LIMIT:
            assert team.exit is None
            team.advance(team.roster.next_deadline() - team.now)
    assert team.exit == Exit(1)
    assert team.said(f"{CRASH_LIMIT} times in a row: giving up")


def test_giving_up_stops_the_workers_that_serve() -> None:
    team = Team(2)
    first, second = team.up()
    team.exit_(second, -signal.SIGKILL)  # it listened: not a death before listening
    for _death in range(CRASH_LIMIT):
        team.advance(team.roster.next_deadline() - team.now)
        team.exit_(team.pid_of(1), 2)  # the code on disk broke since it started
    assert team.exit is None  # not before worker 0 is gone too
    assert team.signals_to(first) == [signal.SIGTERM]
    team.exit_(first, 0)
    assert team.exit == Exit(2)


# --- deaths and restarts ---


def test_a_worker_that_served_for_long_is_started_again_at_once() -> None:
    team = Team(2)
    first, _second = team.up()
    team.now += STABLE_SECONDS
    actions = team.exit_(first, -signal.SIGKILL)
    assert starts(actions) == [Start(0)]
    assert team.said(f"worker 0 (pid {first}) killed by SIGKILL after {STABLE_SECONDS:.1f} s")
    assert team.pid_of(0) != first


def test_young_deaths_back_off_exponentially_up_to_the_max() -> None:
    team = Team(1)
    team.up()
    delays = []
    for _death in range(12):
        team.now += 1.0  # listened, then died young
        team.exit_(team.pid_of(0), 1)
        delays.append(team.roster.next_deadline() - team.now)
        team.advance(delays[-1])
        team.listen(team.pid_of(0))
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert delays[-1] == RESTART_BACKOFF_MAX
    assert team.exit is None  # it listened each time: restarted for ever


@pytest.mark.parametrize(
    ("young_deaths", "delay"),
    [(0, 0.0), (1, RESTART_BACKOFF_FIRST), (2, 2 * RESTART_BACKOFF_FIRST), (30, 5.0)],
)
def test_restart_delay(young_deaths: int, delay: float) -> None:
    assert restart_delay(young_deaths) == pytest.approx(delay)


def test_a_worker_that_exits_by_itself_is_started_again() -> None:
    team = Team(2)
    _first, second = team.up()
    team.now += STABLE_SECONDS
    assert starts(team.exit_(second, 0)) == [Start(1)]


@pytest.mark.parametrize(
    ("returncode", "text"),
    [(0, "exited with status 0"), (3, "exited with status 3"), (-9, "killed by SIGKILL")],
)
def test_describe_status(returncode: int, text: str) -> None:
    assert describe_status(returncode) == text


def test_a_worker_that_does_not_listen_in_time_is_killed() -> None:
    team = Team(1)
    team.start()
    actions = team.advance(LISTEN_TIMEOUT_SECONDS)
    assert Send(100, signal.SIGKILL) in actions
    assert team.said(f"did not listen within {LISTEN_TIMEOUT_SECONDS:g} s")
    # It ran a minute, so it starts again at once, but it never listened: that
    # counts towards CRASH_LIMIT.
    assert starts(team.exit_(100, -signal.SIGKILL)) == [Start(0)]


# --- stopping ---


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_first_stop_signal_is_passed_on_as_sigterm(signum: int) -> None:
    team = Team(2)
    first, second = team.up()
    team.signal(signum)
    assert team.stopped_listening
    assert team.signals_to(first) == team.signals_to(second) == [signal.SIGTERM]
    team.exit_(first)
    assert team.exit is None
    team.exit_(second)
    assert team.exit == Exit(0)


def test_sigterm_while_stopping_changes_nothing() -> None:
    team = Team(2)
    first, _second = team.up()
    team.signal(signal.SIGTERM)
    assert team.signal(signal.SIGTERM) == [
        Log(logging.INFO, "SIGTERM while stopping: nothing more to do")
    ]
    assert team.signals_to(first) == [signal.SIGTERM]


def test_a_second_sigint_cancels_every_worker() -> None:
    team = Team(2)
    first, second = team.up()
    team.signal(signal.SIGINT)
    team.signal(signal.SIGINT)
    assert team.signals_to(first) == team.signals_to(second) == [signal.SIGTERM, signal.SIGINT]


def test_no_worker_is_started_again_while_stopping() -> None:
    team = Team(2)
    first, second = team.up()
    team.signal(signal.SIGTERM)
    assert not starts(team.exit_(first, -signal.SIGKILL))
    assert team.roster.next_deadline() == GRACE + KILL_MARGIN_SECONDS


def test_a_worker_that_does_not_stop_in_time_is_killed_and_the_exit_status_says_so() -> None:
    team = Team(2)
    first, second = team.up()
    team.signal(signal.SIGTERM)
    team.exit_(first)
    assert Send(second, signal.SIGKILL) in team.advance(GRACE + KILL_MARGIN_SECONDS)
    team.exit_(second, -signal.SIGKILL)
    assert team.exit == Exit(1)


def test_a_worker_still_starting_may_die_of_the_sigterm() -> None:
    team = Team(2)
    first, _second = team.up()
    team.now += STABLE_SECONDS
    team.exit_(first, -signal.SIGKILL)  # its replacement is starting...
    team.signal(signal.SIGTERM)  # ...and dies of this before its Trio run is up
    team.exit_(team.pid_of(0), -signal.SIGTERM)
    team.exit_(team.pid_of(1), 0)
    assert team.exit == Exit(0)


def test_no_grace_means_no_kill_deadline() -> None:
    team = Team(1, grace=math.inf)
    team.up()
    team.signal(signal.SIGTERM)
    assert team.roster.next_deadline() == math.inf


# --- the rolling replace ---


def test_sighup_starts_a_new_worker_before_stopping_the_old_one() -> None:
    team = Team(2)
    first, second = team.up()
    assert starts(team.signal(signal.SIGHUP)) == [Start(0, replaces=first)]
    new_first = team.pid_of(0)
    assert team.signals_to(first) == []  # still serving while the new one starts
    assert starts(team.listen(new_first)) == [Start(1, replaces=second)]
    assert team.signals_to(first) == [signal.SIGTERM]
    new_second = team.pid_of(1)
    team.listen(new_second)
    assert team.signals_to(second) == [signal.SIGTERM]
    assert team.said("SIGHUP: every worker replaced")
    assert not team.roster.replacing
    team.exit_(first)
    team.exit_(second)
    assert team.exit is None and not starts(team.last)  # replaced, not restarted
    assert sorted(team.roster.pids) == [new_first, new_second]


def test_sighups_during_a_round_make_one_more_round() -> None:
    team = Team(2)
    team.up()
    team.signal(signal.SIGHUP)
    team.signal(signal.SIGHUP)
    team.signal(signal.SIGHUP)
    for _step in range(10):
        (newcomer,) = team.starting()
        team.listen(newcomer)
        if not team.roster.replacing:
            break
    started = [log for log in team.logs if "to replace pid" in log.message]
    assert len(started) == 4  # two rounds of two, however many SIGHUPs came during the first
    assert team.said("SIGHUP: another round is queued already")


def test_sighup_during_start_up_replaces_after_it() -> None:
    team = Team(2)
    team.start()
    team.signal(signal.SIGHUP)
    assert starts(team.listen(100)) == [Start(1)]
    assert starts(team.listen(101)) == [Start(0, replaces=100)]


def test_a_replacement_that_fails_keeps_the_old_workers() -> None:
    team = Team(2)
    first, second = team.up()
    team.signal(signal.SIGHUP)
    actions = team.exit_(team.pid_of(0), 2)
    assert not starts(actions)
    assert team.signals_to(first) == [] and team.signals_to(second) == []
    assert team.said("keeping the old workers")
    assert not team.roster.replacing
    assert team.exit is None


def test_an_old_worker_that_dies_during_its_replacement_is_not_restarted() -> None:
    team = Team(2)
    first, _second = team.up()
    team.signal(signal.SIGHUP)
    newcomer = team.pid_of(0)
    assert not starts(team.exit_(first, -signal.SIGKILL))
    team.listen(newcomer)
    assert team.signals_to(first) == []
    assert team.pid_of(0) == newcomer


def test_stopping_during_a_round_stops_the_newcomer_too() -> None:
    team = Team(2)
    first, second = team.up()
    team.signal(signal.SIGHUP)
    newcomer = team.pid_of(0)
    team.signal(signal.SIGTERM)
    for pid in (first, second, newcomer):
        assert team.signals_to(pid) == [signal.SIGTERM]
        team.exit_(pid)
    assert team.exit == Exit(0)


class RollingReplace(RuleBasedStateMachine):
    """SIGHUPs, workers listening and old workers exiting, in any order: N workers always accept."""

    def __init__(self) -> None:
        super().__init__()
        self.slots = 3
        self.team = Team(self.slots)
        self.team.up()

    def draining(self) -> list[int]:
        return [pid for pid in self.team.roster.pids if signal.SIGTERM in self.team.signals_to(pid)]

    @rule()
    def sighup(self) -> None:
        self.team.signal(signal.SIGHUP)

    @precondition(lambda self: self.team.starting())
    @rule()
    def the_new_worker_listens(self) -> None:
        (newcomer,) = self.team.starting()
        self.team.listen(newcomer)

    @precondition(lambda self: self.draining())
    @rule(data=st.data())
    def an_old_worker_exits(self, data: st.DataObject) -> None:
        self.team.exit_(data.draw(st.sampled_from(self.draining())))

    @invariant()
    def every_slot_accepts(self) -> None:
        # Listening and not told to stop: the workers the kernel can hand clients.
        accepting = set(self.team.roster.pids) & self.team.listened
        assert len(accepting - set(self.draining())) == self.slots

    @invariant()
    def nothing_is_refused_or_killed(self) -> None:
        assert len(self.team.starting()) <= 1
        assert self.team.exit is None
        assert not any(send.signum == signal.SIGKILL for send in self.team.sent)


RollingReplace.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_rolling_replace_keeps_every_slot_accepting = RollingReplace.TestCase
