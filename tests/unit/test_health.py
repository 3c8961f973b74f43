"""``/readyz`` in-process: a replica that cannot issue says so."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.privileged import AUDITOR_KEY, Guarded, bearer
from tests.support.waiting import eventually


def test_a_sync_replica_whose_own_chain_cannot_be_shipped_is_not_ready(tmp_path: Path) -> None:
    # Every token waited out its deadline there (no record reaches the store), while the
    # replica said it was ready and took its share of the traffic.
    guarded = Guarded(tmp_path / "audit", extra='[audit.store]\nmode = "sync"\n')
    guarded.driver.start()
    try:
        assert guarded.get("/readyz") == 200
        instance = guarded.runtime.audit.instance_id
        # A file of this chain that is not records: its shipping stops there.
        (tmp_path / "audit" / f"audit-{instance}-999999.jsonl").write_bytes(b"not a record\n")
        # A read writes a record, and the pass that ships it reads on into that file (the
        # read itself may have shipped first, or not).
        guarded.get("/audit/events", bearer(AUDITOR_KEY))
        shipper = guarded.runtime.shipper
        assert shipper is not None
        eventually(lambda: instance in shipper.status.stopped, what="its chain stopped")
        response = guarded.driver.request("GET", "/readyz")
        report = json.loads(response.body)
        assert response.status == 503
        assert report["checks"]["auditStore"] == "failing"
        assert report["detail"]["auditStore"]["chainsStopped"] == [instance]
    finally:
        guarded.driver.stop()
