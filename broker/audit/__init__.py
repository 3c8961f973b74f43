"""The audit trail: one JSON line per decision, hash-chained, with signed checkpoints, written
durably before any token leaves the broker."""

from broker.audit.records import AuditEvent, Outcome
from broker.audit.signing import CheckpointSigner
from broker.audit.writer import AuditUnavailable, AuditWriter

__all__ = ["AuditEvent", "AuditUnavailable", "AuditWriter", "CheckpointSigner", "Outcome"]
