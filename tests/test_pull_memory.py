"""A first sync's memory stays bounded by its pages, not by the store's size."""

from __future__ import annotations

import tracemalloc
import uuid

from idsync_client import Client

from .conftest import Api, add, fast_policy

PAGES = 20
PER_PAGE = 300
VALUE_BYTES = 1000


def _seed(api: Api, store: str) -> None:
    text = "x" * VALUE_BYTES
    changes = [
        add(n, value={"n": n, "text": text}, index=[f"tag:{n % 7}"])
        for n in range(1, PAGES * PER_PAGE + 1)
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
