"""Text from outside, made safe to print to a terminal.

What the command line prints can hold what others wrote: a record's fields and an audit
file's name (``broker audit``), a broker's answer (``broker revoke``). A control character
in them (an escape sequence, a carriage return, a newline) could rewrite what an operator
or auditor reads, or forge a line such as ``OK: ...``; it is shown escaped instead.
"""

from __future__ import annotations

import sys
from typing import TextIO


def shown(text: str) -> str:
    """``text`` with each character that is not printable escaped (``\\x1b``, ``\\n``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def say(text: str, file: TextIO | None = None) -> None:
    """Print one line of ``text``, whatever it holds, as one line."""
    print(shown(text), file=file if file is not None else sys.stdout)
