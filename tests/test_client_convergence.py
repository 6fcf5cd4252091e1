"""Property: whatever the interleaving of clients, outages, lost answers and
copies of a client's file, everyone converges to the server's state and
nothing acknowledged is lost."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import uuid
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from idsync_client import Client, RetryPolicy, TemporaryError
from idsync_client.testing import Network

from .conftest import Api

CLIENTS = 3
MAX_CLIENTS = 5  # with the copies
_dirs = itertools.count()

# ``who`` is taken modulo the number of clients at that point (copies add some).
who = st.integers(0, MAX_CLIENTS - 1)
operation = st.one_of(
    st.tuples(st.just("add"), who, st.sampled_from(["tag:a", "tag:b"])),
    st.tuples(st.just("delete"), who, st.integers(0, 50)),
    st.tuples(st.just("set"), who, st.sampled_from(["e1", "e2"])),
    st.tuples(st.just("sync"), who, st.none()),
    st.tuples(st.just("offline"), who, st.none()),
    st.tuples(st.just("online"), who, st.none()),
    st.tuples(st.just("lose"), who, st.none()),
    st.tuples(st.just("copy"), who, st.none()),
)


def copy_of(client: Client, folder: Path, url: str, policy: RetryPolicy) -> Client:
    """A second client on a copy of ``client``'s file (database, WAL, sidecar),
    taken while it is open: a copied profile folder."""
    target = folder / f"copy{next(_dirs)}.db"
    for suffix in ("", "-wal", ".instance"):
        if Path(f"{client.path}{suffix}").exists():
            shutil.copy(f"{client.path}{suffix}", f"{target}{suffix}")
    return Client(target, url, retry=policy)


def view(client: Client, store: str) -> dict:
    return {r.key: (r.index, r.value) for r in client.store(store)}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation, min_size=5, max_size=40))
@example(  # a copy and its original both write new changes under the same numbers
    ops=[
        ("add", 0, "tag:a"),
        ("sync", 0, None),
        ("copy", 0, None),
        ("add", 0, "tag:a"),
        ("add", 3, "tag:b"),
        ("delete", 3, 0),
        ("sync", 0, None),
        ("sync", 3, None),
    ]
)
def test_random_interleavings_converge(server, tmp_path_factory, ops) -> None:
    store = f"prop-{uuid.uuid4().hex[:10]}"
    folder = tmp_path_factory.mktemp(f"conv{next(_dirs)}")
    policy = lambda: RetryPolicy(max_attempts=3, sleep=lambda s: None)  # noqa: E731
    clients = [Client(folder / f"c{i}.db", server.url, retry=policy()) for i in range(CLIENTS)]
    nets = [Network(c) for c in clients]
    acknowledged: set[str] = set()
    deleted: set[str] = set()
    values_set = 0
    try:
        for kind, who_, arg in ops:
            who = who_ % len(clients)
            client, notes = clients[who], clients[who].store(store)
            if kind == "copy":
                if len(clients) < MAX_CLIENTS:
                    clients.append(copy_of(client, folder, server.url, policy()))
                    nets.append(Network(clients[-1]))
            elif kind == "add":
                acknowledged.add(notes.add({"by": who}, index=[arg]))
            elif kind == "delete":
                plain = [r.key for r in notes if not r.index or r.index[0].startswith("tag:")]
                if plain:
                    key = plain[arg % len(plain)]
                    notes.delete(key)
                    deleted.add(key)
            elif kind == "set":
                values_set += 1
                notes.set_attr(arg, "title", f"v{values_set}")
            elif kind == "sync":
                with contextlib.suppress(TemporaryError):
                    client.sync()
            elif kind == "offline":
                nets[who].offline()
            elif kind == "online":
                nets[who].online()
            else:
                nets[who].lose_next_response()
        for net in nets:
            net.heal()
        for _ in range(3):
            for client in clients:
                client.store(store)
                client.sync()

        api = Api(server.url)
        changes, _ = api.pull_all(store)
        added = [c["key"] for c in changes if c["op"] == "add"]
        removed = [c["key"] for c in changes if c["op"] == "delete"]
        assert len(added) == len(set(added)), "a key was applied twice"
        assert len(removed) == len(set(removed)), "a key was deleted twice"
        live = set(added) - set(removed)
        server_view = {
            c["key"]: (tuple(c["index"]), c["value"])
            for c in changes
            if c["op"] == "add" and c["key"] in live
        }
        for client in clients:
            assert view(client, store) == server_view
            assert client.status.pending == 0
        assert acknowledged - deleted <= live, "an acknowledged write is missing"
        for entity in ("e1", "e2"):
            answers = {c.store(store).get_attr(entity, "title") for c in clients}
            assert len(answers) == 1
            holders = [
                k for k, (index, _) in server_view.items() if f"@attr:{entity}/title" in index
            ]
            assert len(holders) <= 1, "an attribute kept two values"
    finally:
        for client in clients:
            client.close()
