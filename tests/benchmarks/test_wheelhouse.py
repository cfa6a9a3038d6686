"""benchmarks/wheelhouse.py without a network: wheels made here on the fly, pip pointed at a local
folder only (no index, no machine-wide pip config), so the tests say the same offline and online."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wheels import PROBE, PROBE_MODULE, probe_wheel

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "wheelhouse.py"


def _module():
    spec = importlib.util.spec_from_file_location("wheelhouse", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheelhouse = _module()


@pytest.fixture
def offline_pip(tmp_path, monkeypatch) -> Path:
    """pip sees one local folder of wheels and nothing else; returns that folder."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # this machine's extra indexes and constraints
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def _imports_probe(target: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", f"import {PROBE_MODULE}; print({PROBE_MODULE}.VALUE)"],
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def test_install_puts_the_wheels_where_target_imports_them(tmp_path, offline_pip):
    probe_wheel(tmp_path / "whl")
    target = tmp_path / "site"
    record = wheelhouse.install(tmp_path / "whl", target, packages=(PROBE,))
    assert record["returncode"] == 0, record["tail"]
    assert record["installed"] == [f"{PROBE_MODULE}-0.1"] and record["missing"] == []
    assert _imports_probe(target) == "42"
    assert json.loads(json.dumps(record)) == record
    # A rerun with a newer wheel replaces the module instead of leaving the old one in place.
    (tmp_path / "whl" / f"{PROBE_MODULE}-0.1-py3-none-any.whl").unlink()
    probe_wheel(tmp_path / "whl", "0.2", value=7)
    assert wheelhouse.install(tmp_path / "whl", target, packages=(PROBE,))["returncode"] == 0
    assert _imports_probe(target) == "7"


@pytest.mark.parametrize("folder", ["absent", "empty"])
def test_no_wheels_is_recorded_not_raised(tmp_path, folder):
    if folder == "empty":
        (tmp_path / "whl").mkdir()
    record = wheelhouse.install(tmp_path / "whl", tmp_path / "site", packages=(PROBE, "json"))
    assert record["returncode"] is None and record["installed"] == []
    assert record["missing"] == [PROBE]  # json is importable, the probe is not
    expected = "no wheels in" if folder == "empty" else "no wheelhouse folder"
    assert expected in record["tail"] and "wheelhouse.py build" in record["tail"]


def test_a_corrupt_wheel_is_recorded_not_raised(tmp_path, offline_pip):
    (tmp_path / "whl").mkdir()
    (tmp_path / "whl" / f"{PROBE_MODULE}-0.1-py3-none-any.whl").write_bytes(b"not a zip archive")
    record = wheelhouse.install(tmp_path / "whl", tmp_path / "site", packages=(PROBE,))
    assert record["returncode"] not in (0, None) and record["tail"]
    assert record["installed"] == [] and record["missing"] == [PROBE]


def test_a_target_that_cannot_be_made_is_recorded_not_raised(tmp_path):
    probe_wheel(tmp_path / "whl")
    (tmp_path / "site").write_text("a file where the folder should be")
    record = wheelhouse.install(tmp_path / "whl", tmp_path / "site", packages=(PROBE,))
    assert record["returncode"] is None and "FileExistsError" in record["tail"]
    assert record["installed"] == [] and record["missing"] == [PROBE]


def test_missing_modules_names_what_this_interpreter_cannot_import(monkeypatch):
    monkeypatch.setattr(wheelhouse, "NEEDED_MODULES", ("json", "sa_no_such_module", "zipfile"))
    assert wheelhouse.missing_modules() == ["sa_no_such_module"]


def test_build_fetches_one_wheel_each_and_drops_their_older_versions(tmp_path, offline_pip, capsys):
    probe_wheel(offline_pip, "0.2")
    dest = tmp_path / "whl"
    stale = probe_wheel(dest, "0.1")
    saved = wheelhouse.build(dest, packages=(f"{PROBE}>=0.2",))
    assert saved == [dest / f"{PROBE_MODULE}-0.2-py3-none-any.whl"] and saved[0].is_file()
    assert not stale.exists()
    assert sorted(p.name for p in dest.iterdir()) == [saved[0].name]  # no scratch folder left behind
    assert "1 wheels" in capsys.readouterr().out


def test_build_names_each_package_without_a_wheel_and_the_fix(tmp_path, offline_pip):
    probe_wheel(offline_pip, "0.2")
    with pytest.raises(wheelhouse.WheelhouseError) as raised:
        wheelhouse.build(tmp_path / "whl", packages=("sa-no-such-package", f"{PROBE}>=9", PROBE))
    message = str(raised.value)
    assert "sa-no-such-package" in message and f"{PROBE}>=9" in message and "fix:" in message
    assert f"no wheel of {PROBE} for" not in message  # the one that exists is not blamed


def test_build_inside_a_checkout_says_how_to_keep_the_wheels_out_of_git(
    tmp_path, offline_pip, monkeypatch, capsys
):
    probe_wheel(offline_pip)
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    monkeypatch.setattr(wheelhouse, "ROOT", checkout)
    wheelhouse.build(checkout / ".whl", packages=(PROBE,))
    assert "echo /.whl/ >> .git/info/exclude" in capsys.readouterr().out
    (checkout / ".git" / "info" / "exclude").write_text("/.whl/\n")
    wheelhouse.build(checkout / ".whl", packages=(PROBE,))
    assert "exclude" not in capsys.readouterr().out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_cli_help_teaches_both_steps_and_lists_the_wheels():
    done = _cli("--help")
    assert done.returncode == 0
    for text in ("build", "install", "--no-deps", "PYTHONPATH", ".git/info/exclude"):
        assert text in done.stdout
    assert all(requirement in done.stdout for requirement in wheelhouse.MISSING_ON_GPU_IMAGE)


@pytest.mark.parametrize(
    "args, error", [(("install", "--bogus"), "unrecognized arguments: --bogus"), ((), "required")]
)
def test_cli_refuses_a_bad_argument(args, error):
    done = _cli(*args)
    assert done.returncode == 2 and error in done.stderr


def test_cli_install_prints_the_record_and_fails_without_wheels(tmp_path):
    done = _cli("install", "--wheelhouse", str(tmp_path / "whl"), "--target", str(tmp_path / "site"))
    assert done.returncode == 1
    assert json.loads(done.stdout)["returncode"] is None
