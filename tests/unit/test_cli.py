"""The command line as a new user meets it: every command and argument says what it is, shows
its default and an example; wrong input is one clear line and exit status 2."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cli import build_parser, main
from tests.support.waiting import free_port


def _commands(
    parser: argparse.ArgumentParser, path: str = "broker"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from _commands(sub, f"{path} {name}")
                else:
                    yield f"{path} {name}", sub


COMMANDS = dict(_commands(build_parser()))


def test_every_command_is_there() -> None:
    assert set(COMMANDS) == {
        "broker serve",
        "broker check-config",
        "broker client-key",
        "broker sim",
        "broker dev",
        "broker openapi",
        "broker audit keygen",
        "broker audit verify",
        "broker audit query",
        "broker audit find-token",
        "broker audit export",
        "broker revoke",
    }


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_describes_its_arguments_and_shows_an_example(command: str) -> None:
    parser = COMMANDS[command]
    assert parser.description
    assert parser.epilog is not None
    assert parser.epilog.startswith("example:\n  ")
    assert "broker " in parser.epilog
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command}: {action.dest} has no help"
    text = parser.format_help()
    for action in parser._actions:
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            assert f"(default: {action.default})" in text, f"{command}: {action.dest}"


def test_query_and_find_token_print_the_same_format_by_default() -> None:
    def default_format(command: str) -> object:
        (action,) = [a for a in COMMANDS[command]._actions if a.dest == "format"]
        assert "JSON Lines" in (action.help or "")
        return action.default

    assert default_format("broker audit query") == default_format("broker audit find-token")


def _broker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_sha256_that_is_not_hex_is_refused(tmp_path: Path) -> None:
    result = _broker("audit", "find-token", str(tmp_path), "--sha256", "not-a-hash")
    assert result.returncode == 2
    assert "64 hexadecimal characters" in result.stderr


def test_a_missing_path_is_named_as_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = _broker("audit", "query", str(missing))
    assert result.returncode == 2
    assert f"{missing}: no such file or directory" in result.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["serve", "--config", "x.toml", "--port", "70000"], "from 0 to 65535: '70000'"),
        (["serve", "--config", "x.toml", "--port", "-1"], "from 0 to 65535: '-1'"),
        (["serve", "--config", "x.toml", "--workers", "0"], "from 1 to 64: '0'"),
        (["serve", "--config", "x.toml", "--workers", "100000"], "from 1 to 64: '100000'"),
        (["sim", "--port", "65536"], "from 1 to 65535: '65536'"),
        (["sim", "--port", "not-a-port"], "from 1 to 65535: 'not-a-port'"),
        (["dev", "--port", "70000"], "from 1 to 65535: '70000'"),
        (["dev", "--sim-port", "0"], "from 1 to 65535: '0'"),
    ],
)
def test_a_port_or_worker_count_out_of_range_is_one_line_and_exit_2(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # int alone took --port 70000, and the socket layer listened on 70000 - 65536 = 4464.
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert f"must be an integer {said}" in capsys.readouterr().err


def test_dev_refuses_an_audit_dir_a_settings_file_cannot_name_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not UTF-8: writing the settings file was a UnicodeEncodeError traceback.
    audit_dir = os.fsdecode(bytes(tmp_path) + b"/\xff/audit")
    ports = ["--port", str(free_port()), "--sim-port", str(free_port())]
    assert main(["dev", "--audit-dir", audit_dir, *ports]) == 2
    assert capsys.readouterr().err == (
        f"broker dev: --audit-dir: cannot use {tmp_path}/\\udcff/audit: the path is not UTF-8,"
        " which a settings file needs\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_dev_refuses_an_audit_dir_it_cannot_use_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "audit"
    a_file.write_text("not a directory")
    ports = ["--port", str(free_port()), "--sim-port", str(free_port())]
    assert main(["dev", "--audit-dir", str(a_file), *ports]) == 2
    assert capsys.readouterr().err == (
        f"broker dev: --audit-dir: cannot use {a_file}: it is not a directory\n"
    )
    # Nothing was made beside it: no signing keys for a broker that never ran.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["audit"]


def test_openapi_where_it_cannot_write_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    below_a_file = tmp_path / "a-file" / "openapi.json"
    (tmp_path / "a-file").write_text("")
    assert main(["openapi", "--output", str(below_a_file)]) == 2
    assert capsys.readouterr().err == (
        f"broker openapi: cannot write {below_a_file}: Not a directory\n"
    )


@pytest.mark.parametrize("key", ["", "  "])
def test_the_simulator_refuses_an_empty_api_key(
    key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", "--port", str(free_port()), "--api-key", "k", "--api-key", key]) == 2
    assert capsys.readouterr().err == "broker: configuration error: --api-key: a key is empty\n"


def test_check_config_takes_the_file_as_serve_names_it_or_as_an_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        '[upstream]\nbase_url = "https://api.mka1.example"\napi_key_env = "MKA1_API_KEY"\n'
        f'[audit]\ndir = "{tmp_path / "audit"}"\n'
    )
    # `serve --config FILE` and then `check-config --config FILE`: an operator's first try
    # was "unrecognized arguments: --config".
    for args in (["--config", str(config)], [str(config)]):
        assert main(["check-config", *args, "--skip-secrets"]) == 0
        said = capsys.readouterr()
        assert said.out.startswith(f"{config}: OK (0 client(s)")
        # A file that lets nobody in is valid, and said to be what it is.
        assert said.err.startswith("broker: warning: no callers are configured")
    for args in ([str(config), "--config", str(config)], []):
        with pytest.raises(SystemExit) as refused:
            main(["check-config", *args])
        assert refused.value.code == 2
        assert "error: " in capsys.readouterr().err
