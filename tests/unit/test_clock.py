"""Times in and out: what the broker writes, and the client times it accepts (RFC 3339 with
an offset or Z, a real moment that stays within datetime's range once in UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.clock import now_rfc3339_millis, parse_rfc3339, rfc3339


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-12-03T10:00:00Z", datetime(2026, 12, 3, 10, tzinfo=UTC)),
        ("2026-12-03t10:00:00z", datetime(2026, 12, 3, 10, tzinfo=UTC)),
        ("2026-12-03 10:00:00+01:00", datetime(2026, 12, 3, 9, tzinfo=UTC)),
        ("2026-12-03T10:00:00.5-05:30", datetime(2026, 12, 3, 15, 30, 0, 500_000, tzinfo=UTC)),
        # Any number of fraction digits (RFC 3339 time-secfrac); Python keeps six.
        ("2026-12-03T10:00:00." + "9" * 40 + "Z", datetime(2026, 12, 3, 10, 0, 0, 999_999, UTC)),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_rfc3339_times_are_read_as_the_moment_they_name(text: str, moment: datetime) -> None:
    assert parse_rfc3339(text) == moment


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "2026-12-03T10:00:00",  # no offset: this host's zone would decide
        "2026-12-03",
        "2026-12-03T10:00Z",  # no seconds
        "20261203T100000Z",  # ISO 8601 basic format, which fromisoformat takes
        "2026-W49-4T10:00:00Z",  # an ISO week date, likewise
        "2026-02-30T00:00:00Z",
        "2026-12-03T24:00:00Z",
        "2026-12-03T10:00:00+99:99",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59-23:59",  # the year 10000 once in UTC
        "0001-01-01T00:00:00+01:00",  # the year 0 once in UTC
        "\u0661\u0662\u0663\u0664-12-03T10:00:00Z",  # Arabic-Indic digits
        "2026-12-03T10:00:00Z\n",
    ],
)
def test_anything_else_is_no_time(text: str) -> None:
    assert parse_rfc3339(text) is None


def test_what_the_broker_writes_it_reads_back() -> None:
    written = now_rfc3339_millis()
    moment = parse_rfc3339(written)
    assert moment is not None
    assert abs(moment - datetime.now(UTC)) < timedelta(seconds=5)
    assert parse_rfc3339(rfc3339(0)) == datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_any_moment_a_client_may_name_is_written_in_four_digit_years_and_read_back(
    moment: datetime,
) -> None:
    # A bar since 0001-01-01 was written "1-01-01T00:00:00Z": on the trail for good, and
    # read back by nothing.
    written = rfc3339(moment.timestamp())
    assert written == f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"
    assert parse_rfc3339(written) == moment
