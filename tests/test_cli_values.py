"""The ``millpond`` command's value parsers, TARGET syntax and socket activation, without a process.

``test_cli.py`` runs the command; these check the pure parts it is made of,
value by value, where a subprocess per case would cost seconds.
"""

from __future__ import annotations

import argparse

import pytest

from millpond.cli import values
from millpond.cli.errors import CommandError
from millpond.cli.inherited import take_activation_fds
from millpond.cli.target import Target, parse_target


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("65536", 65536),
        ("512K", 512 << 10),
        ("512k", 512 << 10),
        ("64M", 64 << 20),
        ("64MiB", 64 << 20),
        ("1G", 1 << 30),
        (" 2 g ", 2 << 30),
    ],
)
def test_byte_count_suffixes_are_powers_of_1024(text: str, expected: int) -> None:
    assert values.byte_count(text) == expected


@pytest.mark.parametrize("text", ["", "0", "0K", "12Q", "64MB", "1.5M", "-1", "M", "1 T"])
def test_byte_count_refuses_anything_else(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected a byte count"):
        values.byte_count(text)


@pytest.mark.parametrize(("text", "expected"), [("0", 0.0), ("30", 30.0), ("0.25", 0.25)])
def test_seconds(text: str, expected: float) -> None:
    assert values.seconds(text) == expected


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "soon", ""])
def test_seconds_refuses_negative_infinite_and_words(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number of seconds"):
        values.seconds(text)


@pytest.mark.parametrize("text", ["none", "None", "off", " OFF "])
def test_seconds_or_none_turns_a_timeout_off(text: str) -> None:
    assert values.seconds_or_none(text) is None


def test_seconds_or_none_says_none_is_allowed() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="or 'none'"):
        values.seconds_or_none("never")
    assert values.seconds_or_none("1.5") == 1.5


@pytest.mark.parametrize(("text", "expected"), [("660", 0o660), ("0660", 0o660), ("0o600", 0o600)])
def test_permission_bits_are_octal(text: str, expected: int) -> None:
    assert values.permission_bits(text) == expected


@pytest.mark.parametrize("text", ["999", "1000", "rw", "", "-1", "0x1ff"])
def test_permission_bits_refuse_anything_else(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="permission bits in octal"):
        values.permission_bits(text)


def test_ports_counts_and_descriptors() -> None:
    assert values.port("0") == 0 and values.port("65535") == 65535
    assert values.count("1") == 1
    assert values.file_descriptor("0") == 0
    for parse, text in [
        (values.port, "65536"),
        (values.port, "-1"),
        (values.count, "0"),
        (values.count, "1.5"),
        (values.file_descriptor, "-3"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            parse(text)


def test_host_star_or_nothing_means_every_interface() -> None:
    assert values.host("*") == "*"
    assert values.host("") == "*"
    assert values.host(" ::1 ") == "::1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app:handle", Target("app:handle", "app", "handle", False)),
        (
            "pkg.app:server.handle",
            Target("pkg.app:server.handle", "pkg.app", "server.handle", False),
        ),
        ("app.py:handle", Target("app.py:handle", "app.py", "handle", True)),
        ("./dir/app.py:handle", Target("./dir/app.py:handle", "./dir/app.py", "handle", True)),
        ("dir/script:handle", Target("dir/script:handle", "dir/script", "handle", True)),
    ],
)
def test_parse_target(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["app", "app:", ":handle", "app:1st", "app-x:handle", "a:b:c-d"])
def test_parse_target_refuses_what_names_no_handler(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_target(text)


def test_activation_fds_for_this_process_are_taken_with_their_variables() -> None:
    environ = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "HOME": "/"}
    assert take_activation_fds(environ, 42) == [3, 4]
    assert environ == {"HOME": "/"}


def test_activation_fds_for_another_process_are_left_alone() -> None:
    environ = {"LISTEN_PID": "41", "LISTEN_FDS": "2"}
    assert take_activation_fds(environ, 42) == []
    assert environ == {"LISTEN_PID": "41", "LISTEN_FDS": "2"}
    assert take_activation_fds({}, 42) == []


def test_activation_with_a_bad_count_is_an_error() -> None:
    with pytest.raises(CommandError, match="LISTEN_FDS must be a number"):
        take_activation_fds({"LISTEN_PID": "42", "LISTEN_FDS": "two"}, 42)
