"""Fixtures shared by the in-process tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.privileged import Guarded


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Guarded]:
    """The app with a reader, an auditor and an admin client, served in-process."""
    started = Guarded(tmp_path / "audit")
    started.driver.start()
    yield started
    started.driver.stop()
