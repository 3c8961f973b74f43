"""Which signals a process blocks, ignores and catches, as ``/proc/PID/status`` says (bit
``n - 1`` stands for signal ``n``). Standard library only: the fork server uses it too.

``python -m tests.support.signal_masks`` prints its own, to compare a forked process with a
new interpreter."""

from __future__ import annotations

from pathlib import Path

MASKS = ("SigBlk", "SigIgn", "SigCgt")


def signal_masks(pid: int | str = "self") -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = (line.split(":", 1) for line in lines)
    return {name: int(value, 16) for name, value in fields if name in MASKS}


def ignores(pid: int, signum: int) -> bool:
    return bool(signal_masks(pid)["SigIgn"] >> (signum - 1) & 1)


if __name__ == "__main__":
    for name, mask in signal_masks().items():
        print(f"{name}:\t{mask:016x}")
