"""broker dev's files: where they go, that each place is the developer's own, and that the
settings are written by rename, never through a name someone else put there."""

from __future__ import annotations

import os
import shlex
import stat
import tomllib
from pathlib import Path

import pytest

from broker.config import parse_settings
from broker.dev import (
    DevPlaces,
    DevSetupError,
    dev_banner,
    dev_config,
    places,
    prepare,
    toml_string,
    write_config,
)

DIGEST = "0" * 64


def _places(tmp_path: Path) -> DevPlaces:
    return places(str(tmp_path / "state" / "audit"), 8080)


def test_everything_goes_beside_the_audit_directory(tmp_path: Path) -> None:
    where = places(str(tmp_path / "var" / "audit"), 8180)
    assert where.audit_dir == tmp_path / "var" / "audit"
    assert where.key_dir == tmp_path / "var" / "audit-keys"
    assert where.config == tmp_path / "var" / "broker-dev-8180.toml"
    assert where.signing_key == where.key_dir / "audit-signing.key"
    assert where.public_key == where.key_dir / "audit-signing.pub"


def test_prepare_makes_the_directories_and_a_key_pair_once(tmp_path: Path) -> None:
    where = _places(tmp_path)
    prepare(where)
    assert where.audit_dir.is_dir()
    first = where.signing_key.read_bytes()
    assert stat.S_IMODE(where.signing_key.stat().st_mode) == 0o600
    prepare(where)
    assert where.signing_key.read_bytes() == first


@pytest.mark.parametrize("which", ["audit_dir", "key_dir"])
def test_a_directory_anyone_may_write_to_is_refused(tmp_path: Path, which: str) -> None:
    where = _places(tmp_path)
    prepare(where)
    directory: Path = getattr(where, which)
    directory.chmod(0o777)
    with pytest.raises(DevSetupError) as refused:
        prepare(where)
    assert str(refused.value) == f"cannot use {directory}: any user may write to it"


def _someone_elses_directory(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, -1)  # nobody
        return theirs
    return Path("/")


@pytest.mark.parametrize("which", ["audit_dir", "key_dir"])
def test_a_directory_of_another_user_is_refused(tmp_path: Path, which: str) -> None:
    ours = _places(tmp_path)
    prepare(ours)
    theirs = _someone_elses_directory(tmp_path)
    where = DevPlaces(
        audit_dir=theirs if which == "audit_dir" else ours.audit_dir,
        key_dir=theirs if which == "key_dir" else ours.key_dir,
        config=ours.config,
    )
    with pytest.raises(DevSetupError) as refused:
        prepare(where)
    assert str(refused.value) == f"cannot use {theirs}: it belongs to another user"


def test_a_parent_anyone_may_write_to_is_refused_unless_sticky(tmp_path: Path) -> None:
    where = _places(tmp_path)
    parent = where.audit_dir.parent
    parent.mkdir()
    parent.chmod(0o777)
    with pytest.raises(DevSetupError) as refused:
        prepare(where)
    assert str(refused.value) == (
        f"cannot use {parent} for the settings file: any user may write to it"
    )
    # As /tmp is: others may add names, but not rename theirs over ours.
    parent.chmod(0o1777)
    prepare(where)
    assert where.signing_key.exists()


def test_a_file_where_a_directory_goes_is_named(tmp_path: Path) -> None:
    where = _places(tmp_path)
    where.audit_dir.parent.mkdir()
    where.key_dir.write_text("not a directory")
    with pytest.raises(DevSetupError) as refused:
        prepare(where)
    assert str(refused.value) == f"cannot use {where.key_dir}: it is not a directory"


def test_a_public_key_without_its_private_key_is_named(tmp_path: Path) -> None:
    where = _places(tmp_path)
    where.key_dir.mkdir(parents=True)
    where.public_key.write_text("left over")
    with pytest.raises(DevSetupError) as refused:
        prepare(where)
    assert str(refused.value) == (
        f"cannot use {where.key_dir}: {where.public_key} exists without its key"
    )


def test_a_path_that_is_not_utf8_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    where = places(os.fsdecode(bytes(tmp_path) + b"/\xff/audit"), 8080)
    with pytest.raises(DevSetupError, match="the path is not UTF-8"):
        prepare(where)
    assert list(tmp_path.iterdir()) == []


def test_the_settings_replace_a_planted_symlink_and_never_write_through_it(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    config = tmp_path / "broker-dev-8080.toml"
    config.symlink_to(victim)
    write_config(config, "[server]\n")
    assert victim.read_text() == "precious"
    assert not config.is_symlink()
    assert config.read_text() == "[server]\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broker-dev-8080.toml", "victim"]


def test_settings_that_cannot_be_put_in_place_leave_nothing_behind(tmp_path: Path) -> None:
    config = tmp_path / "broker-dev-8080.toml"
    (config / "inside").mkdir(parents=True)
    with pytest.raises(DevSetupError, match=f"cannot write the settings to {config}: "):
        write_config(config, "[server]\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broker-dev-8080.toml"]


@pytest.mark.parametrize(
    "text", ['a"b', "a\\b", "a\nb", "tab\there", "del\x7f", "\x00", "ünïcødé 🔑", "", "\\u0041"]
)
def test_toml_string_reads_back_as_written(text: str) -> None:
    assert tomllib.loads(f"value = {toml_string(text)}")["value"] == text


@pytest.mark.parametrize("name", ['with "quotes"', "with spaces", "back\\slash", "line\nbreak"])
def test_the_dev_settings_hold_any_audit_path(tmp_path: Path, name: str) -> None:
    # A quote in --audit-dir was a TOML syntax error, and a traceback.
    where = places(str(tmp_path / name / "audit"), 8080)
    settings = parse_settings(dev_config(8090, 8080, where, DIGEST))
    assert settings.audit.dir == str(where.audit_dir)
    assert settings.audit.signing_key_file == str(where.signing_key)


def test_the_banner_quotes_paths_for_the_shell(tmp_path: Path) -> None:
    where = places(str(tmp_path / "my audit's" / "audit"), 8080)
    banner = dev_banner(8080, 8090, where, "bk_demo")
    verify = next(line for line in banner.splitlines() if " audit verify " in line)
    argv = shlex.split(verify)
    assert argv[-4:-2] == ["verify", os.path.relpath(where.audit_dir)]
    assert argv[-2:] == ["--public-key", os.path.relpath(where.public_key)]
