"""``idsync-server COMMAND``: the maintenance commands, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from idsync_client import jsoncodec
from idsync_server_ref.admin import COMMANDS
from idsync_server_ref.storage import SqliteStorage, StoreDropped
from idsync_server_ref.storage.testing import add, delete

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idsync_server_ref", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database with store ``notes``: a, b, c added, a and b deleted."""
    path = tmp_path / "server.sqlite3"
    storage = SqliteStorage(path)
    storage.create_store("notes")
    storage.push("notes", "c1", [add(1, "a"), add(2, "b"), add(3, "c", {"t": "é"}, ("tag:x",))])
    storage.push("notes", "c1", [delete(4, "a"), delete(5, "b")])
    storage.close()
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_is_documented(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0 and f"idsync-server {command}" in result.stdout
    assert "--db" in result.stdout
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert f"idsync-server {command}" in operations
    assert command in run("--help").stdout


def test_compact_removes_the_entries_of_deleted_records(db: Path) -> None:
    # Retention counted from now: nothing is old enough yet.
    result = run("compact", "--db", str(db))
    assert result.returncode == 0 and "0 log entries removed" in result.stdout
    result = run("--db", str(db), "compact", "notes", "--retention", "0s")
    assert result.returncode == 0, result.stderr
    assert "4 log entries removed" in result.stdout and "notes: horizon 5" in result.stdout
    storage = SqliteStorage(db)
    try:
        info = storage.get_store("notes")
        assert (info.horizon_seq, info.log_length, info.live_records) == (5, 1, 1)
    finally:
        storage.close()
    bad = run("compact", "--db", str(db), "--retention", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_retention_is_set_per_store(db: Path) -> None:
    assert run("retention", "notes", "0s", "--db", str(db)).returncode == 0
    result = run("compact", "--db", str(db))  # the default 7d does not apply to notes
    assert "4 log entries removed" in result.stdout
    result = run("retention", "notes", "default", "--db", str(db))
    assert result.returncode == 0 and "default" in result.stdout
    missing = run("retention", "nope", "1h", "--db", str(db))
    assert missing.returncode == 1 and "no store named 'nope'" in missing.stderr


def test_vacuum_shrinks_the_file_after_compaction(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite3"
    storage = SqliteStorage(path)
    storage.create_store("notes")
    big = {"text": "x" * 4000}
    for round_ in range(10):
        base = round_ * 100
        storage.push("notes", "c1", [add(base + i + 1, f"k{base + i}", big) for i in range(50)])
        storage.push("notes", "c1", [delete(base + 51 + i, f"k{base + i}") for i in range(50)])
    storage.set_retention("notes", 0)
    storage.close()
    assert run("compact", "--db", str(path)).returncode == 0
    result = run("vacuum", "--db", str(path))
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    before, after = int(words[1]), int(words[4])
    print(f"\nvacuum: {before} -> {after} bytes")
    assert after < before / 4


def test_export_then_import_under_another_name(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes.ndjson"
    result = run("export", "notes", "-o", str(out), "--db", str(db))
    assert result.returncode == 0, result.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert jsoncodec.loads(lines[0])["store"] == "notes" and len(lines) == 4
    stdout = run("export", "notes", "--db", str(db)).stdout
    assert stdout.splitlines() == lines
    result = run("import", "copy", str(out), "--db", str(db))
    assert result.returncode == 0 and "1 live records" in result.stdout
    again = run("import", "copy", str(out), "--db", str(db))
    assert again.returncode == 1 and "exists" in again.stderr
    storage = SqliteStorage(db)
    try:
        assert storage.get_record("copy", "c") == storage.get_record("notes", "c")
    finally:
        storage.close()


def test_import_of_a_bad_file_writes_nothing(db: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ndjson"
    source = SqliteStorage(db)
    lines = list(source.export_store("notes"))
    source.close()
    bad.write_text("\n".join([*lines, '{"key": "z", "index": [], "seq": 1}']) + "\n")
    result = run("import", "copy", str(bad), "--db", str(db))
    assert result.returncode == 1
    assert "line 5" in result.stderr and "nothing written" in result.stderr
    storage = SqliteStorage(db)
    try:
        assert [s.name for s in storage.list_stores()] == ["notes"]
    finally:
        storage.close()
    from_stdin = run("import", "copy", "-", "--db", str(db), stdin="\n".join(lines))
    assert from_stdin.returncode == 0, from_stdin.stderr


def test_drop_remembers_the_store(db: Path) -> None:
    result = run("drop", "notes", "--db", str(db))
    assert result.returncode == 0 and "dropped notes" in result.stdout
    again = run("drop", "notes", "--db", str(db))
    assert again.returncode == 1 and "was dropped" in again.stderr
    storage = SqliteStorage(db)
    try:
        with pytest.raises(StoreDropped):
            storage.push("notes", "c1", [add(9, "z")])
    finally:
        storage.close()


def test_a_database_that_cannot_be_opened_is_status_2(tmp_path: Path) -> None:
    result = run("vacuum", "--db", "mysql://nowhere/db")
    assert result.returncode == 2 and "cannot open the database" in result.stderr


@pytest.mark.parametrize(
    "command",
    [["compact"], ["vacuum"], ["export", "notes"], ["drop", "notes"], ["retention", "notes", "7d"]],
)
def test_a_mistyped_database_is_refused_and_not_created(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "typo" / "serevr.sqlite3"
    result = run(*command, "--db", str(typo))
    assert result.returncode == 2 and "no database at" in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing created"


@pytest.mark.parametrize("name", ["Notes", "", "a b/../é", "x" * 300])
def test_import_refuses_a_store_name_no_client_could_reach(
    db: Path, tmp_path: Path, name: str
) -> None:
    out = tmp_path / "notes.ndjson"
    assert run("export", "notes", "-o", str(out), "--db", str(db)).returncode == 0
    result = run("import", name, str(out), "--db", str(db))
    assert result.returncode == 2 and "store name" in result.stderr
    storage = SqliteStorage(db)
    try:
        assert [s.name for s in storage.list_stores()] == ["notes"]
    finally:
        storage.close()


def test_import_refuses_a_head_that_leaves_no_room_to_grow(db: Path, tmp_path: Path) -> None:
    source = SqliteStorage(db)
    lines = list(source.export_store("notes"))
    source.close()
    header = jsoncodec.loads(lines[0])
    header["head_seq"] = 2**63 - 1
    result = run(
        "import",
        "copy",
        "-",
        "--db",
        str(db),
        stdin="\n".join([jsoncodec.dumps(header), *lines[1:]]),
    )
    assert result.returncode == 1 and "head_seq" in result.stderr


def test_export_to_a_place_it_cannot_write_says_so_in_one_line(db: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    for target in (folder, tmp_path / "no-such-folder" / "x.ndjson"):
        result = run("export", "notes", "-o", str(target), "--db", str(db))
        assert result.returncode == 1 and "cannot write" in result.stderr
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder", "server.sqlite3"]


def test_export_into_a_reader_that_stops_early_is_no_error(db: Path) -> None:
    pipeline = subprocess.run(
        f"{sys.executable} -m idsync_server_ref export notes --db {db} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pipeline.stdout.count("\n") == 1 and "Traceback" not in pipeline.stderr


@pytest.mark.parametrize("duration", ["99999999999999999999d", "101y", "3200000000"])
def test_retention_refuses_a_duration_over_a_hundred_years(db: Path, duration: str) -> None:
    result = run("retention", "notes", duration, "--db", str(db))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_a_postgresql_url_without_the_driver_says_what_to_install() -> None:
    """The postgresql extra missing (psycopg hidden here): one line, status 2."""
    code = (
        "import sys; sys.modules['psycopg'] = None;"
        " from idsync_server_ref.admin import main;"
        " sys.exit(main(['vacuum', '--db', 'postgresql://nobody@127.0.0.1:9/none']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "idsync[postgresql]" in result.stderr
    assert "Traceback" not in result.stderr
