"""The audit trail: one JSON line per decision, hash-chained, with signed checkpoints, written
durably before any token leaves the broker (``writer``); copied into a queryable store
(``store``, ``shipping``); read and verified offline by the auditor's tools (``cli``).

Nothing is imported here: the auditor's commands load only what they use, and start fast.
"""
