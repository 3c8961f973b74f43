"""The ``broker`` command: serve, dev, sim, check-config, client-key, openapi."""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import structlog

from broker import __version__
from broker.audit.cli import add_audit_commands
from broker.audit.signing import (
    CheckpointSigner,
    SigningKeyError,
    generate_key_pair,
    load_private_key,
)
from broker.config import (
    ConfigError,
    Secret,
    Settings,
    load_settings,
    parse_settings,
    resolve_signing_key,
)
from broker.observability import configure_logging

EXIT_CONFIG = 2


def new_client_key() -> tuple[str, str]:
    key = "bk_" + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def _fail(message: str) -> int:
    print(f"broker: configuration error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_serve(args: argparse.Namespace) -> int:
    from broker.app import create_served
    from broker.server import Listener, connection_limits, serve

    try:
        settings = load_settings(args.config)
        signer = load_signer(settings)
        app, runtime = create_served(settings, signer, args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    configure_logging(settings.logging.level)
    if signer is None:
        structlog.get_logger("broker").warning(
            "audit_checkpoints_unsigned",
            hint="set audit.signing_key_file or audit.signing_key_env (broker audit keygen)",
        )
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    if args.server == "granian":
        from broker.server import serve_granian

        serve_granian(args.config, host, port, args.workers, settings.server.shutdown_grace_seconds)
        return 0
    if args.workers != 1:
        return _fail("--workers: uvicorn runs one worker here; use --server granian for more")
    serve(
        Listener(
            app,
            host,
            port,
            tuple(settings.server.trusted_proxies),
            settings.server.shutdown_grace_seconds,
            connection_limits(
                settings.server,
                runtime.metrics,
                reserved_files=settings.upstream.max_connections,
            ),
        )
    )
    return 0


def load_signer(settings: Settings) -> CheckpointSigner | None:
    pem = resolve_signing_key(settings.audit)
    if pem is None:
        return None
    try:
        return load_private_key(pem)
    except SigningKeyError as exc:
        where = "signing_key_file" if settings.audit.signing_key_file else "signing_key_env"
        raise ConfigError(f"audit.{where}: {exc}") from None


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file)
    except ConfigError as exc:
        return _fail(str(exc))
    print(f"{args.file}: OK ({len(settings.clients)} client(s))")
    return 0


def cmd_client_key(_: argparse.Namespace) -> int:
    key, digest = new_client_key()
    print(f"client key (give to the client, store nowhere else): {key}")
    print(f'key_sha256 (put in the config):                      "{digest}"')
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from broker.server import Listener, serve
    from broker.sim import SimulatorConfig, create_simulator

    keys = list(args.api_key or [])
    if args.api_key_env:
        value = os.environ.get(args.api_key_env, "").strip()
        if not value:
            return _fail(f"--api-key-env: {args.api_key_env} is unset or empty")
        keys.append(value)
    if not keys:
        return _fail("give at least one --api-key or --api-key-env")
    configure_logging("info")
    config = SimulatorConfig(
        api_keys=tuple(keys),
        issuer=args.issuer or f"http://{args.host}:{args.port}",
        faults=args.faults,
    )
    from broker.config import ServerSettings
    from broker.server import connection_limits

    limits = connection_limits(ServerSettings(), component="simulator")
    serve(Listener(create_simulator(config), args.host, args.port, limits=limits))
    return 0


DEV_AUDIENCE = "https://api.example.com"


def dev_config(
    sim_port: int, port: int, audit_dir: str, client_sha256: str, signing_key: Path
) -> str:
    return f"""\
[server]
host = "127.0.0.1"
port = {port}

[upstream]
base_url = "http://127.0.0.1:{sim_port}"
api_key_env = "MKA1_API_KEY"
timeout_seconds = 5.0

[tokens]
default_expires_in = 900

[audit]
dir = "{audit_dir}"
signing_key_file = "{signing_key}"
checkpoint_interval_seconds = 10

[[clients]]
id = "demo-service"
key_sha256 = "{client_sha256}"
audiences = ["{DEV_AUDIENCE}"]
subjects = "any"
max_expires_in = 3600
default_expires_in = 900
permissions = ["read:responses", "write:responses"]
"""


def cmd_dev(args: argparse.Namespace) -> int:
    from broker.app import create_served
    from broker.server import Listener, connection_limits, serve
    from broker.sim import SimulatorConfig, create_simulator

    key_dir = Path(args.audit_dir).parent / "audit-keys"
    if not (key_dir / "audit-signing.key").exists():
        generate_key_pair(key_dir)
    api_key = Secret("mka1_dev_" + secrets.token_urlsafe(24))
    client_key, client_sha256 = new_client_key()
    document = dev_config(
        args.sim_port, args.port, args.audit_dir, client_sha256, key_dir / "audit-signing.key"
    )
    os.environ["MKA1_API_KEY"] = api_key.reveal()
    settings = parse_settings(document)
    signer = load_signer(settings)
    config_path = Path(tempfile.gettempdir()) / "mka1-token-broker-dev.toml"
    config_path.write_text(document, encoding="utf-8")
    configure_logging("info")
    simulator = create_simulator(
        SimulatorConfig(api_keys=(api_key.reveal(),), issuer=f"http://127.0.0.1:{args.sim_port}")
    )
    print(
        f"""
mka1-token-broker {__version__} (dev): broker on http://127.0.0.1:{args.port}, \
MKA1 simulator on http://127.0.0.1:{args.sim_port}
config written to {config_path}; audit records in {args.audit_dir}/

Get a token for end user user_123 (the demo client key is new on every start):

curl -sS -X POST http://127.0.0.1:{args.port}/tokens \\
  -H 'Authorization: Bearer {client_key}' \\
  -H 'Content-Type: application/json' \\
  -d '{{"audience": "{DEV_AUDIENCE}", "externalUserId": "user_123", "expiresIn": 900}}'

Verify the audit trail (after stopping, or with --allow-crash-tail while running):

broker audit verify {args.audit_dir} --public-key {key_dir / "audit-signing.pub"}
""",
        flush=True,
    )
    app, runtime = create_served(settings, signer, config_path)
    serve(
        Listener(
            simulator,
            "127.0.0.1",
            args.sim_port,
            limits=connection_limits(settings.server, component="simulator"),
        ),
        Listener(
            app,
            "127.0.0.1",
            args.port,
            limits=connection_limits(
                settings.server,
                runtime.metrics,
                reserved_files=settings.upstream.max_connections,
            ),
        ),
    )
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from broker.api.openapi import render_openapi

    text = render_openapi()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker", description="Short-lived, audience-scoped MKA1 tokens for your callers."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the broker")
    serve.add_argument("--config", required=True, help="the TOML settings file")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument(
        "--server",
        choices=["uvicorn", "granian"],
        default="uvicorn",
        help="uvicorn on httptools (default, chosen by bench/) or granian",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (granian only; each has its own cache and audit chain)",
    )
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check-config", help="validate a settings file and exit")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    client_key = commands.add_parser("client-key", help="print a new client key and its SHA-256")
    client_key.set_defaults(func=cmd_client_key)

    sim = commands.add_parser("sim", help="run the local MKA1-compatible issuer")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8090)
    sim.add_argument("--api-key", action="append", help="an API key it accepts (repeatable)")
    sim.add_argument("--api-key-env", help="read one more accepted API key from this variable")
    sim.add_argument("--issuer", help="the iss claim (default: its own URL)")
    sim.add_argument(
        "--faults", action="store_true", help="enable /_sim/* fault injection (tests only)"
    )
    sim.set_defaults(func=cmd_sim)

    dev = commands.add_parser("dev", help="the simulator and the broker together, with a demo")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--sim-port", type=int, default=8090)
    dev.add_argument("--audit-dir", default="var/audit")
    dev.set_defaults(func=cmd_dev)

    add_audit_commands(commands)

    openapi = commands.add_parser("openapi", help="write the OpenAPI document")
    openapi.add_argument("--output", default="-")
    openapi.set_defaults(func=cmd_openapi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Until the running broker installs its reload handler (and again once it stops), a
    # SIGHUP must not kill the process: by default it would, mid-start or mid-seal.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
