"""A first sync's memory and collector work stay bounded by its pages, not
by the store's size."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from typing import Any

from idsync_client import Client, gcpause
from idsync_client.localdb import _SqliteFile as _Database
from idsync_client.multisync import FIRST_SYNC_THREADS

from .conftest import Api, add, fast_policy

PAGES = 20
PER_PAGE = 300
VALUE_BYTES = 1000


def _seed(api: Api, store: str, count: int = PAGES * PER_PAGE, size: int = VALUE_BYTES) -> None:
    text = "x" * size
    changes = [
        add(n, value={"n": n, "text": text}, index=[f"tag:{n % 7}"]) for n in range(1, count + 1)
    ]
    for start in range(0, len(changes), 1000):
        api.push(store, "seeder-" + uuid.uuid4().hex, changes[start : start + 1000])


def test_first_sync_holds_no_more_than_a_few_pages(tmp_path, server, api, store) -> None:
    """Python memory during a first sync of 20 pages stays within a few pages'
    worth: pages applied earlier (their events, their records) are not held
    until the round ends."""
    _seed(api, store)
    page_bytes = PER_PAGE * (VALUE_BYTES + 100)  # about one page's JSON
    after_page: list[int] = []
    with Client(tmp_path / "c.db", server.url, retry=fast_policy(5)) as client:
        client.store(store)
        assert client._engine is not None
        client._engine.page_size = PER_PAGE
        client._engine.page_hooks.append(
            lambda _store, _event: after_page.append(tracemalloc.get_traced_memory()[0])
        )
        tracemalloc.start()
        try:
            report = client.sync()
        finally:
            tracemalloc.stop()
        assert report.pulled == PAGES * PER_PAGE
        assert len(client.store(store)) == PAGES * PER_PAGE
    assert len(after_page) == PAGES
    # After each page the client holds the page it applied and the one
    # fetched meanwhile, whatever came before: the memory after the last
    # page is that after the first ones (it grew by a page's records each
    # page when every page's event was held until the round ended).
    growth = after_page[-1] - min(after_page[:3])
    assert growth < 2 * page_bytes, (growth, page_bytes)


def _collections_while_pages_apply(
    tmp_path: Any, url: str, store: str, pages: int, per_page: int = PER_PAGE
) -> tuple[list[int], bool]:
    """The generations the collector ran on between the first and the last
    applied page of a first sync; and whether it is on after the sync."""
    seen: list[int] = []
    applied = [0]

    def on_collect(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and 0 < applied[0] < pages:
            seen.append(info["generation"])

    def on_page(_store: str, _event: Any) -> None:
        applied[0] += 1

    with Client(tmp_path / "gc.db", url, retry=fast_policy(5)) as client:
        client.store(store)
        assert client._engine is not None
        client._engine.page_size = per_page
        client._engine.page_hooks.append(on_page)
        # From a clean count: the young collections earlier tests left owing
        # would otherwise bring a full one due at any moment the collector is
        # on (between two pages, as it should be).
        gc.collect()
        gc.callbacks.append(on_collect)
        try:
            client.sync()
        finally:
            gc.callbacks.remove(on_collect)
    assert applied[0] == pages
    return seen, gc.isenabled()


def test_the_collector_rests_while_pages_stream_in(tmp_path, server, api, store) -> None:
    """The collector rests while a page is decoded and while it is applied
    (its objects are freed by reference counting): pages of 2,000 changes,
    some 8,000 containers each, cost at most a young collection or two each
    instead of about ten, and no full collection walks the process. It is on
    between pages (a network wait or a retry's sleep never holds it off)
    and after."""
    pages = 5
    _seed(api, store, pages * 2000, 20)
    assert gc.isenabled()
    seen, enabled = _collections_while_pages_apply(tmp_path, server.url, store, pages, 2000)
    assert 2 not in seen, seen
    assert len(seen) <= 2 * pages, seen
    assert enabled


def test_a_collector_the_app_turned_off_stays_off(tmp_path, server, api, store) -> None:
    _seed(api, store, 2 * PER_PAGE, 50)
    gc.disable()
    try:
        _, enabled = _collections_while_pages_apply(tmp_path, server.url, store, 2)
    finally:
        gc.enable()
    assert not enabled


def test_overlapping_pauses_resume_the_collector_after_the_last() -> None:
    """Two downloads at once (first syncs of two stores): the first to end
    does not turn the collector back on under the other."""
    assert gc.isenabled()
    first, second = gcpause.paused(), gcpause.paused()
    first.__enter__()
    second.__enter__()
    assert not gc.isenabled()
    first.__exit__(None, None, None)
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_first_sync_thread_leaves_no_connection_open(tmp_path, server, api, store) -> None:
    """The thread a first sync runs on ends with the round; its connection
    (and page cache, up to 8 MB) does not stay open until the client closes."""
    _seed(api, store, 10, 10)
    with Client(tmp_path / "c.db", server.url, retry=fast_policy(5)) as client:
        client.store(store)
        open_before = len(client.db.db._open)
        assert client.sync().pulled == 10
        assert len(client.db.db._open) == open_before


def test_first_syncs_of_many_stores_open_a_connection_per_thread_not_per_store(
    tmp_path, server, api, monkeypatch
) -> None:
    """First syncs of 12 stores run on a few threads; each thread opens one
    connection for all the stores it syncs, and closes it when it is done."""
    names = [f"many-{uuid.uuid4().hex[:8]}-{i}" for i in range(12)]
    for name in names:
        api.create_store(name)
        api.push(name, "seeder", [add(1)])
    opened: list[object] = []
    initialize = _Database._initialize_connection

    def counted(self: Any, conn: Any) -> None:
        opened.append(conn)
        initialize(self, conn)

    monkeypatch.setattr(_Database, "_initialize_connection", counted)
    with Client(tmp_path / "c.db", server.url, retry=fast_policy(5)) as client:
        for name in names:
            client.store(name)
        open_before, opened_before = len(client.db.db._open), len(opened)
        assert client.sync().pulled == 12
        assert len(opened) - opened_before <= FIRST_SYNC_THREADS
        assert len(client.db.db._open) == open_before
