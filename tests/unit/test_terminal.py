"""Text from outside, shown on a terminal: controls escaped, the rest as it is; and how a
command that prints ends when it is stopped."""

from __future__ import annotations

import pytest

from broker.terminal import printing, say, shown


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("user_1 / https://a.example", "user_1 / https://a.example"),
        ("café ☕", "café ☕"),  # printable beyond ASCII stays readable
        ("\x1b[2Jcleared", "\\x1b[2Jcleared"),
        ("one\nOK: forged", "one\\nOK: forged"),
        ("back\rover", "back\\rover"),
        ("tab\there", "tab\\there"),
        ("\x00\x7f\u202e", "\\x00\\x7f\\u202e"),  # NUL, DEL, right-to-left override
    ],
)
def test_shown_escapes_what_is_not_printable_and_keeps_the_rest(text: str, printed: str) -> None:
    assert shown(text) == printed


def test_say_prints_one_line_whatever_the_text_holds(capsys: pytest.CaptureFixture[str]) -> None:
    say("a\nb\x1b")
    assert capsys.readouterr().out == "a\\nb\\x1b\n"


def test_a_command_stopped_by_ctrl_c_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert printing(interrupted) == 130
    assert capsys.readouterr().err == "broker: interrupted\n"


def test_a_command_that_prints_returns_its_own_status() -> None:
    assert printing(lambda: 3) == 3
