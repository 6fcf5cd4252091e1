"""Two reloads of one store at once (the pull thread told to reset while the
push thread finds the server's history changed) must not mix their staged
snapshot pages: the client would install part of a snapshot, set its cursor
to the head, and never get the rest."""

from __future__ import annotations

import threading
from pathlib import Path

from idsync_client import Client, RetryPolicy

from .conftest import Api, add


def test_two_reloads_at_once_leave_every_record(
    tmp_path: Path, server, api: Api, store: str
) -> None:
    for start in range(0, 2400, 400):  # more than one snapshot page
        api.push(store, "writer", [add(n, value={"n": n}) for n in range(start + 1, start + 401)])
    policy = RetryPolicy(max_attempts=3, sleep=lambda s: None)
    with Client(tmp_path / "a.db", server.url, retry=policy) as client:
        client.store(store)
        client.sync()
        assert len(client.store(store)) == 2400
        engine = client._engine
        assert engine is not None
        stage_page = client.db.stage_page
        first = threading.current_thread()
        other = threading.Thread(target=lambda: engine.reset(store))
        pages = []

        def staged(name: str, records: list) -> None:
            stage_page(name, records)
            pages.append(len(records))
            if threading.current_thread() is first and len(pages) == 1:
                # A second reload starts while this one has staged one page.
                # Serialised, it waits for this one (the join gives up after
                # a while); otherwise it clears this one's page and ends first.
                other.start()
                other.join(timeout=3)

        client.db.stage_page = staged  # type: ignore[method-assign]
        engine.reset(store)
        other.join(timeout=30)
        assert not other.is_alive()
        assert len(pages) > 2, "the snapshot came in several pages"
        assert len(client.store(store)) == 2400
