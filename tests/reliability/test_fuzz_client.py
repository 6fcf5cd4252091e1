"""A stateful model of the client API: two devices on one real server.

A hypothesis state machine drives two real :class:`~idsync_client.Client`
objects (their own files, one real server process) through adds, deletes,
attributes, the network going down and up (``idsync_client.testing.Network``),
syncs, the file closed and opened again (what a crash leaves: only
committed transactions), and server-side resets: compaction past every
cursor, or the store dropped and created again. A model keeps what each
device was told: its acknowledged writes, which of them are pending, and
what it last pulled.

Invariants, after every step:

- each device reads exactly the model's view: what it last pulled with its
  own pending writes on top (local writes are visible at once);
- a device that synced online has nothing pending, and its records are the
  server's;
- after a convergence round (both online, A, B, A sync) both devices and the
  server hold the same records, every acknowledged add not deleted since is
  there, and an attribute reads the same on both devices.

After a store is re-created the devices resend their own acknowledged
changes (docs/client.md, Reset); deletes acknowledged before it may be
undone by the author's resend (the store started afresh), so only adds are
held to "never lost" across it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from idsync_client import Client, RetryPolicy, TemporaryError
from idsync_client.testing import Network
from idsync_server_ref.process import ServerProcess
from idsync_server_ref.storage.open import open_storage

from .figures import CampaignFigures, record
from .model import canonical

DEVICES = (0, 1)
Rows = dict[str, tuple[tuple[str, ...], str]]


def user_records(client: Client, store: str) -> Rows:
    """A device's records, attribute records aside: key -> (index, canonical value)."""
    return {
        r.key: (tuple(r.index), canonical(r.value))
        for r in client.store(store)
        if not any(i.startswith("@attr:") for i in r.index)
    }


class Device:
    """One device: its client, network, and what the model says it holds."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.url = url
        self.offline = False
        self.base: Rows = {}  # the server's records when it last pulled
        self.pending: list[tuple[str, str, Any]] = []  # acknowledged, not yet on the server
        self.open()

    def open(self) -> None:
        self.client = Client(self.path, self.url, retry=RetryPolicy(max_attempts=2, sleep=lambda s: None))
        self.net = Network(self.client)
        if self.offline:
            self.net.offline()

    def view(self) -> Rows:
        rows = dict(self.base)
        for op, key, row in self.pending:
            if op == "add":
                rows[key] = row
            else:
                rows.pop(key, None)
        return rows


class ClientMachine(RuleBasedStateMachine):
    """Two devices, one store of a fresh name per example."""

    url: str
    database: Path
    figures: dict[str, int]

    def __init__(self) -> None:
        super().__init__()
        self.store = f"c{uuid.uuid4().hex[:12]}"
        folder = self.database.parent / self.store
        folder.mkdir()
        self.devices = [Device(folder / f"d{i}.db", self.url) for i in DEVICES]
        self.server: Rows = {}  # the server's live records, as the model has them
        self.acked_adds: dict[str, tuple[tuple[str, ...], str]] = {}
        self.acked_deletes: set[str] = set()
        self.undoable: set[str] = set()  # deleted before a re-create: may come back
        self.recreating = False
        self.written_attrs: dict[str, set[str]] = {"e1": set(), "e2": set()}
        self.http = requests.Session()
        self.http.trust_env = False

    def teardown(self) -> None:
        try:
            self.converge()  # every example ends with everyone in step
        finally:
            for device in self.devices:
                device.client.close()
            self.http.close()

    @initialize()
    def first_sync(self) -> None:
        for device in self.devices:
            device.client.store(self.store)
            device.client.sync()

    # -- writes -------------------------------------------------------------------

    @rule(who=st.sampled_from(DEVICES), tag=st.sampled_from(["t:a", "t:b"]), value=st.sampled_from([0, False, 1.0, "x", {"a": [1]}]))
    def add(self, who: int, tag: str, value: Any) -> None:
        device = self.devices[who]
        key = device.client.store(self.store).add(value, index=[tag])
        row = ((tag,), canonical(value))
        device.pending.append(("add", key, row))
        self.acked_adds[key] = row
        self.figures["writes"] += 1

    @rule(who=st.sampled_from(DEVICES), pick=st.integers(0, 30))
    def delete(self, who: int, pick: int) -> None:
        device = self.devices[who]
        keys = sorted(device.view())
        if not keys:
            return
        key = keys[pick % len(keys)]
        device.client.store(self.store).delete(key)
        device.pending.append(("delete", key, None))
        self.acked_deletes.add(key)
        self.figures["writes"] += 1

    @rule(who=st.sampled_from(DEVICES), entity=st.sampled_from(["e1", "e2"]), erase=st.booleans())
    def attribute(self, who: int, entity: str, erase: bool) -> None:
        """set_attr / delete_attr: the device reads its own write at once."""
        notes = self.devices[who].client.store(self.store)
        if erase:
            notes.delete_attr(entity, "title")
            assert notes.get_attr(entity, "title") is None
        else:
            value = f"v{self.figures['writes']}"
            notes.set_attr(entity, "title", value)
            self.written_attrs[entity].add(value)
            assert notes.get_attr(entity, "title") == value
        self.figures["writes"] += 1

    # -- network, sync, crash -------------------------------------------------------

    @rule(who=st.sampled_from(DEVICES), offline=st.sampled_from([True, False]))
    def network(self, who: int, offline: bool) -> None:
        device = self.devices[who]
        device.offline = offline
        if offline:
            device.net.offline()
        else:
            device.net.online()
        self.figures["outages"] += offline

    @rule(who=st.sampled_from(DEVICES))
    def sync(self, who: int) -> None:
        device = self.devices[who]
        try:
            device.client.sync()
        except TemporaryError:
            assert device.offline, "sync failed while online"
            return
        assert not device.offline, "sync succeeded while offline"
        self._synced(device)
        self.figures["syncs"] += 1

    def _synced(self, device: Device) -> None:
        """The model's side of a successful sync: its pending writes land, it pulls all."""
        for op, key, row in device.pending:
            if op == "add":
                self.server[key] = row
            else:
                self.server.pop(key, None)
        device.pending = []
        device.base = dict(self.server)
        assert device.client.status.pending == 0, device.client.status

    @rule(who=st.sampled_from(DEVICES), now=st.sampled_from([False, False, True]))
    def reopen(self, who: int, now: bool) -> None:
        """Now and then, close the file and open it again: only what was committed is there."""
        if not now:
            return
        device = self.devices[who]
        device.client.close()
        device.open()
        device.client.store(self.store)
        self.figures["reopens"] += 1

    # -- server-side resets ------------------------------------------------------------

    @rule(kind=st.sampled_from(["none"] * 8 + ["compact", "recreate"]))
    def server_reset(self, kind: str) -> None:
        """Now and then (most steps do nothing here): compaction, or the store re-created."""
        if kind == "compact":
            self.compact()
        elif kind == "recreate":
            self.recreate()

    def compact(self) -> None:
        """Compaction with no retention: every deleted record's entries go, cursors fall behind."""
        storage = open_storage(self.database)
        try:
            storage.compact(self.store, now=time.time() + 3600, default_retention=0)
        finally:
            storage.close()
        self.figures["resets"] += 1

    def recreate(self) -> None:
        """The store dropped and created again, empty: the devices give it back their writes."""
        assert self.http.delete(f"{self.url}/v1/stores/{self.store}").status_code == 200
        body = {"name": self.store, "recreate": True}
        assert self.http.post(f"{self.url}/v1/stores", json=body).status_code == 201
        self.figures["resets"] += 1
        self.undoable |= self.acked_deletes
        self.recreating = True
        self.converge()
        self.recreating = False
        actual = self.server_records()
        live = {k for k, row in self.acked_adds.items() if k not in self.acked_deletes}
        assert live <= set(actual), f"lost in the re-create: {live - set(actual)}"
        assert set(actual) - live <= self.undoable, "a record never written came back"
        self.server = actual
        for device in self.devices:
            device.base, device.pending = dict(actual), []

    @rule(now=st.sampled_from([False] * 4 + [True]))
    def convergence_round(self, now: bool) -> None:
        """Now and then, a convergence round (see :meth:`converge`)."""
        if now:
            self.converge()

    def converge(self) -> None:
        """Both online, A, B, A sync: both equal the server, nothing acknowledged is lost."""
        for device in self.devices:
            if device.offline:
                self.network(self.devices.index(device), False)
        for device in (*self.devices, self.devices[0]):
            device.client.sync()
            if not self.recreating:
                self._synced(device)
        actual = self.server_records()
        for device in self.devices:
            assert user_records(device.client, self.store) == actual
            assert device.client.status.pending == 0
        live = {k for k in self.acked_adds if k not in self.acked_deletes}
        assert live <= set(actual), f"acknowledged adds lost: {live - set(actual)}"
        assert not set(actual) & (self.acked_deletes - self.undoable), "a delete was undone"
        for entity, written in self.written_attrs.items():
            values = {d.client.store(self.store).get_attr(entity, "title") for d in self.devices}
            assert len(values) == 1 and values <= written | {None}, (entity, values)
        self.figures["converged"] += 1

    def server_records(self) -> Rows:
        rows: Rows = {}
        params: dict[str, Any] = {"limit": 1000}
        while True:
            page = self.http.get(f"{self.url}/v1/stores/{self.store}/snapshot", params=params).json()
            for r in page["records"]:
                if not any(i.startswith("@attr:") for i in r["index"]):
                    rows[r["key"]] = (tuple(r["index"]), canonical(r["value"]))
            if not page["more"]:
                return rows
            params = {"limit": 1000, "at": page["at"], "after": page["after"]}

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def each_device_reads_its_model_view(self) -> None:
        for i, device in enumerate(self.devices):
            assert user_records(device.client, self.store) == device.view(), f"device {i}"
            assert device.client.status.pending >= 0


@pytest.fixture
def client_server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "server.sqlite3") as proc:
        yield proc


def test_two_devices_hold_every_acknowledged_write(
    client_server: ServerProcess, tmp_path: Path, full: bool
) -> None:
    figures = {"writes": 0, "syncs": 0, "outages": 0, "reopens": 0, "resets": 0, "converged": 0}
    assert isinstance(client_server.database, Path)
    machine = type(
        "Devices",
        (ClientMachine,),
        {"url": client_server.url, "database": client_server.database, "figures": figures},
    )
    started = time.monotonic()
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=150 if full else 10,
                stateful_step_count=60 if full else 40,
                deadline=None,
                derandomize=not full,
                database=None,
                phases=list(Phase) if full else [Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        record(
            CampaignFigures(
                "fuzz: client API, two devices",
                injected=figures["outages"] + figures["reopens"] + figures["resets"],
                acknowledged=figures["writes"],
                seconds=time.monotonic() - started,
                extra={k: v for k, v in figures.items() if k != "writes"},
            )
        )
