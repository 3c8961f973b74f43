"""What ``broker dev`` writes before it starts, and where: the demo settings, the audit
signing keys and the audit directory, all beside one another.

They live in the directory that holds the audit directory (``var/`` under ``make dev``):
``audit/``, ``audit-keys/`` and ``broker-dev-<port>.toml``. The settings used to go to the
shared temporary directory under a name anyone could predict, written through whatever
was there. Another local user could plant a symlink by that name (the next start wrote the
settings over any file the developer may write) or a file of their own (read again at every
reload), and every start left one more file behind.

So each place is checked before use: a directory another user owns, or that anyone may
write to, is refused with one line; the settings are written to a new file and renamed into
place, never through an existing name; and every path is quoted in the settings and in the
banner, so that a space or a quote in it is a path, not a syntax error.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from broker import __version__
from broker.audit.signing import generate_key_pair

DEV_AUDIENCE = "https://api.example.com"
SIGNING_KEY_NAME = "audit-signing"


class DevSetupError(Exception):
    """A place ``broker dev`` cannot use; the message names it and says why."""


@dataclass(frozen=True)
class DevPlaces:
    audit_dir: Path
    key_dir: Path
    config: Path

    @property
    def signing_key(self) -> Path:
        return self.key_dir / f"{SIGNING_KEY_NAME}.key"

    @property
    def public_key(self) -> Path:
        return self.key_dir / f"{SIGNING_KEY_NAME}.pub"


def places(audit_dir: str, port: int) -> DevPlaces:
    """Where a dev broker on ``port`` keeps its files, for ``--audit-dir audit_dir``."""
    resolved = Path(audit_dir).resolve()
    return DevPlaces(
        audit_dir=resolved,
        key_dir=resolved.parent / "audit-keys",
        config=resolved.parent / f"broker-dev-{port}.toml",
    )


def prepare(where: DevPlaces) -> None:
    """Make the audit directory and the signing keys if missing, after checking that each
    place is the developer's own. DevSetupError names the first one that is not."""
    try:
        str(where.audit_dir).encode("utf-8")
    except UnicodeEncodeError:
        raise DevSetupError(
            f"cannot use {where.audit_dir}: the path is not UTF-8, which a settings file needs"
        ) from None
    try:
        where.audit_dir.mkdir(parents=True, exist_ok=True)
        _check_shared_parent(where.audit_dir.parent)
        _check_own(where.audit_dir)
        if where.key_dir.exists():
            _check_own(where.key_dir)
        # lexists: a dangling link by the key's name is left for loading to refuse.
        if not os.path.lexists(where.signing_key):
            generate_key_pair(where.key_dir, SIGNING_KEY_NAME)
            _check_own(where.key_dir)
    except FileExistsError as exc:
        if exc.filename is not None:
            raise DevSetupError(f"cannot use {exc.filename}: it is not a directory") from None
        # generate_key_pair: the public key's name is taken, the private key's is not.
        raise DevSetupError(f"cannot use {where.key_dir}: {exc} exists without its key") from None
    except OSError as exc:
        place = exc.filename if exc.filename is not None else where.audit_dir
        raise DevSetupError(f"cannot use {place}: {exc.strerror}") from None


def _check_own(directory: Path) -> None:
    # The audit records and the signing key that vouches for them: another user who could
    # write here could swap the key or rewrite the trail the banner tells you to verify.
    status = os.stat(directory)
    if not stat.S_ISDIR(status.st_mode):
        raise DevSetupError(f"cannot use {directory}: it is not a directory")
    if status.st_uid != os.geteuid():
        raise DevSetupError(f"cannot use {directory}: it belongs to another user")
    if status.st_mode & stat.S_IWOTH:
        raise DevSetupError(f"cannot use {directory}: any user may write to it")


def _check_shared_parent(directory: Path) -> None:
    # The settings file goes here. In a directory anyone may write to, only the sticky bit
    # (as on /tmp) stops another user from renaming a file of theirs over it.
    mode = os.stat(directory).st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise DevSetupError(
            f"cannot use {directory} for the settings file: any user may write to it"
        )


def write_config(path: Path, text: str) -> None:
    """Put ``text`` at ``path`` (mode 0600) by renaming a new file over it: an existing name
    there, a symlink included, is replaced, never written through."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        os.unlink(temporary)
        raise DevSetupError(f"cannot write the settings to {path}: {exc.strerror}") from None


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped
    (TOML allows none of them raw; a path may hold any of them)."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif char < " " or char == "\x7f":
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def dev_config(sim_port: int, port: int, where: DevPlaces, client_sha256: str) -> str:
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
dir = {toml_string(str(where.audit_dir))}
signing_key_file = {toml_string(str(where.signing_key))}
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


def _broker_command() -> str:
    """How to run ``broker`` as the user can type it: the venv's script by a path relative to
    here when there is one (the venv is not on PATH under ``make dev``), else python -m."""
    script = Path(sys.executable).parent / "broker"
    if script.exists():
        relative = os.path.relpath(script)
        return shlex.quote(
            relative if relative.startswith(".") or "/" in relative else f"./{relative}"
        )
    return f"{shlex.quote(sys.executable)} -m broker"


def dev_banner(port: int, sim_port: int, where: DevPlaces, client_key: str) -> str:
    broker = _broker_command()
    audit_dir = shlex.quote(os.path.relpath(where.audit_dir))
    public_key = shlex.quote(os.path.relpath(where.public_key))
    return f"""
mka1-token-broker {__version__} (dev) is ready: broker on http://127.0.0.1:{port}, \
MKA1 simulator on http://127.0.0.1:{sim_port}
config written to {where.config}; audit records in {where.audit_dir}/

Get a token for end user user_123 (the demo client key is new on every start):

curl -sS -X POST http://127.0.0.1:{port}/tokens \\
  -H 'Authorization: Bearer {client_key}' \\
  -H 'Content-Type: application/json' \\
  -d '{{"audience": "{DEV_AUDIENCE}", "externalUserId": "user_123", "expiresIn": 900}}'

Stop with Ctrl-C, then verify the audit trail (or now, with --allow-crash-tail):

{broker} audit verify {audit_dir} --public-key {public_key}
"""
