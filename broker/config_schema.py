"""The helm chart's schema for the broker's own settings, generated from the config structs.

The chart's ``values.schema.json`` describes ``broker.clients``, ``broker.issuers``,
``broker.proxies`` and the other sections with the same fields, types, bounds and patterns
the broker enforces, camelCased as the chart's values are (the chart turns them back into
snake_case), and with ``additionalProperties: false``: a typo fails ``helm install`` instead
of rendering, linting, and crash-looping. ``python -m broker.config_schema FILE`` rewrites
the generated part of FILE; a test fails when it has drifted.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import msgspec

from broker.config import (
    CacheSettings,
    ClientSettings,
    IssuerSettings,
    LoggingSettings,
    ProxySettings,
    RateLimitSettings,
    TokenSettings,
    UpstreamSettings,
)

_REF = "#/definitions/generated/{name}"
# Settings the chart renders itself from other values (secrets as mounted files).
_CHART_OWNED = {
    "UpstreamSettings": {
        "api_key_env",
        "api_key_file",
        "api_key_next_env",
        "api_key_next_file",
    },
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _camelized(schema: Any, definition: str | None = None) -> Any:
    """Property names camelCased, chart-owned ones dropped, and patterns in their ECMA-262
    form (the broker enforces them with Python's \\Z, JSON Schema reads $ as the end)."""
    if isinstance(schema, list):
        return [_camelized(item, definition) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            dropped = _CHART_OWNED.get(definition or "", set())
            out[key] = {
                _camel(name): _camelized(sub, definition)
                for name, sub in value.items()
                if name not in dropped
            }
        elif key == "required":
            out[key] = [_camel(name) for name in value]
        elif key == "pattern" and isinstance(value, str):
            out[key] = re.sub(r"\\Z$", "$", value)
        elif key == "title":
            continue
        else:
            out[key] = _camelized(value, definition)
    return out


def definitions() -> dict[str, Any]:
    """JSON Schema definitions for the broker sections of the chart's values."""
    _, components = msgspec.json.schema_components(
        [
            ClientSettings,
            IssuerSettings,
            ProxySettings,
            UpstreamSettings,
            TokenSettings,
            CacheSettings,
            RateLimitSettings,
            LoggingSettings,
        ],
        ref_template=_REF,
    )
    return {name: _camelized(schema, name) for name, schema in sorted(components.items())}


def update(path: Path) -> bool:
    """Rewrite the generated definitions in the schema file at ``path``; True if it changed."""
    document = json.loads(path.read_text(encoding="utf-8"))
    generated = definitions()
    if document.get("definitions", {}).get("generated") == generated:
        return False
    document.setdefault("definitions", {})["generated"] = generated
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return True


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(f"{argument}: {'updated' if update(Path(argument)) else 'unchanged'}")
