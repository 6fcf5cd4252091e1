"""The set check run after every campaign (Jepsen's "set" workload, for idsync).

A campaign keeps a :class:`Ledger` of what the app was told: each add whose
call returned (the write is saved) and each delete whose call returned. After
the faults stop and everyone has synced, :func:`check` compares the ledger
with the server's log and with every client's file:

- every acknowledged add is in the server's log exactly once (``lost`` /
  ``duplicated`` count the others), with the value the app wrote;
- every acknowledged delete is in the log and its key is gone;
- the server's live records equal every client's records (key, index, value);
- ``PRAGMA integrity_check`` is ok on every SQLite file given.

Where a campaign replaces a store's history on purpose (a server restored
from an older copy, a store dropped and re-created, old history compacted),
``check(..., history=False)`` holds the live state to the ledger instead of
the log: every acknowledged add that was not deleted is live with the value
the app wrote, every acknowledged delete's key is gone, no key is logged
twice in the history the server holds now (when it can be read from its
start: a compacted one cannot); a record both added and deleted may have
left no trace in it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from idsync_client.jsoncodec import canonical, loads


class Ledger:
    """What the app was told was saved, per store; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.adds: dict[str, dict[str, Any]] = {}
        self.deletes: dict[str, set[str]] = {}

    def added(self, store: str, key: str, value: Any) -> None:
        """Note an add whose call returned."""
        with self._lock:
            self.adds.setdefault(store, {})[key] = value

    def deleted(self, store: str, key: str) -> None:
        """Note a delete whose call returned."""
        with self._lock:
            self.deletes.setdefault(store, set()).add(key)

    def count(self) -> int:
        """How many writes were acknowledged in all."""
        with self._lock:
            return sum(map(len, self.adds.values())) + sum(map(len, self.deletes.values()))

    def merge_file(self, store: str, path: Path) -> None:
        """Read an acknowledgement file written by a client process.

        One line per write, appended after the call returned: ``add <key>
        <canonical JSON value>`` or ``delete <key>``. A last line cut by a kill
        (no newline) was never acknowledged and is skipped.
        """
        text = path.read_text() if path.exists() else ""
        lines = text.split("\n")[:-1]  # the part after the last newline was never finished
        for line in lines:
            op, _, rest = line.partition(" ")
            if op == "add":
                key, _, value = rest.partition(" ")
                self.added(store, key, loads(value))
            elif op == "delete":
                self.deleted(store, rest)


@dataclass
class SetCheck:
    """What :func:`check` found; ``ok`` when nothing is wrong."""

    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong_value: int = 0
    undeleted: int = 0
    clients_differing: int = 0
    integrity_failures: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)
        else:
            self.problems[-1] = "... and more"


def server_log(url: str, store: str, session: requests.Session | None = None) -> list[dict]:
    """Every change of ``store`` in the server's log, from the start."""
    http = session or _session()
    changes: list[dict] = []
    cursor = ""
    while True:
        response = http.get(
            f"{url}/v1/stores/{store}/changes", params={"cursor": cursor, "limit": 5000}, timeout=60
        )
        response.raise_for_status()
        page = response.json()
        changes += page["changes"]
        cursor = page["cursor"]
        if not page["more"]:
            return changes


def server_records(
    url: str, store: str, session: requests.Session | None = None
) -> dict[str, tuple]:
    """The live records of ``store`` on the server: key → (index, canonical value)."""
    http = session or _session()
    records: dict[str, tuple] = {}
    params: dict[str, Any] = {"limit": 5000}
    while True:
        response = http.get(f"{url}/v1/stores/{store}/snapshot", params=params, timeout=60)
        response.raise_for_status()
        page = response.json()
        for r in page["records"]:
            records[r["key"]] = (tuple(r["index"]), canonical(r["value"]))
        if not page["more"]:
            return records
        params = {"limit": 5000, "at": page["at"], "after": page["after"]}


def client_records(path: Path, store: str) -> dict[str, tuple]:
    """The records of ``store`` in a client's file, read through the client API, offline."""
    from idsync_client import Client

    with Client(path) as client:
        return {r.key: (tuple(r.index), canonical(r.value)) for r in client.store(store)}


def integrity_ok(path: Path) -> bool:
    """``PRAGMA integrity_check`` on a SQLite file."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def check(
    ledger: Ledger,
    url: str,
    stores: Iterable[str],
    clients: Iterable[Path] = (),
    sqlite_files: Iterable[Path] = (),
    *,
    history: bool = True,
) -> SetCheck:
    """Compare ``ledger`` with the server at ``url`` and the client files; see the module.

    ``history=False``: the store's log was replaced on purpose; hold the live
    records to the ledger instead (see the module).
    """
    result = SetCheck(acknowledged=ledger.count())
    http = _session()
    clients = list(clients)
    for store in stores:
        try:
            log = server_log(url, store, http)
        except requests.HTTPError as exc:
            # A compacted log cannot be read from its start (reset_required);
            # without history the live records are what is checked.
            if history or exc.response is None or exc.response.status_code != 410:
                raise
            log = []
        adds = Counter(c["key"] for c in log if c["op"] == "add")
        values = {c["key"]: canonical(c["value"]) for c in log if c["op"] == "add"}
        deleted_in_log = {c["key"] for c in log if c["op"] == "delete"}
        live = server_records(url, store, http)
        acknowledged_deletes = ledger.deletes.get(store, set())
        for key, value in ledger.adds.get(store, {}).items():
            if not history:
                if key in acknowledged_deletes:
                    continue  # checked below: gone from the live records
                if key not in live:
                    result.lost += 1
                    result.problem(f"{store}: acknowledged add {key} is not live")
                elif live[key][1] != canonical(value):
                    result.wrong_value += 1
                    result.problem(
                        f"{store}: {key} holds {live[key][1]}, the app wrote {canonical(value)}"
                    )
                continue
            if adds[key] == 0:
                result.lost += 1
                result.problem(f"{store}: acknowledged add {key} is not in the log")
            elif values[key] != canonical(value):
                result.wrong_value += 1
                result.problem(
                    f"{store}: {key} holds {values[key]}, the app wrote {canonical(value)}"
                )
        for key, n in adds.items():
            if n > 1:
                result.duplicated += n - 1
                result.problem(f"{store}: {key} added {n} times")
        for key in acknowledged_deletes:
            if key in live or (history and key not in deleted_in_log):
                result.undeleted += 1
                result.problem(f"{store}: acknowledged delete of {key} did not happen")
        for path in clients:
            mine = client_records(path, store)
            if mine != live:
                result.clients_differing += 1
                missing = set(live) - set(mine)
                extra = set(mine) - set(live)
                result.problem(
                    f"{store}: client {path.name} differs from the server "
                    f"({len(missing)} missing, {len(extra)} extra, "
                    f"{sum(1 for k in set(mine) & set(live) if mine[k] != live[k])} changed)"
                )
    for path in [*clients, *sqlite_files]:
        if not integrity_ok(path):
            result.integrity_failures += 1
            result.problem(f"integrity_check failed on {path}")
    return result


def _session() -> requests.Session:
    http = requests.Session()
    http.trust_env = False
    return http
