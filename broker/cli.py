"""The ``broker`` command: serve, dev, sim, check-config, client-key, openapi."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import secrets
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from broker import __version__
from broker.audit.cli import add_audit_commands, add_command
from broker.audit.signing import CheckpointSigner
from broker.config import (
    ConfigError,
    Settings,
    callerless_warnings,
    cleartext_warnings,
    in_clear,
    load_settings,
    parse_settings,
    unanchored_warnings,
)
from broker.dev import DevSetupError, dev_banner, dev_config, places, prepare, write_config
from broker.observability import configure_logging
from broker.rules import CLIENT_KEY_PREFIX, CLIENT_KEY_RANDOM_BYTES
from broker.secrets import Secret, load_signer
from broker.terminal import printing, shown

if TYPE_CHECKING:
    from broker.runtime import Runtime
    from broker.server import PortBusy
    from broker.transport import ConnectionLimits, DirectRoute

EXIT_CONFIG = 2


def new_client_key() -> tuple[str, str]:
    key = CLIENT_KEY_PREFIX + secrets.token_urlsafe(CLIENT_KEY_RANDOM_BYTES)
    return key, hashlib.sha256(key.encode()).hexdigest()


def _fail(message: str) -> int:
    print(f"broker: configuration error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _port_busy(refused: PortBusy, hint: str) -> int:
    """One line, with ``hint`` (how to choose other ports) when another port would help."""
    said = f"{refused}; {hint}" if refused.in_use else f"{refused}; check the listen address"
    print(f"broker: cannot listen: {said}", file=sys.stderr)
    return EXIT_CONFIG


def _load(config: str, *, read_secrets: bool = True) -> tuple[Settings, CheckpointSigner | None]:
    """The settings and, unless told not to, every secret they name, read as ``serve`` reads
    them: a ConfigError names the file and the field, never a value."""
    settings = load_settings(config)
    if not read_secrets:
        return settings, None
    try:
        signer = load_signer(settings)
        from broker.federation import trust
        from broker.secrets import ApiKeySource

        ApiKeySource.current_key(settings.upstream, None)
        ApiKeySource.next_key(settings.upstream, None)
        for issuer in settings.issuers:
            trust(issuer)
        from broker.secrets import shared_state_other_keys, shared_state_secrets, store_url

        store_url(settings.audit)
        if settings.shared_state is not None:
            _, key = shared_state_secrets(settings.shared_state)
            shared_state_other_keys(settings.shared_state, key)
    except ConfigError as exc:
        raise ConfigError(f"{config}: {exc}") from None
    return settings, signer


def cmd_serve(args: argparse.Namespace) -> int:
    from broker.app import create_served
    from broker.server import Listener, PortBusy, connection_limits, serve

    try:
        settings, signer = _load(args.config)
        app, runtime, direct = create_served(settings, signer, args.config)
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

        if importlib.util.find_spec("granian") is None:
            return _fail(
                "--server granian: granian is not installed "
                "(pip install 'mka1-token-broker[granian]'); the default is uvicorn"
            )

        serve_granian(args.config, host, port, args.workers, settings.server.shutdown_grace_seconds)
        return 0
    if args.workers != 1:
        return _fail("--workers: uvicorn runs one worker here; use --server granian for more")
    listeners = [
        Listener(
            app,
            host,
            port,
            tuple(settings.server.trusted_proxies),
            settings.server.shutdown_grace_seconds,
            _api_limits(settings, runtime, direct),
        )
    ]
    if settings.server.telemetry_port is not None:
        from broker.app import create_telemetry_app

        listeners.append(
            Listener(
                create_telemetry_app(runtime),
                settings.server.telemetry_host or host,
                settings.server.telemetry_port,
                limits=connection_limits(settings.server, runtime.metrics, component="telemetry"),
            )
        )
    try:
        serve(*listeners)
    except PortBusy as exc:
        return _port_busy(exc, "choose another with --port or server.port")
    return 0


def _api_limits(
    settings: Settings, runtime: Runtime, direct: Mapping[tuple[bytes, bytes], DirectRoute]
) -> ConnectionLimits:
    """The API listener's bounds (descriptors are kept back for the upstream pool), with
    the routes it answers without ASGI."""
    from broker.server import connection_limits

    return connection_limits(
        settings.server,
        runtime.metrics,
        reserved_files=settings.upstream.max_connections,
        direct=direct,
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.config or args.file
    try:
        settings, _ = _load(path, read_secrets=not args.skip_secrets)
    except ConfigError as exc:
        return _fail(str(exc))
    secrets_checked = (
        "secrets not read (--skip-secrets)"
        if args.skip_secrets
        else "the API key, signing key, audit store URL and shared-state secrets were read"
    )
    print(
        f"{path}: OK ({len(settings.clients)} client(s), {len(settings.issuers)} "
        f"issuer(s), {len(settings.proxies)} prox(ies); {secrets_checked})"
    )
    warnings = cleartext_warnings(settings)
    if not args.skip_secrets:
        from broker.secrets import secret_cleartext_warnings

        warnings += secret_cleartext_warnings(settings)
    for warning in warnings + unanchored_warnings(settings) + callerless_warnings(settings):
        print(f"broker: warning: {warning}", file=sys.stderr)
    return 0


def _broker_url_problem(url: str) -> str | None:
    """Why ``url`` is not a broker's base URL that the admin key may be sent to, or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not one)
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("http", "https") or not url.startswith(parts.scheme + "://"):
        return "must be an http(s) URL"
    if "@" in parts.netloc:
        # urllib would take "user:password@host" for a host name, and every message that
        # names the URL would print the password.
        return "no user or password in it; the admin key is what authenticates"
    if not parts.hostname:
        return "names no host"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        # The path goes after it: "https://b?x=1/admin/revocations" asked for "/", and a
        # fragment was dropped with the path after it, the key sent all the same.
        return "must be the broker's base URL, without a query or a fragment"
    return None


def cmd_revoke(args: argparse.Namespace) -> int:
    import json

    from broker.admin_client import AdminCallFailed, Refused, call
    from broker.terminal import shown

    key = os.environ.get(args.key_env, "").strip()
    if not key:
        return _fail(f"--key-env: {args.key_env} is unset or empty")
    if (problem := _broker_url_problem(args.url)) is not None:
        return _fail(f"--url: {problem}")
    url = args.url.rstrip("/") + "/admin/revocations"
    if in_clear(url):
        print(
            "broker revoke: warning: the admin key goes in clear over http:// to a host that "
            "is not this one; use https://",
            file=sys.stderr,
        )
    data = None
    if not args.list:
        kind, value = next(
            (kind, value)
            for kind, value in (
                ("caller", args.caller),
                ("end_user", args.end_user),
                ("audience", args.audience),
            )
            if value is not None
        )
        body: dict[str, object] = {
            "kind": kind,
            "value": value,
            "action": "lift" if args.lift else "bar",
            "reason": args.reason,
        }
        if args.since:
            body["since"] = args.since
        data = json.dumps(body).encode()
    try:
        answer = call(url, key, data)
    except (AdminCallFailed, Refused) as failure:
        print(f"broker revoke: {failure}", file=sys.stderr)
        return 1
    if data is not None and answer.store_behind:
        print(
            f"broker revoke: warning: the audit store did not hold this change's record yet "
            f"({answer.store_behind} of the replica's records behind): the change is made, "
            "and its copy there, which brings a bar back if the shared store loses it, is "
            "still to come (see the replica's broker_audit_ship_lag_records)",
            file=sys.stderr,
        )
    where = (
        "every replica (shared store)"
        if answer.scope == "deployment"
        else "ONLY the replica that answered (no shared store)"
    )
    print(f"bars in force on {where}:")
    for bar in answer.bars:
        print(
            f"  {shown(bar.kind)} {shown(bar.value)} since {shown(bar.since)} "
            f"by {shown(bar.by)}: {shown(bar.reason)}"
        )
    if not answer.bars:
        print("  (none)")
    return 0


def cmd_client_key(_: argparse.Namespace) -> int:
    key, digest = new_client_key()
    print(f"client key (give to the client, store nowhere else): {key}")
    print(f'key_sha256 (put in the config):                      "{digest}"')
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from broker.config import ServerSettings
    from broker.server import Listener, PortBusy, connection_limits, serve
    from broker.sim import SimulatorConfig, create_simulator

    keys = list(args.api_key or [])
    if any(not key.strip() for key in keys):
        # An empty key would be one that anybody "holds".
        return _fail("--api-key: a key is empty")
    if args.api_key_env:
        value = os.environ.get(args.api_key_env, "").strip()
        if not value:
            return _fail(f"--api-key-env: {args.api_key_env} is unset or empty")
        keys.append(value)
    if not keys:
        return _fail("give at least one --api-key or --api-key-env")
    configure_logging("info", component="simulator")
    config = SimulatorConfig(
        api_keys=tuple(keys),
        issuer=args.issuer or f"http://{args.host}:{args.port}",
        faults=args.faults,
    )
    limits = connection_limits(ServerSettings(), component="simulator")
    try:
        serve(
            Listener(
                create_simulator(config),
                args.host,
                args.port,
                limits=limits,
                component="simulator",
            )
        )
    except PortBusy as exc:
        return _port_busy(exc, "choose another with --port")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from broker.app import create_served
    from broker.server import Listener, PortBusy, connection_limits, serve
    from broker.sim import SimulatorConfig, create_simulator

    where = places(args.audit_dir, args.port)
    api_key = Secret("mka1_dev_" + secrets.token_urlsafe(24))
    client_key, client_sha256 = new_client_key()
    document = dev_config(args.sim_port, args.port, where, client_sha256)
    try:
        # Before anything starts: a file there, or a place that cannot be written, would
        # have started a broker that refuses every token (its audit log failing).
        prepare(where)
        os.environ["MKA1_API_KEY"] = api_key.reveal()
        settings = parse_settings(document)
        signer = load_signer(settings)
        write_config(where.config, document)
    except (DevSetupError, ConfigError) as exc:
        print(f"broker dev: --audit-dir: {shown(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging("info", component="broker")
    simulator = create_simulator(
        SimulatorConfig(api_keys=(api_key.reveal(),), issuer=f"http://127.0.0.1:{args.sim_port}")
    )
    app, runtime, direct = create_served(settings, signer, where.config)
    banner = dev_banner(args.port, args.sim_port, where, client_key)
    try:
        serve(
            Listener(
                simulator,
                "127.0.0.1",
                args.sim_port,
                limits=connection_limits(settings.server, component="simulator"),
                component="simulator",
            ),
            Listener(
                app,
                "127.0.0.1",
                args.port,
                limits=_api_limits(settings, runtime, direct),
            ),
            on_ready=lambda: print(banner, flush=True),
        )
    except PortBusy as exc:
        return _port_busy(exc, "choose other ports: make dev PORT=8180 SIM_PORT=8190")
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from broker.api.openapi import render_openapi

    text = render_openapi()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"broker openapi: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _int_from(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``. ``type=int`` alone took
    ``--port 70000``, and the socket layer listened on 70000 - 65536 = 4464."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}: {text!r}")
        return value

    return parse


_PORT = _int_from(1, 65535)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker",
        description="Short-lived, audience-scoped MKA1 tokens for your callers, without "
        "handing out the MKA1 API key. Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = add_command(
        commands,
        "serve",
        "run the broker (exit 2 on a bad config or a busy port)",
        "broker serve --config /etc/broker/broker.toml",
    )
    serve.add_argument("--config", required=True, help="the TOML settings file")
    serve.add_argument("--host", help="listen on this address instead of server.host")
    serve.add_argument(
        "--port", type=_int_from(0, 65535), help="listen on this port instead of server.port"
    )
    serve.add_argument(
        "--server",
        choices=["uvicorn", "granian"],
        default="uvicorn",
        help="uvicorn on httptools, with the broker's connection bounds (chosen by bench/), "
        "or granian (its own bounds; needs the granian package)",
    )
    serve.add_argument(
        "--workers",
        type=_int_from(1, 64),
        default=1,
        help="worker processes (granian only; each has its own cache and audit chain)",
    )
    serve.set_defaults(func=cmd_serve)

    check = add_command(
        commands,
        "check-config",
        "check a settings file as serve would read it, the secrets it names included, and exit "
        "(0 OK, 2 not)",
        "broker check-config /etc/broker/broker.toml --skip-secrets",
    )
    # The file as serve takes it (--config) or as a plain argument: one of the two.
    named = check.add_mutually_exclusive_group(required=True)
    named.add_argument("file", nargs="?", help="the TOML settings file")
    named.add_argument("--config", help="the same, named as serve names it")
    check.add_argument(
        "--skip-secrets",
        action="store_true",
        help="do not read the API key or the signing key (for checking a production config "
        "where those secrets are not present)",
    )
    check.set_defaults(func=cmd_check_config)

    client_key = add_command(
        commands,
        "client-key",
        "print a new random client key (for the client) and its SHA-256 (for the config)",
        "broker client-key",
    )
    client_key.set_defaults(func=cmd_client_key)

    sim = add_command(
        commands,
        "sim",
        "run the local MKA1-compatible issuer (the exchange, a JWKS, and /api/v1/llm/responses)",
        "MKA1_API_KEY=mka1_local broker sim --api-key-env MKA1_API_KEY --port 8090",
    )
    sim.add_argument("--host", default="127.0.0.1", help="listen address")
    sim.add_argument("--port", type=_PORT, default=8090, help="listen port")
    sim.add_argument("--api-key", action="append", help="an API key it accepts (repeatable)")
    sim.add_argument("--api-key-env", help="read one more accepted API key from this variable")
    sim.add_argument("--issuer", help="the iss claim of its tokens (default: its own URL)")
    sim.add_argument(
        "--faults", action="store_true", help="enable /_sim/* fault injection (tests only)"
    )
    sim.set_defaults(func=cmd_sim)

    dev = add_command(
        commands,
        "dev",
        "the simulator and the broker together, with a demo client, on loopback",
        "broker dev --port 8080 --sim-port 8090   (or: make dev PORT=8080 SIM_PORT=8090)",
    )
    dev.add_argument("--port", type=_PORT, default=8080, help="the broker's port")
    dev.add_argument("--sim-port", type=_PORT, default=8090, help="the simulator's port")
    dev.add_argument("--audit-dir", default="var/audit", help="where the audit files go")
    dev.set_defaults(func=cmd_dev)

    add_audit_commands(commands)

    revoke = add_command(
        commands,
        "revoke",
        "bar a caller, an end user or an audience on every replica (or lift a bar, or list "
        "them), through a broker's admin API: the bar is on the audit trail before it applies",
        "broker revoke --url https://tokens.internal --key-env ADMIN_KEY --end-user user_123 "
        '--reason "account compromised"',
    )
    revoke.add_argument("--url", required=True, help="a broker's base URL")
    revoke.add_argument(
        "--key-env",
        required=True,
        metavar="VAR",
        help="the environment variable holding a client key with the admin role (never on "
        "the command line)",
    )
    whom = revoke.add_mutually_exclusive_group(required=True)
    whom.add_argument("--caller", help="a caller id (a client id, or ISSUER/SUBJECT)")
    whom.add_argument("--end-user", help="an end user (externalUserId)")
    whom.add_argument("--audience", help="an audience")
    whom.add_argument("--list", action="store_true", help="list the bars in force")
    revoke.add_argument("--lift", action="store_true", help="lift the bar instead")
    revoke.add_argument("--since", help="RFC 3339: the bar holds from then on (default: now)")
    revoke.add_argument("--reason", default="", help="why, for the audit trail")
    revoke.set_defaults(func=cmd_revoke)

    openapi = add_command(
        commands,
        "openapi",
        "write this API's OpenAPI document",
        "broker openapi --output openapi/openapi.json",
    )
    openapi.add_argument("--output", default="-", help="a file, or - for stdout")
    openapi.set_defaults(func=cmd_openapi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Until the running broker installs its reload handler (and again once it stops), a
    # SIGHUP must not kill the process: by default it would, mid-start or mid-seal.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = build_parser().parse_args(argv)
    return printing(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
