"""Operational faults: what operators and users do to a running system.

Each campaign runs real clients writing in threads against a real server
process, does one operation at a random moment, lets everyone converge and
runs the set check; the full run repeats each several times with random
timing (seeded).

- **Restore**: the server's database is copied (SQLite backup API) while
  clients write, the clients keep writing, the server stops, the old copy is
  put back and the server starts again: the clients send again what the
  restored server lacks.
- **Copies**: a client file is copied (database, WAL, sidecar) to a second
  place and both copies write and sync: the copy takes a new client id and
  neither loses a write.
- **Dropped store**: a store is dropped while clients write to it, then
  re-created: each client says the store was dropped (status) and keeps its
  writes pending; after the re-create every acknowledged write is there.
- **Compaction**: a client is offline while others delete and the server
  compacts its history past the client's cursor (``idsync-server compact``):
  on return the client resets and loses nothing it wrote.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from idsync_client import Client, RetryPolicy
from idsync_client.testing import wait_until_synced
from idsync_server_ref.process import ServerProcess

from ..conftest import Api, backup_sqlite, restore_sqlite
from .faultproxy import FaultProxy
from .figures import CampaignFigures, record
from .setcheck import Ledger, SetCheck, check

STORE = "notes"


def _client(path: Path, url: str, seed: int) -> Client:
    policy = RetryPolicy(max_attempts=3, base_delay=0.02, max_delay=0.3, rng=random.Random(seed))
    return Client(path, url, retry=policy, timeouts=(0.5, 2.0), long_poll=1.0)


class Scribe:
    """A thread that adds records and deletes its own, in some stores, until stopped.

    ``hold`` pauses it between two writes (held by whoever needs it still);
    every write that returned goes to the ledger.
    """

    def __init__(
        self,
        client: Client,
        stores: list[str],
        ledger: Ledger,
        seed: int,
        limit: int = 100_000,
        others: bool = False,
    ) -> None:
        self.client = client
        self.others = others
        self.stores = stores
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.limit = limit
        self.mine: dict[str, list[str]] = {s: [] for s in stores}
        self.hold = threading.Lock()
        self.ops: Counter[str] = Counter()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Scribe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "a writer did not stop"
        assert not self.errors, self.errors

    def write_one(self, store: str) -> None:
        """One add or delete in ``store``; noted in the ledger when it returned."""
        rng = self.rng
        notes = self.client.store(store)
        mine = self.mine[store]
        if rng.random() < 0.7 or not mine:
            value = {"n": self.ops.total(), "r": rng.randrange(1000)}
            key = notes.add(value, index=[f"tag:{rng.randrange(4)}"])
            self.ledger.added(store, key, value)
            mine.append(key)
            self.ops["add"] += 1
            return
        if self.others and rng.random() < 0.3:
            # Someone else's record, as this client sees it (synced).
            theirs = [r.key for r in notes if not r.pending and r.key not in mine]
            if theirs:
                key = rng.choice(theirs)
                try:
                    notes.delete(key)
                except KeyError:  # deleted meanwhile (a pull)
                    return
                self.ledger.deleted(store, key)
                self.ops["delete_theirs"] += 1
                return
        key = mine.pop(rng.randrange(len(mine)))
        try:
            notes.delete(key)
        except KeyError:  # another copy deleted it, and this one heard of it
            self.ops["delete_gone"] += 1
            return
        self.ledger.deleted(store, key)
        self.ops["delete"] += 1

    def _run(self) -> None:
        try:
            for _ in range(self.limit):
                if self._stop.is_set():
                    return
                with self.hold:
                    self.write_one(self.rng.choice(self.stores))
                self._stop.wait(self.rng.uniform(0, 0.004))  # a pace between writes
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)


@contextmanager
def _writers(
    clients: list[Client], stores: list[str], ledger: Ledger, seed: int, others: bool = False
) -> Iterator[list[Scribe]]:
    scribes = [
        Scribe(c, stores, ledger, seed * 100 + i, others=others).start()
        for i, c in enumerate(clients)
    ]
    try:
        yield scribes
    finally:
        for s in scribes:
            s._stop.set()
        for s in scribes:
            s.stop()


@contextmanager
def _quiet(scribes: list[Scribe]) -> Iterator[None]:
    """The writers pause inside the block (so that the clients can converge)."""
    held = []
    try:
        for s in scribes:
            s.hold.acquire()
            held.append(s)
        yield
    finally:
        for s in held:
            s.hold.release()


def _pause(rng: random.Random, low: float, high: float) -> None:
    """The campaign's random timing between two steps (not a wait for a result)."""
    threading.Event().wait(rng.uniform(low, high))


def _until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not after {seconds:g} s: {what}")
        threading.Event().wait(0.02)




def _rejections(clients: list[Client], ledger: Ledger, totals: Counter[str]) -> None:
    """Only the rejections a lost history explains, counted; any other fails.

    A delete still pending when the server lost the record it names (a
    restore, a re-create) is answered ``key_not_found`` and listed by
    ``client.rejected()`` (docs/client.md, "Retries and errors"); the delete
    holds. Anything else rejected is a failure.
    """
    for client in clients:
        for r in client.rejected():
            deleted = ledger.deletes.get(r.store, set())
            assert r.op == "delete" and r.code == "key_not_found" and r.key in deleted, r
            assert client.store(r.store).get(r.key) is None, r
            totals["pending_deletes_of_lost_records_listed_as_rejected"] += 1


def _file_head(db: Path, store: str) -> int:
    """The store's head sequence in a (stopped) server's database file."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(
            conn.execute("SELECT head_seq FROM stores WHERE name = ?", (store,)).fetchone()[0]
        )


def _logged_twice(db: Path, store: str) -> list[str]:
    """Keys whose add the server's database file logs more than once (read-only)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT c.key FROM changes c JOIN stores s ON s.id = c.store_id"
            " WHERE s.name = ? AND c.op = 'add' GROUP BY c.key HAVING count(*) > 1",
            (store,),
        ).fetchall()
    return [r[0] for r in rows]


def _record(
    name: str, results: list[SetCheck], started: float, repeats: int, extra: dict[str, object]
) -> None:
    record(
        CampaignFigures(
            name,
            injected=repeats,
            acknowledged=sum(r.acknowledged for r in results),
            lost=sum(r.lost for r in results),
            duplicated=sum(r.duplicated for r in results),
            seconds=time.monotonic() - started,
            extra=extra,
        )
    )
    problems = [p for r in results for p in r.problems]
    assert not problems, problems


def _repeats(full: bool, short: int, long: int) -> int:
    return long if full else short


# -- (a) a server restored from an older copy ---------------------------------------------


def _onerestore_sqlite(folder: Path, seed: int, full: bool, totals: Counter[str]) -> SetCheck:
    rng = random.Random(seed)
    db, copy = folder / "server.sqlite3", folder / "copy.sqlite3"
    ledger = Ledger()
    server = ServerProcess(db).start()
    try:
        api = Api(server.url)
        api.create_store(STORE)
        clients = [_client(folder / f"c{i}.db", server.url, seed + i) for i in range(3)]
        scale = 3.0 if full else 1.0
        try:
            for c in clients:
                c.store(STORE)
                c.start()
            # Clients delete each other's records too: a restore loses deletes.
            with _writers(clients, [STORE], ledger, seed, others=True) as scribes:
                _pause(rng, 0.2, 0.6 * scale)
                backup_sqlite(db, copy)  # while the server runs and clients write
                _pause(rng, 0.3, 0.8 * scale)
                if rng.random() < 0.5:
                    with _quiet(scribes):  # what the copy lacks reached everyone
                        _pause(rng, 0.0, 0.3 * scale)
                server.stop()
                totals["seqs_lost_by_restore"] += _file_head(db, STORE) - _file_head(copy, STORE)
                restore_sqlite(copy, db)
                _pause(rng, 0.0, 0.3 * scale)  # clients write on, offline
                server.start()
                _pause(rng, 0.2, 0.6 * scale)
            wait_until_synced(clients, timeout=60)
            totals["resets"] += sum(c.status.resets for c in clients)
            _rejections(clients, ledger, totals)
            totals["deletes_of_others_records"] += sum(s.ops["delete_theirs"] for s in scribes)
        finally:
            for c in clients:
                c.close()
        # The history after the copy is gone on purpose: hold the live records.
        return check(
            ledger,
            server.url,
            [STORE],
            clients=[folder / f"c{i}.db" for i in range(3)],
            sqlite_files=[db],
            history=False,
        )
    finally:
        server.stop()


def test_a_server_restored_from_an_older_copy_gets_every_write_back(
    tmp_path: Path, full: bool
) -> None:
    started, totals = time.monotonic(), Counter[str]()
    repeats = _repeats(full, 1, 8)
    results = [_onerestore_sqlite(tmp_path / f"r{i}", 9100 + i, full, totals) for i in range(repeats)]
    assert totals["resets"] >= repeats and totals["seqs_lost_by_restore"] > 0, totals
    _record("server restored from an older copy", results, started, repeats, dict(totals))


# -- (b) a client file copied to a second place, both copies used -------------------------


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", ".instance"):
        if Path(f"{src}{suffix}").exists():
            shutil.copy(f"{src}{suffix}", f"{dst}{suffix}")


def _one_copy(folder: Path, server: ServerProcess, seed: int, full: bool, totals: Counter[str]):
    rng = random.Random(seed)
    store = f"copies-{seed}"
    Api(server.url).create_store(store)
    ledger = Ledger()
    scale = 3.0 if full else 1.0
    first = _client(folder / "a" / "profile.db", server.url, seed)
    second: Client | None = None
    try:
        first.store(store)
        first.start()
        original = Scribe(first, [store], ledger, seed).start()
        _pause(rng, 0.1, 0.5 * scale)
        with original.hold:  # the app is idle while its profile folder is copied
            first.stop()  # no sync writes into the file during the copy
            for _ in range(rng.randrange(1, 6)):  # the copy carries changes not yet sent
                original.write_one(store)
            totals["pending_at_copy"] += first.db.pending_count(store)
            inherited = set(ledger.adds.get(store, {}))  # written before the copy
            _copy_file(folder / "a" / "profile.db", folder / "b" / "profile.db")
            first.start()
        second = _client(folder / "b" / "profile.db", server.url, seed + 1)
        assert second.client_id != first.client_id, "the copy took a fresh client id"
        second.store(store)
        second.start()
        copy = Scribe(second, [store], ledger, seed + 1)
        with original.hold:
            copy.mine[store] = list(original.mine[store])  # both may delete the shared ones
        copy.start()
        _pause(rng, 0.3, 1.0 * scale)
        original.stop()
        copy.stop()
        wait_until_synced([first, second], timeout=60)
        for r in first.rejected() + second.rejected():
            # Both copies send an add made before the copy; when a delete
            # came between, the second is refused key_deleted (listed, the
            # record stays deleted, as the app asked). Nothing else may be.
            assert r.op == "add" and r.code == "key_deleted", r
            assert r.key in inherited and r.key in ledger.deletes.get(store, set()), r
            totals["copied_adds_refused_key_deleted"] += 1
        totals["deletes_of_a_record_the_other_copy_deleted"] += (
            original.ops["delete_gone"] + copy.ops["delete_gone"]
        )
    finally:
        first.close()
        if second is not None:
            second.close()
    return check(
        ledger,
        server.url,
        [store],
        clients=[folder / "a" / "profile.db", folder / "b" / "profile.db"],
    )


def test_a_copied_client_file_and_its_original_both_lose_nothing(
    tmp_path: Path, full: bool
) -> None:
    started, totals = time.monotonic(), Counter[str]()
    repeats = _repeats(full, 2, 10)
    with ServerProcess(tmp_path / "server.sqlite3") as server:
        results = [
            _one_copy(tmp_path / f"c{i}", server, 9200 + i, full, totals) for i in range(repeats)
        ]
    _record("client file copied, both used", results, started, repeats, dict(totals))


# -- (c) a store dropped and re-created while clients hold it ------------------------------


def _one_drop(folder: Path, server: ServerProcess, seed: int, full: bool, totals: Counter[str]):
    rng = random.Random(seed)
    dropped, kept = f"dropped-{seed}", f"kept-{seed}"
    api = Api(server.url)
    api.create_store(dropped)
    api.create_store(kept)
    ledger = Ledger()
    scale = 3.0 if full else 1.0
    clients = [_client(folder / f"c{i}.db", server.url, seed + i) for i in range(3)]
    try:
        for c in clients:
            c.store(dropped)
            c.store(kept)
            c.start()
        with _writers(clients, [dropped, kept], ledger, seed) as scribes:
            _pause(rng, 0.1, 0.5 * scale)
            assert api.call("DELETE", f"/v1/stores/{dropped}").status_code in (200, 204)
            # Every client finds the drop out and says so.
            _until(
                lambda: all(c.status.dropped == (dropped,) for c in clients),
                30,
                "every client names the dropped store",
            )
            _pause(rng, 0.1, 0.5 * scale)
            for scribe in scribes:
                with scribe.hold:  # one more write to the dropped store, then look
                    scribe.write_one(dropped)
                    client = scribe.client
                    assert client.status.dropped == (dropped,)
                    waiting = client.db.pending_count(dropped)
                    assert waiting >= 1 and client.status.pending >= waiting
                    totals["pending_in_dropped_store"] += waiting
            if rng.random() < 0.5:
                api.create_store(dropped, recreate=True)  # an operator re-creates it first
                totals["recreated_by_operator"] += 1
            for client in rng.sample(clients, len(clients)):
                _pause(rng, 0.0, 0.3 * scale)
                with next(s for s in scribes if s.client is client).hold:
                    client.recreate_store(dropped)
                assert dropped not in client.status.dropped
            _pause(rng, 0.1, 0.4 * scale)
        wait_until_synced(clients, timeout=60)
        totals["resets"] += sum(c.status.resets for c in clients)
        _rejections(clients, ledger, totals)
        assert all(c.status.dropped == () for c in clients)
    finally:
        for c in clients:
            c.close()
    paths = [folder / f"c{i}.db" for i in range(3)]
    # The dropped store's history was replaced on purpose: hold its live records;
    # the other store keeps its whole log.
    gone = check(ledger, server.url, [dropped], clients=paths, history=False)
    on = check(ledger, server.url, [kept], clients=paths)
    merged = SetCheck(
        acknowledged=gone.acknowledged,
        lost=gone.lost + on.lost,
        duplicated=gone.duplicated + on.duplicated,
        problems=gone.problems + on.problems,
    )
    return merged


def test_a_store_dropped_and_recreated_under_writing_clients(tmp_path: Path, full: bool) -> None:
    started, totals = time.monotonic(), Counter[str]()
    repeats = _repeats(full, 1, 8)
    with ServerProcess(tmp_path / "server.sqlite3") as server:
        results = [
            _one_drop(tmp_path / f"d{i}", server, 9300 + i, full, totals) for i in range(repeats)
        ]
    _record("store dropped and re-created", results, started, repeats, dict(totals))


# -- (d) a client offline past the server's compaction --------------------------------------


def _compact(db: Path, store: str) -> str:
    """``idsync-server compact STORE --retention 0s``: every deleted record's entries go."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "idsync_server_ref",
            "compact",
            store,
            "--retention",
            "0s",
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _one_compaction(folder: Path, seed: int, full: bool, totals: Counter[str]) -> SetCheck:
    rng = random.Random(seed)
    db = folder / "server.sqlite3"
    ledger = Ledger()
    scale = 3.0 if full else 1.0
    with (
        ServerProcess(db) as server,
        FaultProxy(("127.0.0.1", server.port), seed=seed) as link,
    ):
        api = Api(server.url)
        api.create_store(STORE)
        traveller = _client(folder / "traveller.db", link.url, seed)
        others = [_client(folder / f"o{i}.db", server.url, seed + 1 + i) for i in range(2)]
        clients = [traveller, *others]
        try:
            for c in clients:
                c.store(STORE)
                c.start()
            with _writers(clients, [STORE], ledger, seed) as scribes:
                away, *staying = scribes
                _pause(rng, 0.2, 0.5 * scale)
                with _quiet(scribes):
                    wait_until_synced(clients, timeout=60)
                with away.hold:
                    link.down()  # the traveller goes offline and writes on
                    # Half of its synced records are the others' to delete now.
                    mine = away.mine[STORE]
                    rng.shuffle(mine)
                    handed = mine[: len(mine) // 2]
                    del mine[: len(mine) // 2]
                for i, key in enumerate(handed):
                    with staying[i % len(staying)].hold:
                        staying[i % len(staying)].mine[STORE].append(key)
                _pause(rng, 0.3, 1.0 * scale)
                with staying[0].hold:  # at least one delete after the traveller left
                    notes = staying[0].client.store(STORE)
                    key = notes.add({"short": "lived"})
                    ledger.added(STORE, key, {"short": "lived"})
                    notes.delete(key)
                    ledger.deleted(STORE, key)
                with _quiet(staying):
                    wait_until_synced(others, timeout=60)
                out = _compact(db, STORE)
                assert "horizon" in out, out
                resets_before = traveller.status.resets
                _pause(rng, 0.0, 0.3 * scale)
                link.up()
                traveller.kick()
                _until(lambda: traveller.status.resets > resets_before, 60, "the traveller resets")
                _pause(rng, 0.1, 0.4 * scale)
            wait_until_synced(clients, timeout=60)
            totals["resets"] += traveller.status.resets
            totals["records_handed_over"] += len(handed)
            assert all(c.rejected() == [] for c in clients)
        finally:
            for c in clients:
                c.close()
        paths = [folder / "traveller.db", *(folder / f"o{i}.db" for i in range(2))]
        # Compaction removed history on purpose: hold the live records, and
        # read what is left of the log from the file (the API serves it from
        # the horizon on only).
        result = check(ledger, server.url, [STORE], clients=paths, sqlite_files=[db], history=False)
        for key in _logged_twice(db, STORE):
            result.duplicated += 1
            result.problem(f"{STORE}: {key} added twice")
        return result


def test_a_client_offline_past_compaction_resets_and_loses_nothing(
    tmp_path: Path, full: bool
) -> None:
    started, totals = time.monotonic(), Counter[str]()
    repeats = _repeats(full, 1, 8)
    results = [_one_compaction(tmp_path / f"k{i}", 9400 + i, full, totals) for i in range(repeats)]
    assert totals["resets"] >= repeats, totals
    _record("client offline past compaction", results, started, repeats, dict(totals))


# -- the live-state set check itself -----------------------------------------------------------


def test_the_live_state_check_forgives_history_but_not_a_lost_record(
    server, api: Api, store: str, tmp_path: Path
) -> None:
    ledger = Ledger()
    with Client(tmp_path / "a.db", server.url) as client:
        notes = client.store(store)
        kept = notes.add({"n": 1})
        client.sync()
    ledger.added(store, kept, {"n": 1})
    ledger.added(store, "added-and-deleted-no-trace", {"n": 2})
    ledger.deleted(store, "added-and-deleted-no-trace")
    assert check(ledger, server.url, [store], history=False).ok
    assert not check(ledger, server.url, [store]).ok  # the log lacks that pair
    ledger.added(store, "never-sent", {"n": 3})
    found = check(ledger, server.url, [store], history=False)
    assert found.lost == 1 and not found.ok
