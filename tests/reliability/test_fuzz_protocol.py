"""Protocol fuzzing against the reference model (tests/reliability/model.py).

A hypothesis state machine sends the same operations to a real server
process and to the model: pushes of valid and invalid changes mixed
(replays, conflicting change numbers, type-exact re-adds, batch limits),
pulls from random cursors (garbage, another epoch, past the head, a wrong
tag), snapshot pages across writes, finds, record gets, waits, and store
create/recreate/drop. Every answer must be the model's: the outcomes of
each change, the pages, the cursors, the error codes. A refused request
must leave the log as it was.

The server runs with small limits so that the limits are crossed often.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from idsync_server_ref.process import ServerProcess

from .figures import CampaignFigures, record
from .model import Limits, Model, Refused, canonical

#: Small limits, so batches, keys, index items, values and pages cross them often.
SMALL_LIMITS = (
    "--max-batch", "6",
    "--max-key-length", "24",
    "--max-index-items", "4",
    "--max-index-item-length", "12",
    "--max-value-bytes", "400",
    "--max-depth", "5",
    "--max-page", "40",
    "--default-page", "7",
)  # fmt: skip

KEYS = ["k1", "k2", "k3", "a/b", "é ü", "x%2Fy", "?&=#+", "k" * 24]
BAD_KEYS: list[Any] = ["", "\x07bell", "\x85", "k" * 25, 7, None, ["k1"]]
INDEXES = [
    [], ["t:a"], ["t:a", "t:b"], ["t:b", "t:a"], ["t:a", "t:a"], ["a,b"], ["a", "b"], ["t:ab"],
    # Prefix bounds at the top of Unicode and around the surrogates.
    ["\U0010ffff"], ["\U0010ffff\U0010ffff"], ["\ud7ffz"], ["\ue000"], ["t:\U0010ffff"],
]  # fmt: skip
BAD_INDEXES: list[Any] = ["t:a", [1], [""], ["x" * 13], ["a", "b", "c", "d", "e"], ["\x01"], None]
# Values equal in Python but not in JSON sit side by side: 0/false/0.0/-0.0, 1/1.0/true.
VALUES: list[Any] = [
    0, False, 0.0, -0.0, 1, 1.0, True, "1", None, [], {}, [1], [True],
    {"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": 1.0, "b": 2},
    2**63 - 1, -(2**63), "9" * 40, {"deep": [[[[1]]]]}, "x" * 300,
]  # fmt: skip
#: Numbers json.dumps cannot write: sent as this text in place of their marker string.
RAW_NUMBERS = {"<1e400>": "1e400", "<-1E+999>": "-1E+999", "<310 digits>": "9" * 310}
BAD_VALUES: list[Any] = [
    2**63, -(2**63) - 1, 10**40, [[[[[[1]]]]]], {"a": {"b": [2**64]}}, "x" * 500,
    "<1e400>", ["<-1E+999>"], {"n": "<310 digits>"},
]  # fmt: skip


def as_sent(obj: Any) -> Any:
    """``obj`` as the server reads it: each raw number marker becomes its number."""
    if isinstance(obj, str) and obj in RAW_NUMBERS:
        return json.loads(RAW_NUMBERS[obj]) if obj != "<310 digits>" else int(RAW_NUMBERS[obj])
    if isinstance(obj, list):
        return [as_sent(x) for x in obj]
    if isinstance(obj, dict):
        return {k: as_sent(v) for k, v in obj.items()}
    return obj
BAD_CLIENT_IDS: list[Any] = ["", "a b", "é", "x" * 65, 7, None]
ITEMS = ["t:a", "t:", "t", "a,b", "a", "t:b", "é", "x" * 12, "\U0010ffff", "\ud7ff", "t:\U0010ffff"]
BAD_ITEMS = ["", "x" * 13, "\x02"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


class Wire:
    """HTTP to the server under test: every answer is JSON, never a 5xx; counted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False
        self.requests = 0
        self.server_errors = 0
        #: What the answers covered: error codes, and each push outcome's status or code.
        self.seen: Counter[str] = Counter()

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        """One request (``body`` sent as JSON, even ``null``); (status, JSON answer)."""
        self.requests += 1
        if body is not None or method == "POST":
            text = json.dumps(body)
            for marker, number in RAW_NUMBERS.items():
                text = text.replace(json.dumps(marker), number)
            kwargs["data"] = text.encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        response = self.session.request(method, self.url + path, timeout=30, **kwargs)
        if response.status_code >= 500:
            self.server_errors += 1
        assert response.status_code < 500, f"{method} {path}: {response.status_code} {response.text}"
        assert response.headers.get("Content-Type", "").startswith("application/json"), response.text
        answer = response.json()
        if response.status_code >= 400:
            self.seen[answer["error"]["code"]] += 1
        for outcome in answer.get("outcomes", []) if isinstance(answer, dict) else []:
            self.seen[outcome.get("code") or outcome["status"]] += 1
        return response.status_code, answer

    def refused_as(self, refused: Refused, status: int, answer: Any, what: str) -> None:
        """The server refused like the model, with the same code (and details.n)."""
        assert status == refused.status, f"{what}: model says {refused.code}, server {status} {answer}"
        assert answer["error"]["code"] == refused.code, f"{what}: {answer}"
        if refused.n is not None:
            assert answer["error"]["details"].get("n") == refused.n, f"{what}: {answer}"


def same(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


class ProtocolMachine(RuleBasedStateMachine):
    """One example: two fresh store names, two client ids, the model beside the server."""

    wire: Wire
    limits: Limits

    def __init__(self) -> None:
        super().__init__()
        prefix = f"f{uuid.uuid4().hex[:10]}"
        # The third name is never created.
        self.names = [f"{prefix}-a", f"{prefix}.b", f"{prefix}_never"]
        self.model = Model(self.limits)
        self.next_n = {"c1": 0, "c-2": 0}
        self.sent: dict[str, list[dict[str, Any]]] = {"c1": [], "c-2": []}
        self.snapshots: dict[str, tuple[str, int]] = {}

    # -- stores -----------------------------------------------------------------

    @initialize()
    def create_both(self) -> None:
        self.create(0, False)
        self.create(1, False)

    @rule(which=st.integers(0, 1), what=st.sampled_from(["create", "recreate", "drop"] + ["none"] * 3))
    def store_op(self, which: int, what: str) -> None:
        """Create, recreate or drop a store, now and then (most steps leave them be)."""
        if what == "drop":
            self.drop(which)
        elif what != "none":
            self.create(which, what == "recreate")

    def create(self, which: int, recreate: bool) -> None:
        name = self.names[which]
        body: dict[str, Any] = {"name": name, "recreate": True} if recreate else {"name": name}
        status, answer = self.wire.call("POST", "/v1/stores", body)
        try:
            self.model.create(name, recreate)
        except Refused as refused:
            self.wire.refused_as(refused, status, answer, f"create {name}")
            return
        assert status == 201, answer
        assert answer["epoch"] not in self.model.old_epochs.get(name, []), "an epoch came back"
        self.model.created(name, answer["epoch"])
        assert answer["head_seq"] == 0 and answer["live_records"] == 0
        self.snapshots.pop(name, None)

    def drop(self, which: int) -> None:
        name = self.names[which]
        status, answer = self.wire.call("DELETE", f"/v1/stores/{name}")
        try:
            expected = self.model.drop(name)
        except Refused as refused:
            self.wire.refused_as(refused, status, answer, f"drop {name}")
            return
        assert (status, answer) == (200, expected)

    # -- push -------------------------------------------------------------------

    def _new_change(self, data: st.DataObject, client: str) -> dict[str, Any]:
        self.next_n[client] += 1
        n = self.next_n[client]
        key = data.draw(st.sampled_from(KEYS), label="key")
        if data.draw(st.sampled_from(["add", "add", "delete"])) == "delete":
            return {"n": n, "op": "delete", "key": key}
        change: dict[str, Any] = {"n": n, "op": "add", "key": key}
        if data.draw(st.booleans()):
            change["index"] = data.draw(st.sampled_from(INDEXES))
        change["value"] = data.draw(st.sampled_from(VALUES) | json_values, label="value")
        return change

    def _bad_change(self, data: st.DataObject, client: str) -> Any:
        change = self._new_change(data, client)
        how = data.draw(
            st.sampled_from(
                ["n", "op", "extra", "key", "missing", "index", "value", "not an object"]
            ),
            label="broken",
        )
        if how == "n":
            change["n"] = data.draw(st.sampled_from([0, -1, True, "1", 1.0, 2**63, None]))
        elif how == "op":
            change["op"] = data.draw(st.sampled_from(["update", "", None, "ADD"]))
        elif how == "extra":
            change[data.draw(st.sampled_from(["x", "seq", "value", "index"]))] = 1
        elif how == "key":
            change["key"] = data.draw(st.sampled_from(BAD_KEYS))
        elif how == "missing":
            change.pop(data.draw(st.sampled_from(["key", "value", "op", "n"])), None)
        elif how == "index" and change["op"] == "add":
            change["index"] = data.draw(st.sampled_from(BAD_INDEXES))
        elif how == "value" and change["op"] == "add":
            change["value"] = data.draw(st.sampled_from(BAD_VALUES))
        elif how == "not an object":
            return data.draw(st.sampled_from(["change", None, 1, [change]]))
        return change

    def _changes(self, data: st.DataObject, client: str) -> list[Any]:
        changes: list[Any] = []
        sizes = st.sampled_from([*range(1, self.limits.max_batch + 1), 0, self.limits.max_batch + 1])
        for _ in range(data.draw(sizes, label="size")):
            kind = data.draw(
                st.sampled_from(["new"] * 12 + ["replay"] * 3 + ["conflict", "bad"]), label="kind"
            )
            sent = self.sent[client]
            if kind == "replay" and sent:
                changes.append(dict(data.draw(st.sampled_from(sent))))
            elif kind == "conflict" and sent:
                other = dict(data.draw(st.sampled_from(sent)))
                other["key"] = data.draw(st.sampled_from(KEYS))
                if other["op"] == "add":
                    other["value"] = data.draw(st.sampled_from(VALUES))
                changes.append(other)
            elif kind == "bad":
                changes.append(self._bad_change(data, client))
            else:
                changes.append(self._new_change(data, client))
        return changes

    @rule(which=st.sampled_from([0, 1, 0, 1, 2]), client=st.sampled_from(["c1", "c-2"]), data=st.data())
    def push(self, which: int, client: str, data: st.DataObject) -> None:
        name = self.names[which]
        body: Any = {"client_id": client, "changes": self._changes(data, client)}
        broken = data.draw(st.sampled_from(["no"] * 10 + ["client_id", "field", "body"]))
        if broken == "client_id":
            body["client_id"] = data.draw(st.sampled_from(BAD_CLIENT_IDS))
        elif broken == "field":
            body[data.draw(st.sampled_from(["extra", "changes", "client_id"]))] = None
        elif broken == "body":
            body = data.draw(st.sampled_from([[], "push", None, {"changes": []}]))
        before = self._heads()
        status, answer = self.wire.call("POST", f"/v1/stores/{name}/push", body=body)
        try:
            expected = self.model.push(name, as_sent(body))
        except Refused as refused:
            self.wire.refused_as(refused, status, answer, f"push to {name}")
            assert self._heads() == before, "a refused push changed a log"
            return
        assert status == 200, answer
        got = [{k: v for k, v in o.items() if k != "message"} for o in answer["outcomes"]]
        assert got == expected, f"push {body}: server {got}, model {expected}"
        self.sent[client] += [c for c in body["changes"] if isinstance(c, dict)]

    def _heads(self) -> list[Any]:
        return [self.wire.call("GET", f"/v1/stores/{n}")[1].get("head_seq") for n in self.names]

    # -- reads ------------------------------------------------------------------

    def _cursor(self, data: st.DataObject, name: str) -> str | None:
        store = self.model.stores.get(name)
        epoch = store.epoch if store else "0123456789abcdef"
        old = [e for e in self.model.old_epochs.get(name, []) if e != epoch]
        known = sorted(store.tags.items()) if store else []
        head = store.head if store else 0
        choices: list[str | None] = [None, "", f"{epoch}.0", f"{epoch}.{head + 1}.a"]
        choices += [f"{epoch}.{seq}.{tag}" for seq, tag in known]
        choices += [f"{epoch}.{seq}" for seq, _ in known[:2]]  # no tag
        choices += [f"{epoch}.{seq}.{'0' if tag != '0' else '1'}" for seq, tag in known[:2]]
        choices += [f"{e}.0" for e in old] + [f"{e}.1.ab" for e in old]
        for other in self.model.stores.values():  # another store's cursors
            if other is not store:
                choices += [f"{other.epoch}.0"]
                choices += [f"{other.epoch}.{seq}.{tag}" for seq, tag in sorted(other.tags.items())[:2]]
        choices += ["x", "abc.1", f"{epoch}.-1", f"{epoch}.1.XYZ", f"{epoch}.1.a.b", f"{epoch}."]
        choices += [f"{epoch}.{'9' * 20}", "0" * 70, f"{epoch.upper()}.0", f"{epoch}.1.{'a' * 17}"]
        choices += [f"{epoch}.٣", f"{epoch}.1."]
        return data.draw(st.sampled_from(choices), label="cursor")

    def _limit(self, data: st.DataObject) -> str | None:
        return data.draw(
            st.sampled_from([None, "1", "2", "3", "1", "2", "40", "0", "41", "x", "-1", "٣"]),
            label="limit",
        )

    @rule(which=st.sampled_from([0, 1, 0, 1, 2]), data=st.data())
    def pull(self, which: int, data: st.DataObject) -> None:
        name = self.names[which]
        cursor, limit = self._cursor(data, name), self._limit(data)
        params = {k: v for k, v in (("cursor", cursor), ("limit", limit)) if v is not None}
        status, answer = self.wire.call("GET", f"/v1/stores/{name}/changes", params=params)
        try:
            changes, last, more = self.model.pull(name, cursor, limit)
        except Refused as refused:
            self.wire.refused_as(refused, status, answer, f"pull {name} {params}")
            return
        assert status == 200, answer
        assert same(answer["changes"], changes), f"pull {params}: {answer} != {changes}"
        assert self.model.learn_cursor(name, answer["cursor"]) == last
        assert answer["more"] == more

    @rule(which=st.integers(0, 1))
    def learn_every_tag(self, which: int) -> None:
        """Pull the whole log a change at a time: every tag is learned and checked."""
        name = self.names[which]
        if name not in self.model.stores:
            return
        cursor = None
        for _ in range(self.model.stores[name].head + 1):
            params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
            status, answer = self.wire.call("GET", f"/v1/stores/{name}/changes", params=params)
            assert status == 200, answer
            self.model.learn_cursor(name, answer["cursor"])
            cursor = answer["cursor"]
            if not answer["more"]:
                break

    @rule(which=st.integers(0, 1), data=st.data())
    def snapshot(self, which: int, data: st.DataObject) -> None:
        """A snapshot page: a first one, or the next of one begun earlier (writes in between)."""
        name = self.names[which]
        at, after = None, 0
        if name in self.snapshots and data.draw(st.booleans()):
            at, after = self.snapshots[name]
        elif data.draw(st.sampled_from(["head", "head", "cursor"])) == "cursor":
            at = self._cursor(data, name)
            after = data.draw(st.sampled_from([0, 1, 3, 2**63 - 1])) if at else 0
        limit = self._limit(data)
        params: dict[str, Any] = {k: v for k, v in (("at", at), ("limit", limit)) if v is not None}
        if at:
            params["after"] = str(after)
        status, answer = self.wire.call("GET", f"/v1/stores/{name}/snapshot", params=params)
        try:
            records, seq, next_after, more = self.model.snapshot_page(name, at, after, limit)
        except Refused as refused:
            self.wire.refused_as(refused, status, answer, f"snapshot {name} {params}")
            self.snapshots.pop(name, None)
            return
        assert status == 200, answer
        assert same(answer["records"], records), f"snapshot {params}: {answer} != {records}"
        assert self.model.learn_cursor(name, answer["at"]) == seq
        assert (answer["after"], answer["more"]) == (next_after, more), answer
        if more:
            self.snapshots[name] = (answer["at"], answer["after"])
        else:
            self.snapshots.pop(name, None)

    @rule(which=st.integers(0, 1), item=st.sampled_from(ITEMS + BAD_ITEMS), prefix=st.booleans())
    def find(self, which: int, item: str, prefix: bool) -> None:
        name = self.names[which]
        found: list[Any] = []
        params: dict[str, str] = {"index": item, "prefix": "true" if prefix else "0", "limit": "2"}
        for _ in range(50):
            status, answer = self.wire.call("GET", f"/v1/stores/{name}/records", params=params)
            if status != 200:
                break
            found += answer["records"]
            if not answer["more"]:
                break
            params["after"] = str(answer["after"])
        try:
            expected = self.model.find(name, item, prefix)
        except Refused as refused:
            self.wire.refused_as(refused, status, answer, f"find {name} {params}")
            return
        assert status == 200, answer
        assert same(found, expected), f"find {item!r} prefix={prefix}: {found} != {expected}"

    @rule(which=st.sampled_from([0, 1, 0, 1, 2]), key=st.sampled_from(KEYS + BAD_KEYS[:4]))
    def get(self, which: int, key: str) -> None:
        name = self.names[which]
        status, answer = self.wire.call("GET", f"/v1/stores/{name}/records/{quote(key, safe='')}")
        try:
            expected = self.model.get(name, key)
        except Refused as refused:
            self.wire.refused_as(refused, status, answer, f"get {name}/{key!r}")
            return
        assert status == 200 and same(answer, expected), f"get {key!r}: {answer} != {expected}"

    @rule(data=st.data())
    def wait(self, data: st.DataObject) -> None:
        """``POST /v1/wait`` with wait 0: which stores changed, each one's error."""
        cursors = {name: self._cursor(data, name) for name in self.names}
        if data.draw(st.booleans()):
            cursors[data.draw(st.sampled_from(["Bad!", "f-missing-store", "-x"]))] = None
        status, answer = self.wire.call("POST", "/v1/wait", body={"cursors": cursors, "wait": 0})
        changed, errors = self.model.wait(cursors)
        assert status == 200, answer
        assert set(answer["changed"]) == changed, f"wait {cursors}: {answer}"
        assert {k: v["code"] for k, v in answer["errors"].items()} == errors, answer

    @invariant()
    def figures_agree(self) -> None:
        """Each store's head and live records as the model has them; 404/410 otherwise."""
        for name in self.names:
            status, answer = self.wire.call("GET", f"/v1/stores/{name}")
            store = self.model.stores.get(name)
            if store is None:
                expected = 410 if name in self.model.dropped else 404
                assert status == expected, answer
                continue
            assert status == 200, answer
            live = sum(1 for r in store.records.values() if r.deleted is None)
            assert (answer["epoch"], answer["head_seq"], answer["live_records"]) == (
                store.epoch,
                store.head,
                live,
            )

    @precondition(lambda self: any(n in self.model.stores for n in self.names))
    @rule()
    def head_cursor_is_learned(self) -> None:
        for name in self.names:
            if name in self.model.stores:
                info = self.wire.call("GET", f"/v1/stores/{name}")[1]
                self.model.learn_cursor(name, info["head_cursor"])


@pytest.fixture(params=["sqlite", "postgresql"])
def small_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own, with small limits, on a SQLite file under tmp_path or a
    fresh PostgreSQL database."""
    database = (
        str(tmp_path / "fuzz.sqlite3")
        if request.param == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    with ServerProcess(database, *SMALL_LIMITS) as proc:
        yield proc


def fuzz_settings(full: bool, examples: tuple[int, int], steps: tuple[int, int]) -> settings:
    """Hypothesis settings for a campaign: derandomized and small unless ``full``."""
    return settings(
        max_examples=examples[1] if full else examples[0],
        stateful_step_count=steps[1] if full else steps[0],
        deadline=None,
        derandomize=not full,
        database=None,
        # A failure in CI is reported as found (shrinking it can take minutes).
        phases=list(Phase) if full else [Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def test_the_server_answers_as_the_protocol_model(small_server: ServerProcess, full: bool) -> None:
    wire = Wire(small_server.url)
    health = wire.call("GET", "/v1/health")[1]
    machine = type(
        "Protocol", (ProtocolMachine,), {"wire": wire, "limits": Limits.from_health(health["limits"])}
    )
    started = time.monotonic()
    mismatches = 0
    try:
        run_state_machine_as_test(machine, settings=fuzz_settings(full, (15, 200), (50, 80)))
    except Exception:
        mismatches = 1  # the run stops at the first answer the model does not give
        raise
    finally:
        record(
            CampaignFigures(
                "fuzz: protocol vs model",
                backend="sqlite" if isinstance(small_server.database, Path) else "postgresql",
                injected=wire.requests,
                acknowledged=wire.seen["applied"] + wire.seen["duplicate"],
                unexpected_5xx=wire.server_errors,
                seconds=time.monotonic() - started,
                extra={"mismatches": mismatches, "changes_applied": wire.seen["applied"]},
            )
        )
    print("protocol fuzz covered:", dict(sorted(wire.seen.items())))
    # The campaign means something only if it reached every kind of answer.
    # (The short run's draws are few: it is held to the common ones only.)
    expected = {"applied", "key_exists", "invalid_change", "invalid_request", "invalid_cursor"}
    if full:
        expected |= {
            "duplicate", "key_deleted", "key_not_found", "change_number_conflict",
            "batch_too_large", "reset_required", "store_dropped", "store_not_found",
            "store_exists", "record_not_found",
        }  # fmt: skip
    assert expected <= set(wire.seen), f"never reached: {expected - set(wire.seen)}"
