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


@pytest.fixture(scope="module")
def guarded_by_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    """The same app, for the tests of one module that change nothing in it (refusals): each
    start and stop of the app and its shipping costs about 0.3 s."""
    started = Guarded(tmp_path_factory.mktemp("guarded") / "audit")
    started.driver.start()
    yield started
    started.driver.stop()
