"""Users, tokens and per-store access on a real server process.

One server holds users of every kind; each endpoint is called as each kind
of caller, and what a refused call would have written is checked unwritten.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from idsync_server_ref.accounts import Accounts
from idsync_server_ref.process import ServerProcess
from idsync_server_ref.storage import open_storage

from .conftest import add

STORE = "alice.notes"
SCRATCH = "alice.scratch"
UNAUTHENTICATED = ("none", "malformed", "revoked", "expired")
AUTHENTICATED = ("reader", "writer", "owner", "stranger", "admin")
CALLERS = UNAUTHENTICATED + AUTHENTICATED


@dataclass
class Realm:
    """A server in users mode and a token for each kind of caller."""

    server: ServerProcess
    db: Path
    tokens: dict[str, str | None] = field(default_factory=dict)

    def call(
        self, caller: str, method: str, path: str, body: Any = None, **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        token = self.tokens[caller]
        if caller == "malformed":
            headers["Authorization"] = "Bearer not-a-token"
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            kwargs["json"] = body
        with requests.Session() as session:
            session.trust_env = False
            return session.request(
                method, self.server.url + path, headers=headers, timeout=30, **kwargs
            )

    def ok(self, caller: str, method: str, path: str, body: Any = None) -> Any:
        response = self.call(caller, method, path, body)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def state(self) -> list[Any]:
        """Everything a request could write, read from the file itself."""
        with sqlite3.connect(self.db) as conn:
            return [
                conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("stores", "changes", "users", "tokens", "store_access")
            ]


def make_users(db: Path | str) -> dict[str, str | None]:
    """Users of every kind in a fresh database (a file or a URL), and their tokens."""
    storage = open_storage(db)
    try:
        accounts = Accounts(storage.accounts())
        tokens: dict[str, str | None] = {"none": None, "malformed": None}
        for kind, name in [
            ("owner", "alice"),
            ("writer", "wendy"),
            ("reader", "rita"),
            ("stranger", "sam"),
            ("admin", "root"),
        ]:
            accounts.add_user(name, is_admin=kind == "admin")
            tokens[kind] = accounts.create_token(name, device=kind).secret
        accounts.add_user("extra")
        revoked = accounts.create_token("alice", device="old")
        storage.accounts().revoke_token(revoked.info.token_id, 1.0)
        tokens["revoked"] = revoked.secret
        tokens["expired"] = accounts.create_token("alice", expires_in=0.001).secret
    finally:
        storage.close()
    return tokens


@pytest.fixture(scope="module")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Realm]:
    db = tmp_path_factory.mktemp("auth") / "server.sqlite3"
    tokens = make_users(db)
    args = ("--rate-limit", "0", "--log-level", "DEBUG")
    with ServerProcess(db, *args) as server:
        realm = Realm(server, db, tokens)
        realm.ok("owner", "POST", "/v1/stores", {"name": STORE})
        realm.ok(
            "owner",
            "POST",
            f"/v1/stores/{STORE}/push",
            {"client_id": "c", "changes": [add(1, "k1", index=["tag:x"])]},
        )
        realm.ok("owner", "PUT", f"/v1/stores/{STORE}/access/wendy", {"role": "writer"})
        realm.ok("owner", "PUT", f"/v1/stores/{STORE}/access/rita", {"role": "reader"})
        yield realm


# -- the matrix ---------------------------------------------------------------

READERS = {"reader": 200, "writer": 200, "owner": 200, "admin": 200, "stranger": 404}
WRITERS = {"reader": 403, "writer": 200, "owner": 200, "admin": 200, "stranger": 404}
OWNERS = {"reader": 403, "writer": 403, "owner": 200, "admin": 200, "stranger": 404}
ADMINS = {"reader": 403, "writer": 403, "owner": 403, "admin": 200, "stranger": 403}
EVERYONE = {kind: 200 for kind in AUTHENTICATED}


def _scratch(realm: Realm) -> None:
    # 409 if there; a name dropped by an earlier case is re-created on purpose.
    realm.call("owner", "POST", "/v1/stores", {"name": SCRATCH, "recreate": True})
    # Dropping a store drops its grants: give them again.
    realm.ok("owner", "PUT", f"/v1/stores/{SCRATCH}/access/wendy", {"role": "writer"})
    realm.ok("owner", "PUT", f"/v1/stores/{SCRATCH}/access/rita", {"role": "reader"})


def _extra_granted(realm: Realm) -> None:
    realm.ok("owner", "PUT", f"/v1/stores/{STORE}/access/extra", {"role": "reader"})


def _extra_not_granted(realm: Realm) -> None:
    realm.ok("owner", "DELETE", f"/v1/stores/{STORE}/access/extra")


def _victim(realm: Realm) -> dict[str, Any]:
    realm.call("admin", "POST", "/v1/admin/users", {"name": "victim"})
    return {}


def _extra_token(realm: Realm) -> dict[str, Any]:
    made = realm.ok("admin", "POST", "/v1/admin/users/extra/tokens", {"device": "x"})
    return {"token": made["id"]}


@dataclass(frozen=True)
class Case:
    """One endpoint call: what to prepare, what to send, and the status per caller."""

    name: str
    method: str
    path: str
    expected: dict[str, int]
    body: Callable[[], Any] | None = None
    prepare: Callable[[Realm], Any] | None = None


def _fresh_store() -> dict[str, str]:
    return {"name": f"alice.new-{uuid.uuid4().hex[:8]}"}


def _push_body() -> dict[str, Any]:
    return {"client_id": "m", "changes": [add(1, f"m-{uuid.uuid4().hex}")]}


CASES = [
    Case("health", "GET", "/v1/health", EVERYONE),
    Case("list stores", "GET", "/v1/stores", EVERYONE),
    Case(
        "create store",
        "POST",
        "/v1/stores",
        {**OWNERS, "reader": 403, "writer": 403, "stranger": 403, "owner": 201, "admin": 201},
        body=_fresh_store,
    ),
    Case("get store", "GET", f"/v1/stores/{STORE}", READERS),
    Case("drop store", "DELETE", f"/v1/stores/{SCRATCH}", OWNERS, prepare=_scratch),
    Case("push", "POST", f"/v1/stores/{STORE}/push", WRITERS, body=_push_body),
    Case("pull", "GET", f"/v1/stores/{STORE}/changes", READERS),
    Case("snapshot", "GET", f"/v1/stores/{STORE}/snapshot", READERS),
    Case("find", "GET", f"/v1/stores/{STORE}/records?index=tag:x", READERS),
    Case("get record", "GET", f"/v1/stores/{STORE}/records/k1", READERS),
    Case(
        "wait",
        "POST",
        "/v1/wait",
        EVERYONE,
        body=lambda: {"cursors": {STORE: None}, "wait": 0},
    ),
    Case("list access", "GET", f"/v1/stores/{STORE}/access", OWNERS),
    Case(
        "grant",
        "PUT",
        f"/v1/stores/{STORE}/access/extra",
        OWNERS,
        body=lambda: {"role": "reader"},
        prepare=_extra_not_granted,
    ),
    Case(
        "revoke access",
        "DELETE",
        f"/v1/stores/{STORE}/access/extra",
        OWNERS,
        prepare=_extra_granted,
    ),
    Case("list users", "GET", "/v1/admin/users", ADMINS),
    Case(
        "add user",
        "POST",
        "/v1/admin/users",
        {**ADMINS, "admin": 201},
        body=lambda: {"name": f"u{uuid.uuid4().hex[:8]}"},
    ),
    Case("remove user", "DELETE", "/v1/admin/users/victim", ADMINS, prepare=_victim),
    Case("list tokens", "GET", "/v1/admin/users/extra/tokens", ADMINS),
    Case(
        "create token",
        "POST",
        "/v1/admin/users/extra/tokens",
        {**ADMINS, "admin": 201},
        body=lambda: {"device": "d"},
    ),
    Case("revoke token", "DELETE", "/v1/admin/tokens/{token}", ADMINS, prepare=_extra_token),
]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_endpoint_as_every_caller(realm: Realm, case: Case, caller: str) -> None:
    params = (case.prepare(realm) if case.prepare else None) or {}
    path = case.path.format(**params)
    before = realm.state()
    body = case.body() if case.body else None
    response = realm.call(caller, case.method, path, body)
    if caller in UNAUTHENTICATED and case.name != "health":
        expected = 401
    else:
        expected = case.expected.get(caller, 200)
    assert response.status_code == expected, (caller, case.name, response.text)
    if expected == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "unauthorized"
    if expected >= 400:
        assert realm.state() == before, f"{case.name} as {caller} wrote something"


def test_a_stranger_sees_neither_the_store_in_the_list_nor_its_changes(realm: Realm) -> None:
    assert STORE not in [s["name"] for s in realm.ok("stranger", "GET", "/v1/stores")["stores"]]
    assert STORE in [s["name"] for s in realm.ok("reader", "GET", "/v1/stores")["stores"]]
    waited = realm.ok("stranger", "POST", "/v1/wait", {"cursors": {STORE: None}, "wait": 0})
    assert waited["changed"] == [] and waited["errors"][STORE]["code"] == "store_not_found"
    waited = realm.ok("reader", "POST", "/v1/wait", {"cursors": {STORE: None}, "wait": 0})
    assert waited["changed"] == [STORE] and waited["errors"] == {}


# -- a private store is indistinguishable from a missing one -----------------

PROBES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/stores/{s}", None),
    ("DELETE", "/v1/stores/{s}", None),
    ("POST", "/v1/stores/{s}/push", {"client_id": "p", "changes": [add(1, "p")]}),
    ("GET", "/v1/stores/{s}/changes", None),
    ("GET", "/v1/stores/{s}/snapshot", None),
    ("GET", "/v1/stores/{s}/records?index=a", None),
    ("GET", "/v1/stores/{s}/records/k", None),
    ("GET", "/v1/stores/{s}/access", None),
    ("PUT", "/v1/stores/{s}/access/sam", {"role": "writer"}),
    ("DELETE", "/v1/stores/{s}/access/sam", None),
    ("POST", "/v1/stores", {"name": "{s}"}),
    ("POST", "/v1/wait", {"cursors": {"{s}": None}, "wait": 0}),
]


def _probe(realm: Realm, caller: str, store: str) -> list[tuple[int, bytes, list[Any]]]:
    answers = []
    for method, path, body in PROBES:
        text = None if body is None else requests.compat.json.dumps(body).replace("{s}", store)
        response = realm.call(
            caller,
            method,
            path.format(s=store),
            data=text,
            headers={"Content-Type": "application/json"},
        )
        # The date and the request id differ between any two answers.
        headers = sorted(
            (k, v)
            for k, v in response.headers.items()
            if k.lower() not in ("date", "idsync-request-id")
        )
        answers.append((response.status_code, response.content, headers))
    return answers


# "reader" reads alice.notes but holds nothing on the private store.
@pytest.mark.parametrize("caller", ["stranger", "reader"])
def test_a_private_store_answers_as_a_missing_one(realm: Realm, caller: str) -> None:
    private = f"alice.private-{caller}"
    realm.ok("owner", "POST", "/v1/stores", {"name": private})
    realm.ok(
        "owner",
        "POST",
        f"/v1/stores/{private}/push",
        {"client_id": "c", "changes": [add(1, "k", index=["a"])]},
    )
    while_there = _probe(realm, caller, private)
    realm.ok("owner", "DELETE", f"/v1/stores/{private}")
    while_missing = _probe(realm, caller, private)
    assert while_there == while_missing
    assert [status for status, _, _ in while_there] == [
        404,
        404,
        404,
        404,
        404,
        404,
        404,
        404,
        404,
        404,
        403,
        200,
    ]


# -- uploads are bound to the user --------------------------------------------


def test_two_users_with_one_client_id_both_land_all_their_writes(realm: Realm) -> None:
    store = "alice.shared-ids"
    realm.ok("owner", "POST", "/v1/stores", {"name": store})
    realm.ok("owner", "PUT", f"/v1/stores/{store}/access/wendy", {"role": "writer"})
    sent: dict[str, list[dict[str, Any]]] = {}
    for caller in ("owner", "writer"):
        changes = [add(n, f"{caller}-{n}") for n in (1, 2, 3)]
        sent[caller] = changes
        answer = realm.ok(
            caller, "POST", f"/v1/stores/{store}/push", {"client_id": "same", "changes": changes}
        )
        assert [o["status"] for o in answer["outcomes"]] == ["applied"] * 3
    pulled = realm.ok("owner", "GET", f"/v1/stores/{store}/changes")
    assert sorted(c["key"] for c in pulled["changes"]) == sorted(
        c["key"] for changes in sent.values() for c in changes
    )
    # Each user's replay is still recognised as its own.
    again = realm.ok(
        "writer",
        "POST",
        f"/v1/stores/{store}/push",
        {"client_id": "same", "changes": sent["writer"]},
    )
    assert [(o["status"], o["seq"]) for o in again["outcomes"]] == [
        ("applied", 4),
        ("applied", 5),
        ("applied", 6),
    ]


def test_a_revoked_token_is_refused_from_the_next_request(realm: Realm) -> None:
    made = realm.ok("admin", "POST", "/v1/admin/users/rita/tokens", {"device": "spare"})
    realm.tokens["spare"] = made["token"]
    try:
        assert realm.call("spare", "GET", f"/v1/stores/{STORE}").status_code == 200
        realm.ok("admin", "DELETE", f"/v1/admin/tokens/{made['id']}")
        refused = realm.call("spare", "GET", f"/v1/stores/{STORE}")
        assert refused.status_code == 401 and "invalid_token" in refused.headers["WWW-Authenticate"]
    finally:
        del realm.tokens["spare"]


def test_no_token_ever_reaches_the_log(realm: Realm) -> None:
    # Last in this module: the matrix above has run against this server.
    text = "".join(realm.server.log_lines)
    assert "idsync.server.access" in text, "the server logged no requests"
    secrets = [t for t in realm.tokens.values() if t]
    assert secrets and not [t for t in secrets if t in text]
    assert "idsync_" not in text.replace("idsync_server_ref", "")


def test_users_mode_on_postgresql(pg_url: str) -> None:
    tokens = make_users(pg_url)
    with ServerProcess(pg_url, "--rate-limit", "0") as server:
        realm = Realm(server, Path("unused"), tokens)
        realm.ok("owner", "POST", "/v1/stores", {"name": "alice.pg"})
        realm.ok("owner", "PUT", "/v1/stores/alice.pg/access/wendy", {"role": "writer"})
        for caller in ("owner", "writer"):
            body = {"client_id": "same", "changes": [add(1, f"{caller}-1")]}
            answer = realm.ok(caller, "POST", "/v1/stores/alice.pg/push", body)
            assert answer["outcomes"][0]["status"] == "applied"
        assert (
            realm.call(
                "reader",
                "POST",
                "/v1/stores/alice.pg/push",
                {"client_id": "r", "changes": [add(1, "r")]},
            ).status_code
            == 404
        )
        hidden = realm.call("stranger", "GET", "/v1/stores/alice.pg/changes")
        missing = realm.call("stranger", "GET", "/v1/stores/alice.none/changes")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.content.replace(b"alice.pg", b"alice.none") == missing.content
        assert realm.call("expired", "GET", "/v1/stores").status_code == 401
        assert len(realm.ok("owner", "GET", "/v1/stores/alice.pg/changes")["changes"]) == 2


# -- starting -----------------------------------------------------------------


def _start(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idsync_server_ref", "--port", "0", "--database", str(db), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_listening_beyond_loopback_without_auth_refuses_to_start(tmp_path: Path) -> None:
    result = _start(tmp_path / "s.sqlite3", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert (
        "refusing to listen on 0.0.0.0" in result.stderr and "--insecure-no-auth" in result.stderr
    )
    assert "listening on" not in result.stdout


def test_listening_beyond_loopback_is_allowed_with_users_or_the_flag(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "a.sqlite3", "--host", "0.0.0.0", "--insecure-no-auth") as srv:
        assert requests.get(srv.url + "/v1/stores", timeout=10).status_code == 200
    db = tmp_path / "b.sqlite3"
    make_users(db)
    with ServerProcess(db, "--host", "0.0.0.0") as srv:
        assert requests.get(srv.url + "/v1/stores", timeout=10).status_code == 401


def test_a_shared_token_with_users_refuses_to_start(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    make_users(db)
    result = _start(db, "--auth-token", "s3cret")
    assert result.returncode == 2 and "--auth-token is for a server without users" in result.stderr


def test_local_mode_allows_everything_without_a_token(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3") as srv:
        created = requests.post(srv.url + "/v1/stores", json={"name": "notes"}, timeout=10)
        assert created.status_code == 201
        assert requests.get(srv.url + "/v1/admin/users", timeout=10).json() == {"users": []}


# -- the token bucket -----------------------------------------------------------


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    from idsync_server_ref.ratelimit import RateLimiter, retry_after_header

    now = [0.0]
    limiter = RateLimiter(2.0, 3, max_keys=2, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5) and limiter.wait_needed("a") > 0
    assert limiter.take("b") == 0.0  # another key has its own bucket
    now[0] += 0.5
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0
    assert retry_after_header(0.01) == "1" and retry_after_header(2.2) == "3"
    limiter.take("c")
    limiter.take("d")
    assert len(limiter._buckets) <= 2  # bounded: idle keys are forgotten first
    assert RateLimiter(0, 0).take("x") == 0.0  # off
    with pytest.raises(ValueError):
        RateLimiter(1.0, 0)
