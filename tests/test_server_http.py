"""The reference server's endpoints, against a real server process."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
import uuid
from urllib.parse import quote

import pytest

from idsync_client.protocol import BACKOFF_HEADER, ERRORS
from idsync_server_ref.process import ServerProcess

from .conftest import Api, add, delete


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["retryable"] is ERRORS[code].retryable
    assert error["message"]
    return error


def test_health(api: Api) -> None:
    body = api.call("GET", "/v1/health").json()
    assert body["status"] == "ok" and body["protocol"] == 1
    assert body["limits"]["max_batch"] > 0


def test_store_lifecycle(api: Api) -> None:
    name = f"life-{uuid.uuid4().hex[:6]}"
    created = api.create_store(name)
    assert created["name"] == name and created["head_seq"] == 0
    assert_error(api.call("POST", "/v1/stores", {"name": name}), 409, "store_exists")
    api.push(name, "c1", [add(1, "a"), add(2, "b"), delete(3, "a")])
    info = api.call("GET", f"/v1/stores/{name}").json()
    assert (info["live_records"], info["log_length"], info["head_seq"]) == (1, 3, 3)
    epoch, seq, tag = info["head_cursor"].split(".")
    assert (epoch, seq) == (created["epoch"], "3") and tag
    listed = {s["name"] for s in api.call("GET", "/v1/stores").json()["stores"]}
    assert name in listed
    assert api.call("DELETE", f"/v1/stores/{name}").status_code == 200
    assert_error(api.call("GET", f"/v1/stores/{name}"), 410, "store_dropped")
    assert_error(api.call("DELETE", f"/v1/stores/{name}"), 410, "store_dropped")


def test_push_outcomes_over_http(api: Api, store: str) -> None:
    out = api.push(
        store, "c1", [add(1, "k", {"v": 1}), add(2, "k", {"v": 2}), delete(3, "nope"), add(4, "k2")]
    )
    assert [(o["status"], o.get("seq"), o.get("code")) for o in out] == [
        ("applied", 1, None),
        ("rejected", None, "key_exists"),
        ("rejected", None, "key_not_found"),
        ("applied", 2, None),
    ]


def test_push_twice_applies_once(api: Api, store: str) -> None:
    batch = [add(1, "x"), add(2, "y"), delete(3, "x")]
    first = api.push(store, "c1", batch)
    assert api.push(store, "c1", batch) == first
    changes, _ = api.pull_all(store)
    assert [c["seq"] for c in changes] == [1, 2, 3]


def test_push_with_lost_response_is_retried_safely(
    api: Api, server: ServerProcess, store: str
) -> None:
    batch = [add(1, "lost-1"), add(2, "lost-2")]
    body = json.dumps({"client_id": "c-lost", "changes": batch}).encode()
    request = (
        f"POST /v1/stores/{store}/push HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)  # hang up without reading the answer
    deadline = time.monotonic() + 10
    while api.call("GET", f"/v1/stores/{store}").json()["head_seq"] < 2:
        assert time.monotonic() < deadline, "server never committed the batch"
        time.sleep(0.01)
    out = api.push(store, "c-lost", batch)
    assert [(o["status"], o["seq"]) for o in out] == [("applied", 1), ("applied", 2)]
    assert api.call("GET", f"/v1/stores/{store}").json()["log_length"] == 2


def test_pull_pages_and_cursor(api: Api, store: str) -> None:
    api.push(store, "c1", [add(n) for n in range(1, 8)])
    page = api.call("GET", f"/v1/stores/{store}/changes", params={"limit": 3}).json()
    assert [c["seq"] for c in page["changes"]] == [1, 2, 3] and page["more"] is True
    rest = api.call("GET", f"/v1/stores/{store}/changes", params={"cursor": page["cursor"]}).json()
    assert [c["seq"] for c in rest["changes"]] == [4, 5, 6, 7] and rest["more"] is False
    empty = api.call("GET", f"/v1/stores/{store}/changes", params={"cursor": rest["cursor"]})
    assert empty.json() == {"changes": [], "cursor": rest["cursor"], "more": False}


def test_long_poll_returns_when_a_change_lands(api: Api, store: str) -> None:
    import threading

    _, cursor = api.pull_all(store)
    results: dict = {}

    def poll() -> None:
        started = time.monotonic()
        response = Api(api.url).call(
            "GET", f"/v1/stores/{store}/changes", params={"cursor": cursor, "wait": 20}
        )
        results["elapsed"] = time.monotonic() - started
        results["body"] = response.json()

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.2)  # let the poll reach its wait before the write lands
    api.push(store, "c1", [add(1, "woken")])
    thread.join(timeout=25)
    assert [c["key"] for c in results["body"]["changes"]] == ["woken"]
    assert results["elapsed"] < 10, "the long-poll did not wake on the write"


def test_long_poll_times_out_empty(api: Api, store: str) -> None:
    started = time.monotonic()
    body = api.call("GET", f"/v1/stores/{store}/changes", params={"wait": 0.3}).json()
    assert body["changes"] == [] and time.monotonic() - started >= 0.3


def test_snapshot_pages(api: Api, store: str) -> None:
    api.push(store, "c1", [add(n, f"s{n}") for n in range(1, 6)] + [delete(6, "s2")])
    page = api.call("GET", f"/v1/stores/{store}/snapshot", params={"limit": 2}).json()
    keys = [r["key"] for r in page["records"]]
    while page["more"]:
        page = api.call(
            "GET",
            f"/v1/stores/{store}/snapshot",
            params={"limit": 2, "at": page["at"], "after": page["after"]},
        ).json()
        keys += [r["key"] for r in page["records"]]
    assert keys == ["s1", "s3", "s4", "s5"]
    assert page["at"].split(".")[1] == "6"


def test_records_get_and_find(api: Api, store: str) -> None:
    api.push(
        store,
        "c1",
        [
            add(1, "n/1 é", {"t": 1}, ["tag:work", "owner:ana"]),
            add(2, "n2", {"t": 2}, ["tag:home"]),
            add(3, "n3", {"t": 3}, ["tag:work"]),
        ],
    )
    got = api.call("GET", f"/v1/stores/{store}/records/n/1 é").json()
    assert got == {"key": "n/1 é", "index": ["owner:ana", "tag:work"], "value": {"t": 1}, "seq": 1}
    assert_error(api.call("GET", f"/v1/stores/{store}/records/none"), 404, "record_not_found")
    work = api.call("GET", f"/v1/stores/{store}/records", params={"index": "tag:work"}).json()
    assert [r["key"] for r in work["records"]] == ["n/1 é", "n3"]
    tags = api.call(
        "GET", f"/v1/stores/{store}/records", params={"index": "tag:", "prefix": "true", "limit": 2}
    ).json()
    assert len(tags["records"]) == 2 and tags["more"] is True
    tail = api.call(
        "GET",
        f"/v1/stores/{store}/records",
        params={"index": "tag:", "prefix": "1", "after": tags["after"]},
    ).json()
    assert [r["key"] for r in tail["records"]] == ["n3"] and tail["more"] is False


# -- bad input: a clear error, and nothing written ------------------------------------------

BAD_STORE_NAMES = ["../x", "A", "-x", "x" * 65, 'q"uote', "sp ace", "x" * 10_000, "", 5, None]


@pytest.mark.parametrize("name", BAD_STORE_NAMES)
def test_bad_store_names_on_create(api: Api, name) -> None:
    before = api.call("GET", "/v1/stores").json()["stores"]
    assert_error(api.call("POST", "/v1/stores", {"name": name}), 400, "invalid_store_name")
    assert api.call("GET", "/v1/stores").json()["stores"] == before, "a refused name made a store"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/stores/..%2Fx",
        "/v1/stores/Q",
        "/v1/stores/%22q%22/changes",
        "/v1/stores/" + "y" * 10_000,
    ],
)
def test_bad_store_names_in_paths(api: Api, path: str) -> None:
    response = api.call("GET", path)
    assert response.status_code in (400, 404)
    assert response.json()["error"]["code"] in ("invalid_store_name", "not_found")


def test_path_with_slash_in_store_name_is_not_found(api: Api) -> None:
    assert_error(api.call("GET", "/v1/stores/a/b"), 404, "not_found")


def test_unknown_store(api: Api) -> None:
    for method, path in [
        ("GET", "/changes"),
        ("GET", "/snapshot"),
        ("GET", "/records/k"),
        ("GET", "/records?index=a"),
    ]:
        assert_error(api.call(method, "/v1/stores/no-such" + path), 404, "store_not_found")
    assert_error(
        api.call("POST", "/v1/stores/no-such/push", {"client_id": "c", "changes": [add(1)]}),
        404,
        "store_not_found",
    )


def test_unknown_endpoint_and_method(api: Api, store: str) -> None:
    assert_error(api.call("GET", "/v2/whatever"), 404, "not_found")
    assert_error(api.call("PATCH", f"/v1/stores/{store}"), 405, "method_not_allowed")


def _push_raw(api: Api, store: str, data: bytes, content_type: str = "application/json"):
    return api.call(
        "POST", f"/v1/stores/{store}/push", data=data, headers={"Content-Type": content_type}
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"\xff\xfe", 400, "malformed_json"),
        (
            b'{"client_id": "c", "changes": [{"n": 1, "op": "add", "key": "k", "value": NaN}]}',
            400,
            "malformed_json",
        ),
        (b"[" * 5000 + b"]" * 5000, 400, "malformed_json"),
        (b"[]", 400, "invalid_request"),
        (b'{"client_id": "c"}', 400, "invalid_request"),
        (b'{"client_id": "c", "changes": [], "extra": 1}', 400, "invalid_request"),
        (b'{"client_id": 7, "changes": []}', 400, "invalid_request"),
        (b'{"client_id": "has space", "changes": []}', 400, "invalid_request"),
        (b'{"client_id": "c", "changes": {}}', 400, "invalid_request"),
    ],
)
def test_malformed_push_bodies(api: Api, store: str, body: bytes, status: int, code: str) -> None:
    assert_error(_push_raw(api, store, body), status, code)
    assert api.call("GET", f"/v1/stores/{store}").json()["head_seq"] == 0


BAD_CHANGES = [
    {"n": 0, "op": "add", "key": "k", "value": 1},
    {"n": -1, "op": "add", "key": "k", "value": 1},
    {"n": "1", "op": "add", "key": "k", "value": 1},
    {"n": True, "op": "add", "key": "k", "value": 1},
    {"n": 2**63, "op": "add", "key": "k", "value": 1},
    {"n": 1, "op": "upsert", "key": "k", "value": 1},
    {"n": 1, "op": "add", "key": "k"},
    {"n": 1, "op": "add", "key": "k", "value": 1, "color": "red"},
    {"n": 1, "op": "delete", "key": "k", "value": 1},
    {"n": 1, "op": "add", "key": 5, "value": 1},
    {"n": 1, "op": "add", "key": "", "value": 1},
    {"n": 1, "op": "add", "key": "a\x00b", "value": 1},
    {"n": 1, "op": "add", "key": "a\nb", "value": 1},
    {"n": 1, "op": "add", "key": "a\x85b", "value": 1},
    {"n": 1, "op": "add", "key": "k" * 257, "value": 1},
    {"n": 1, "op": "add", "key": "k", "index": "tag:a", "value": 1},
    {"n": 1, "op": "add", "key": "k", "index": [1], "value": 1},
    {"n": 1, "op": "add", "key": "k", "index": ["a\tb"], "value": 1},
    {"n": 1, "op": "add", "key": "k", "index": ["x" * 257], "value": 1},
    {"n": 1, "op": "add", "key": "k", "index": [f"i{i}" for i in range(33)], "value": 1},
    {"n": 1, "op": "add", "key": "k", "value": "v" * (256 * 1024)},
    {
        "n": 1,
        "op": "add",
        "key": "k",
        "value": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
    },
]


@pytest.mark.parametrize("bad", BAD_CHANGES, ids=range(len(BAD_CHANGES)))
def test_bad_changes_reject_the_whole_batch(api: Api, store: str, bad: dict) -> None:
    good = add(5, "good")
    response = api.call(
        "POST", f"/v1/stores/{store}/push", {"client_id": "c", "changes": [good, bad]}
    )
    assert_error(response, 422, "invalid_change")
    assert api.call("GET", f"/v1/stores/{store}").json()["head_seq"] == 0


def test_lone_surrogate_in_key_is_rejected(api: Api, store: str) -> None:
    body = b'{"client_id": "c", "changes": [{"n": 1, "op": "add", "key": "a\\ud800", "value": 1}]}'
    response = _push_raw(api, store, body)
    assert response.status_code in (400, 422)
    assert response.json()["error"]["code"] in ("malformed_json", "invalid_change")
    assert api.call("GET", f"/v1/stores/{store}").json()["head_seq"] == 0


def test_duplicate_change_number_in_one_batch(api: Api, store: str) -> None:
    response = api.call(
        "POST", f"/v1/stores/{store}/push", {"client_id": "c", "changes": [add(1), add(1)]}
    )
    assert assert_error(response, 422, "invalid_change")["details"] == {"n": 1}


def test_wrong_content_type(api: Api, store: str) -> None:
    assert_error(_push_raw(api, store, b"{}", "text/plain"), 415, "unsupported_media_type")


def test_limits_on_body_and_batch(tmp_path) -> None:
    with ServerProcess(
        tmp_path / "s.sqlite3", "--max-body-bytes", "2000", "--max-batch", "3"
    ) as proc:
        api = Api(proc.url)
        api.create_store("lim")
        big = {"client_id": "c", "changes": [add(1, value="x" * 3000)]}
        assert_error(api.call("POST", "/v1/stores/lim/push", big), 413, "body_too_large")
        many = {"client_id": "c", "changes": [add(n) for n in range(1, 5)]}
        assert_error(api.call("POST", "/v1/stores/lim/push", many), 413, "batch_too_large")
        assert api.call("GET", "/v1/stores/lim").json()["head_seq"] == 0


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "garbage"},
        {"cursor": "0123456789abcdef.-1"},
        {"cursor": "0123456789abcdef.1x"},
        {"cursor": "'; DROP TABLE changes; --"},
        {"cursor": "x" * 10_000},
        {"limit": "0"},
        {"limit": "-3"},
        {"limit": "99999999"},
        {"limit": "ten"},
        {"wait": "-1"},
        {"wait": "31"},
        {"wait": "soon"},
        {"wait": "1_0"},  # Python's float() takes it; limit=1_0 is refused too
        {"wait": " 1"},
        {"limit": "1_0"},
        {"color": "red"},
    ],
)
def test_bad_pull_parameters(api: Api, store: str, params: dict) -> None:
    response = api.call("GET", f"/v1/stores/{store}/changes", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("invalid_cursor", "invalid_request")


def test_future_and_foreign_cursors(api: Api, store: str) -> None:
    api.push(store, "c1", [add(1)])
    epoch = api.call("GET", f"/v1/stores/{store}").json()["epoch"]
    assert_error(
        api.call("GET", f"/v1/stores/{store}/changes", params={"cursor": f"{epoch}.99"}),
        410,
        "reset_required",
    )
    assert_error(
        api.call("GET", f"/v1/stores/{store}/changes", params={"cursor": "0123456789abcdef.0"}),
        410,
        "reset_required",
    )
    assert_error(
        api.call("GET", f"/v1/stores/{store}/snapshot", params={"at": "0123456789abcdef.1"}),
        410,
        "reset_required",
    )


def test_drop_and_recreate_asks_for_reset(api: Api) -> None:
    name = f"reset-{uuid.uuid4().hex[:6]}"
    api.create_store(name)
    api.push(name, "c1", [add(1)])
    _, cursor = api.pull_all(name)
    api.call("DELETE", f"/v1/stores/{name}")
    api.create_store(name, recreate=True)
    assert_error(
        api.call("GET", f"/v1/stores/{name}/changes", params={"cursor": cursor}),
        410,
        "reset_required",
    )


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/records", {}),
        ("/records", {"index": ""}),
        ("/records", {"index": "a\x00"}),
        ("/records", {"index": "x" * 300}),
        ("/records", {"index": "a", "prefix": "maybe"}),
        ("/records", {"index": "a", "after": "-1"}),
        ("/snapshot", {"after": "x"}),
        ("/snapshot", {"at": "nope"}),
        ("/records/" + "k" * 300, {}),
    ],
)
def test_bad_lookup_parameters(api: Api, store: str, path: str, params: dict) -> None:
    response = api.call("GET", f"/v1/stores/{store}{path}", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("invalid_request", "invalid_cursor")


def test_backoff_hint_and_auth(tmp_path) -> None:
    with ServerProcess(
        tmp_path / "s.sqlite3", "--backoff-threshold", "0", "--auth-token", "s3cret"
    ) as proc:
        api = Api(proc.url)
        health = api.call("GET", "/v1/health")
        assert health.status_code == 200 and health.headers[BACKOFF_HEADER] == "5"
        assert_error(api.call("GET", "/v1/stores"), 401, "unauthorized")
        assert_error(
            api.call("GET", "/v1/stores", headers={"Authorization": "Bearer nope"}),
            401,
            "unauthorized",
        )
        ok = api.call("GET", "/v1/stores", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_busy_storage_answers_503_with_retry_after(tmp_path) -> None:
    import sqlite3

    db = tmp_path / "s.sqlite3"
    with ServerProcess(db, "--busy-timeout-ms", "100") as proc:
        api = Api(proc.url)
        api.create_store("busy")
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            response = api.call(
                "POST", "/v1/stores/busy/push", {"client_id": "c", "changes": [add(1)]}
            )
            assert_error(response, 503, "storage_busy")
            assert response.headers["Retry-After"] == "1"
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert api.push("busy", "c", [add(1)])[0]["status"] == "applied"


# -- the request target: strict decoding, raw-path routing, HEAD, Allow, logs -----------------


def _raw_get(server: ServerProcess, target: str, method: str = "GET", headers=None):
    """Send ``target`` exactly as given (no client-side re-quoting); (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("bad", ["tag:%FF", "tag:%C3", "tag:%zz", "tag:%F", "tag:%", "%FF=1"])
def test_query_is_decoded_strictly(server: ServerProcess, api: Api, store: str, bad: str) -> None:
    api.push(store, "c1", [add(1, "k", index=["tag:\ufffd", "tag:%zz", "tag:%F", "tag:%"])])
    status, _, body = _raw_get(server, f"/v1/stores/{store}/records?index={bad}")
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == "invalid_request"


def test_query_decodes_plus_and_utf8(server: ServerProcess, api: Api, store: str) -> None:
    api.push(store, "c1", [add(1, "k", index=["tag:a é"])])
    status, _, body = _raw_get(server, f"/v1/stores/{store}/records?index=tag:a+%C3%A9")
    assert status == 200 and [r["key"] for r in json.loads(body)["records"]] == ["k"]


def test_encoded_slash_does_not_route(server: ServerProcess, api: Api, store: str) -> None:
    api.push(store, "c1", [add(1, "k1")])
    status, _, body = _raw_get(server, f"/v1/stores/{store}%2Frecords%2Fk1")
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == "invalid_store_name"
    status, _, body = _raw_get(server, f"/v1/stores/{store}/records%2Fk1")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


@pytest.mark.parametrize("key", ["a/b", "a/../b", "/lead", "100%", "q?x=1&y", "sp ace/é", "a%2Fb"])
def test_record_key_with_slash_and_reserved_characters(api: Api, store: str, key: str) -> None:
    api.push(store, "c1", [add(1, key, {"k": key})])
    response = api.call("GET", f"/v1/stores/{store}/records/{quote(key, safe='')}")
    assert response.status_code == 200, response.text
    assert response.json()["key"] == key


def test_bad_percent_encoding_in_path(server: ServerProcess, store: str) -> None:
    for target in (f"/v1/stores/{store}/records/%FF", f"/v1/stores/{store}/records/a%zz"):
        status, _, body = _raw_get(server, target)
        assert status == 400 and json.loads(body)["error"]["code"] == "invalid_request"


def test_head_on_every_get_endpoint(server: ServerProcess, api: Api, store: str) -> None:
    api.push(store, "c1", [add(1, "k", index=["tag:a"])])
    targets = [
        "/v1/health",
        "/v1/stores",
        f"/v1/stores/{store}",
        f"/v1/stores/{store}/changes",
        f"/v1/stores/{store}/snapshot",
        f"/v1/stores/{store}/records?index=tag:a",
        f"/v1/stores/{store}/records/k",
        f"/v1/stores/{store}/records/missing",
        "/v1/stores/no-such/changes",
    ]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for target in targets:
            # HEAD then GET on one connection: a body sent after HEAD would garble the GET.
            conn.request("HEAD", target)
            head = conn.getresponse()
            assert head.read() == b""
            conn.request("GET", target)
            get = conn.getresponse()
            body = get.read()
            assert head.status == get.status, target
            assert head.getheader("Content-Type") == get.getheader("Content-Type")
            assert head.getheader("Content-Length") == get.getheader("Content-Length")
            assert int(get.getheader("Content-Length")) == len(body) > 0
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/v1/stores/{store}", "DELETE, GET, HEAD"),
        ("POST", "/v1/health", "GET, HEAD"),
        ("DELETE", "/v1/stores", "GET, HEAD, POST"),
        ("GET", "/v1/stores/{store}/push", "POST"),
        ("PUT", "/v1/stores/{store}/records/k", "GET, HEAD"),
    ],
)
def test_405_carries_allow(api: Api, store: str, method: str, path: str, allow: str) -> None:
    response = api.call(method, path.format(store=store))
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == allow


def test_request_text_is_escaped_in_the_log(tmp_path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3", "--log-level", "INFO") as proc:
        forged = "FORGED GET /v1/stores 200 0.1ms"
        _raw_get(proc, "/v1/health%0d%0a" + forged.replace(" ", "%20"))
        _raw_get(proc, "/v1/health?x=%0a" + forged.replace(" ", "%20"))
        _raw_get(proc, "/v1/health", headers={"User-Agent": "ua\t\x85\x9b2Jend"})
        deadline = time.monotonic() + 10
        while sum("idsync.server.access" in line for line in proc.log_lines) < 3:
            assert time.monotonic() < deadline, "".join(proc.log_lines)
            time.sleep(0.01)
        text = "".join(proc.log_lines)
    assert not any(line.startswith("FORGED") for line in text.splitlines())
    assert not any(c in text for c in "\r\t\x85\x9b")
    assert "ua\\x09\\x85\\x9b2Jend" in text


# -- the HTTP layer: framing, limits before reading, errors in the envelope -----------------


def _exchange(server: ServerProcess, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or stays quiet for ``timeout``."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(timeout)
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


def _envelope(raw: bytes, status: int) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), raw[:300]
    assert b"content-type: application/json" in head.lower()
    return json.loads(body)["error"]


def test_body_over_the_limit_is_refused_before_it_is_sent(server: ServerProcess, store: str) -> None:
    started = time.monotonic()
    raw = _exchange(
        server,
        f"POST /v1/stores/{store}/push HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {64 * 1024 * 1024}\r\n\r\n".encode(),
    )
    assert _envelope(raw, 413)["code"] == "body_too_large"
    assert time.monotonic() - started < 4, "the server waited for a body it will not take"


def test_chunked_body_over_the_limit(tmp_path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3", "--max-body-bytes", "1000") as proc:
        Api(proc.url).create_store("ch")
        chunk = b"x" * 600
        raw = _exchange(
            proc,
            b"POST /v1/stores/ch/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2
            + b"0\r\n\r\n",
        )
        assert _envelope(raw, 413)["code"] == "body_too_large"


@pytest.mark.parametrize("size_line", [b"zz", b"1" * 20])
def test_a_malformed_chunk_is_answered_at_once_and_frees_the_connection(
    tmp_path, size_line: bytes
) -> None:
    """A body whose chunk size does not parse: 400 and closed, not a
    connection held open (a few of those would use up --max-connections)."""
    with ServerProcess(tmp_path / "s.sqlite3", "--max-connections", "3") as proc:
        Api(proc.url).create_store("ch")
        for _ in range(4):  # more than the connection limit, one after the other
            started = time.monotonic()
            raw = _exchange(
                proc,
                b"POST /v1/stores/ch/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\n",
                timeout=8.0,
            )
            assert _envelope(raw, 400)["code"] == "invalid_request"
            assert time.monotonic() - started < 4, "answered at once, not after a timeout"
        assert Api(proc.url).call("GET", "/v1/health").status_code == 200


def test_request_framed_two_ways_is_refused(server: ServerProcess, api: Api) -> None:
    name = f"smuggle-{uuid.uuid4().hex[:6]}"
    body = json.dumps({"name": name}).encode()
    smuggled = b"DELETE /v1/stores/" + name.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = _exchange(
        server,
        b"POST /v1/stores HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        + smuggled,
    )
    assert _envelope(raw, 400)["code"] == "invalid_request"
    assert raw.count(b"HTTP/1.1 ") == 1, "a second request was served"
    assert_error(api.call("GET", f"/v1/stores/{name}"), 404, "store_not_found")


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ],
    ids=["garbage", "huge-headers", "two-lengths", "bad-header"],
)
def test_server_layer_errors_use_the_envelope(server: ServerProcess, data: bytes) -> None:
    raw = _exchange(server, data)
    error = _envelope(raw, 400)
    assert error["code"] == "invalid_request" and error["retryable"] is False
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert re.search(rb"\r\nidsync-request-id: [0-9a-f]{32}\r\n", head + b"\r\n"), head


# -- POST /v1/wait: one long-poll for many stores --------------------------------------------


def _wait(api: Api, cursors: dict, wait: float = 0, **kwargs):
    return api.call("POST", "/v1/wait", {"cursors": cursors, "wait": wait}, **kwargs)


def test_wait_wakes_on_a_change_in_any_store(api: Api) -> None:
    import threading

    stores = [f"w{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    cursors = {}
    for name in stores:
        api.create_store(name)
        cursors[name] = api.pull_all(name)[1]
    quiet = _wait(api, cursors, 0.2)
    assert quiet.status_code == 200 and quiet.json() == {"changed": [], "errors": {}}
    result: dict = {}

    def waiter() -> None:
        started = time.monotonic()
        result["response"] = _wait(Api(api.url), cursors, 20)
        result["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 10
    while api.call("GET", "/v1/health").json()["waiting"] < 1 and thread.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    api.push(stores[1], "c1", [add(1, "k")])
    thread.join(timeout=25)
    assert result["response"].json() == {"changed": [stores[1]], "errors": {}}
    assert result["elapsed"] < 10
    # A cursor already behind the head answers at once.
    started = time.monotonic()
    assert _wait(api, cursors, 20).json()["changed"] == [stores[1]]
    assert time.monotonic() - started < 5


def test_wait_reports_errors_per_store(api: Api, store: str) -> None:
    api.push(store, "c1", [add(1)])
    head = api.pull_all(store)[1]
    started = time.monotonic()
    response = _wait(
        api,
        {
            store: head,
            "no-such-store": None,
            "Bad Name": None,
            f"{store}x": "garbage",
        },
        20,
    )
    assert response.status_code == 200 and time.monotonic() - started < 5
    body = response.json()
    assert body["changed"] == []
    errors = {name: e["code"] for name, e in body["errors"].items()}
    assert errors == {
        "no-such-store": "store_not_found",
        "Bad Name": "invalid_store_name",
        f"{store}x": "invalid_cursor",
    }
    assert body["errors"]["no-such-store"]["retryable"] is False
    foreign = _wait(api, {store: "0123456789abcdef.1"}).json()
    assert foreign["errors"][store]["code"] == "reset_required"
    assert _wait(api, {store: None}).json() == {"changed": [store], "errors": {}}


def test_wait_limits_and_bad_bodies(api: Api, store: str) -> None:
    from idsync_client.protocol import Limits

    too_many = {f"s{i}": None for i in range(Limits().max_wait_stores + 1)}
    assert_error(_wait(api, too_many), 400, "invalid_request")
    for bad in (
        {"cursors": {}},
        {"cursors": [store]},
        {"cursors": {store: None}, "wait": 31},
        {"cursors": {store: None}, "wait": -1},
        {"cursors": {store: None}, "wait": True},
        {"cursors": {store: None}, "extra": 1},
        [],
    ):
        assert_error(api.call("POST", "/v1/wait", bad), 400, "invalid_request")
    assert_error(_push_raw_to(api, "/v1/wait", b"{nope"), 400, "malformed_json")
    assert_error(api.call("GET", "/v1/wait"), 405, "method_not_allowed")


def _push_raw_to(api: Api, path: str, data: bytes):
    return api.call("POST", path, data=data, headers={"Content-Type": "application/json"})
