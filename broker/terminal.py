"""Text from outside, made safe to print to a terminal.

What the command line prints can hold what others wrote: a record's fields and an audit
file's name (``broker audit``), a broker's answer (``broker revoke``). A control character
in them (an escape sequence, a carriage return, a newline) could rewrite what an operator
or auditor reads, or forge a line such as ``OK: ...``; it is shown escaped instead.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import TextIO

# 128 + the signal, as a shell reports a command that a reader leaving (SIGPIPE) or a
# Ctrl-C (SIGINT) stopped.
EXIT_BROKEN_PIPE = 141
EXIT_INTERRUPTED = 130


def shown(text: str) -> str:
    """``text`` with each character that is not printable escaped (``\\x1b``, ``\\n``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def say(text: str, file: TextIO | None = None) -> None:
    """Print one line of ``text``, whatever it holds, as one line."""
    print(shown(text), file=file if file is not None else sys.stdout)


def printing(command: Callable[[], int]) -> int:
    """Run a command that prints, and return its exit status. If whoever reads its output
    goes away (``broker audit query ... | head``), nothing is wrong that a traceback could
    explain: what is still buffered goes nowhere, not into a second error at exit, and the
    status is a shell's for a reader that left."""
    try:
        status = command()
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        # Ctrl-C on a long verify or export: stopped, as asked, in one line.
        print("broker: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        # The output cannot be written (`> /dev/full`, a full disk): said in one line. The
        # commands' own files say their own errors before this.
        _discard_stdout()
        print(f"broker: cannot write the output: {exc.strerror}", file=sys.stderr)
        return 1
    return status


# What writing to standard output fails with when its file cannot take more.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _discard_stdout() -> None:
    """What is still buffered goes nowhere, not into a second error at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
