"""A pulled page commits without a sync to disk; every local write still syncs."""

from __future__ import annotations

from pathlib import Path

import pytest

from idsync_client.localdb import LocalDB

CURSOR = "0123456789abcdef.1.0123456789abcdef"


def synchronous(db: LocalDB) -> int:
    return db._scalar("PRAGMA synchronous")


@pytest.mark.parametrize(("level", "code"), [("FULL", 2), ("EXTRA", 3), ("NORMAL", 1)])
def test_a_pulled_page_is_applied_at_normal_and_the_level_comes_back(
    tmp_path: Path, level: str, code: int
) -> None:
    db = LocalDB(tmp_path / "c.db", synchronous=level)
    try:
        assert synchronous(db) == code
        during: list[int] = []
        original = db._set_cursor

        def noting(store: str, cursor: str) -> None:
            during.append(synchronous(db))
            original(store, cursor)

        db._set_cursor = noting  # type: ignore[method-assign]
        change = {"seq": 1, "op": "add", "key": "k", "index": ["tag:a"], "value": {"v": 1}}
        assert db.apply_pulled("notes", [change], CURSOR, None) is not None
        assert during == [1], "the page's transaction does not sync to disk"
        assert synchronous(db) == code, "later writes are as durable as asked"
        db.add("notes", "mine", (), "{}")
        assert synchronous(db) == code
    finally:
        db.close()


def test_a_failed_page_leaves_the_level_as_asked(tmp_path: Path) -> None:
    db = LocalDB(tmp_path / "c.db")
    try:
        bad = {"seq": 1, "op": "add", "key": "k", "index": ["tag:a"]}  # no value
        with pytest.raises(KeyError):
            db.apply_pulled("notes", [bad], CURSOR, None)
        assert synchronous(db) == 2
        assert db.cursor("notes") is None
    finally:
        db.close()
