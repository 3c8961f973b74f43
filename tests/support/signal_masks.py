"""``python -m tests.support.signal_masks``: print which signals this process blocks, ignores
and catches (``/proc/self/status``), to compare a forked process with a new interpreter."""

from pathlib import Path

for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith(("SigBlk", "SigIgn", "SigCgt")):
        print(line)
