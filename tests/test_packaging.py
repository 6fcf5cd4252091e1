"""The package as users get it: its metadata, its commands, its sdist."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tomllib
import venv
from pathlib import Path

import pytest

from demo_app.__main__ import build_parser as notes_parser
from idsync_server_ref.cli import build_parser as server_parser

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SERVER_ONLY = ("uvicorn", "httptools", "prometheus-client", "psycopg")


def requirement_names(requirements: list[str]) -> set[str]:
    """The distribution names in a list of requirement strings."""
    names = set()
    for text in requirements:
        name = text
        for stop in "[<>=!~; ":
            name = name.split(stop, 1)[0]
        names.add(name.strip().lower())
    return names


def test_a_client_only_install_pulls_none_of_the_server_dependencies() -> None:
    runtime = requirement_names(PYPROJECT["project"]["dependencies"])
    assert not runtime & set(SERVER_ONLY)
    assert {"peewee", "requests", "tenacity", "orjson", "platformdirs"} <= runtime
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"uvicorn", "httptools", "prometheus-client"} <= requirement_names(extras["server"])
    assert any(text.startswith("idsync[server,postgresql]") for text in extras["test"])


def test_the_license_is_an_spdx_expression_with_its_file() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.parametrize("package", ["idsync_client", "idsync_server_ref", "demo_app"])
def test_every_package_says_it_is_typed(package: str) -> None:
    assert (ROOT / package / "py.typed").exists()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"][package]


def test_the_server_command_says_what_to_install_when_its_extra_is_missing() -> None:
    # None in sys.modules makes an import fail as if the package were absent.
    code = (
        "import sys\n"
        "for name in ('uvicorn', 'httptools', 'prometheus_client'): sys.modules[name] = None\n"
        "from idsync_server_ref.command import main\n"
        "sys.exit(main(['--help']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "pip install 'idsync[server]'" in done.stderr
    assert "uvicorn" in done.stderr and "Traceback" not in done.stderr


def test_the_notes_app_says_what_to_install_for_with_server(tmp_path) -> None:
    code = (
        "import sys\n"
        "for name in ('uvicorn', 'httptools', 'prometheus_client'): sys.modules[name] = None\n"
        "from demo_app.__main__ import main\n"
        "sys.exit(main(['--with-server', '--server', 'http://127.0.0.1:9']))\n"
    )
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 1
    assert "pip install 'idsync[server]'" in done.stderr and "Traceback" not in done.stderr


def test_the_light_server_modules_load_without_the_server_extra() -> None:
    # The notes app and the testing kit use these where only the client is installed.
    code = (
        "import sys\n"
        "for name in ('uvicorn', 'httptools', 'prometheus_client'): sys.modules[name] = None\n"
        "import idsync_server_ref, idsync_server_ref.config, idsync_server_ref.process\n"
        "import demo_app.__main__\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _flags_without_env(parser: argparse.ArgumentParser) -> list[str]:
    return [
        action.option_strings[-1]
        for action in parser._actions
        if action.option_strings
        and not isinstance(action, argparse._HelpAction | argparse._VersionAction)
        and "IDSYNC_" not in (action.help or "")
    ]


@pytest.mark.parametrize("parser", [server_parser, notes_parser], ids=["server", "notes"])
def test_every_flag_names_its_environment_variable(parser) -> None:
    assert _flags_without_env(parser()) == []


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("IDSYNC_SERVER", "none", "server", "none"),
        ("IDSYNC_NOTES_DB", "/tmp/x.sqlite3", "db", Path("/tmp/x.sqlite3")),
        ("IDSYNC_NOTES_STORE", "todo", "store", "todo"),
        ("IDSYNC_NOTES_TITLE", "Mine", "title", "Mine"),
        ("IDSYNC_NOTES_WITH_SERVER", "1", "with_server", True),
    ],
)
def test_the_notes_app_reads_each_variable_it_names(
    monkeypatch, variable, value, attribute, expected
) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(notes_parser().parse_args([]), attribute) == expected


def test_default_data_folders_follow_the_platform_rules(monkeypatch, tmp_path) -> None:
    from demo_app.__main__ import default_notes_path
    from idsync_server_ref.config import default_database_path

    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
        assert default_database_path() == tmp_path / "idsync" / "server.sqlite3"
        assert default_notes_path() == tmp_path / "idsync" / "notes-demo.sqlite3"
    assert default_database_path().parent == default_notes_path().parent


# -- the sdist ------------------------------------------------------------------


def _sdist_members(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, built from this tree as a release would be."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(ROOT)],
        check=True,
        timeout=600,
    )
    [built] = dist.glob("idsync-*.tar.gz")
    return built


def fresh_venv(folder: Path, requirement: str) -> Path:
    """A new virtualenv in ``folder`` with ``requirement`` installed; its python."""
    venv.create(folder, with_pip=True)
    python = folder / ("Scripts" if os.name == "nt" else "bin") / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", requirement], check=True, timeout=900
    )
    return python


@pytest.mark.sdist
def test_the_sdist_installs_and_its_tests_pass(sdist, tmp_path) -> None:
    members = _sdist_members(sdist)
    for needed in (
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "docs/client.md",
        "docs/protocol.md",
        "tests/conftest.py",
        "tests/crash_worker.py",
        "tests/bench/__main__.py",
        "tests/fixtures/v1/client.sqlite",
        "tests/fixtures/v1/server.sqlite",
        "idsync_client/py.typed",
        "demo_app/py.typed",
    ):
        assert needed in members, f"{needed} is not in the sdist"
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    [tree] = (tmp_path / "unpacked").iterdir()
    python = fresh_venv(tmp_path / "venv", f"{sdist}[test]")
    # The unpacked tree's tests, on the dependencies its metadata installed;
    # nothing of this checkout is on the path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [
            str(python), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
            "tests/test_jsoncodec.py", "tests/test_docs.py", "tests/test_client_migrations.py",
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout


@pytest.mark.sdist
def test_a_client_only_install_works_and_the_server_says_what_it_lacks(sdist, tmp_path) -> None:
    python = fresh_venv(tmp_path / "venv", str(sdist))
    code = (
        "import importlib.util, sys\n"
        "from idsync_client import Client\n"
        "with Client(sys.argv[1]) as client:\n"
        "    client.store('todo').add({'title': 'Buy milk'})\n"
        "print([m for m in ('uvicorn', 'httptools', 'prometheus_client', 'psycopg')"
        " if importlib.util.find_spec(m)])\n"
    )
    done = subprocess.run(
        [str(python), "-c", code, str(tmp_path / "app.sqlite3")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    server = python.parent / ("idsync-server.exe" if os.name == "nt" else "idsync-server")
    done = subprocess.run([str(server)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pip install 'idsync[server]'" in done.stderr
