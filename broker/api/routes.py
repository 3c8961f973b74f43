"""Every route's path, once."""

TOKENS = "/tokens"
CALLER_POLICY = "/tokens/policy"
AUDIT_EVENTS = "/audit/events"
REVOCATIONS = "/admin/revocations"
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
OPENAPI = "/openapi.json"

# The routes of this app, for the access log's route label (anything else is "other").
ALL = frozenset(
    {TOKENS, CALLER_POLICY, AUDIT_EVENTS, REVOCATIONS, HEALTHZ, READYZ, METRICS, OPENAPI}
)
# Routes whose every request is on the audit trail (api/privileged.py).
PRIVILEGED = frozenset({AUDIT_EVENTS, REVOCATIONS})
# Routes a browser calls, so CORS applies.
BROWSER = frozenset({TOKENS, CALLER_POLICY})
