"""Raw HTTP fuzzing of every endpoint: never a 5xx, never an answer that is not JSON.

Requests are written byte by byte on a socket, so nothing in between fixes
them: wrong and garbage methods, paths with bad percent-escapes and invalid
UTF-8, unknown and repeated query parameters, bodies of the wrong type or
not JSON at all, bodies framed two ways or not at all, odd headers. Every
answer must be a 2xx with a JSON body (none for HEAD) or a 4xx carrying the
error envelope with a documented code of that status; and when the answer
is an error, the stores (epoch, head, live records) are as they were.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from idsync_client.protocol import ERRORS
from idsync_server_ref.process import ServerProcess

from .figures import CampaignFigures, record

#: Every endpoint of docs/protocol.md with the method it takes. Creating a
#: user is left out: the first user turns token checks on for every request.
ENDPOINTS = [
    ("GET", "/v1/health"),
    ("GET", "/v1/stores"),
    ("POST", "/v1/stores"),
    ("GET", "/v1/stores/{s}"),
    ("DELETE", "/v1/stores/{s}"),
    ("POST", "/v1/stores/{s}/push"),
    ("GET", "/v1/stores/{s}/changes"),
    ("GET", "/v1/stores/{s}/snapshot"),
    ("GET", "/v1/stores/{s}/records"),
    ("GET", "/v1/stores/{s}/records/{k}"),
    ("POST", "/v1/wait"),
    ("GET", "/v1/stores/{s}/access"),
    ("PUT", "/v1/stores/{s}/access/{u}"),
    ("DELETE", "/v1/stores/{s}/access/{u}"),
    ("GET", "/v1/admin/users"),
    ("DELETE", "/v1/admin/users/{u}"),
    ("GET", "/v1/admin/users/{u}/tokens"),
    ("POST", "/v1/admin/users/{u}/tokens"),
    ("DELETE", "/v1/admin/tokens/{u}"),
    ("GET", "/{k}"),
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "get", "BREW"]
SEGMENTS = [
    "fz", "fz", "fz", "fz", "fz", "fz", "fz-missing", "Bad", "a%2Fb", "%zz", "%C3%28", "%e2%82", "..", ".", "",
    "x" * 70, "%00", "é", "%C3%A9", "f%7A", "%2e%2e", "fz%20", "%", "fz;x", "fz?",
]  # fmt: skip
KEYS = ["k1", "k1", "a%2Fb", "a/b", "%", "%ff", "%00", "k" * 300, "", "%20", "%C2%85", "é"]
QUERY_NAMES = ["cursor", "limit", "wait", "at", "after", "index", "prefix", "x", "", "%zz", "a+b"]
QUERY_VALUES = [
    "{cursor}", "1", "2", "t:a", "true", "{cursor}", "1", "2", "t:a", "", "1", "0", "-1", "x", "%zz", "%ff", "+", "9" * 25, "1e400", "nan", "inf", "true",
    "{cursor}", "%C3%A9", "a" * 300, "0.5", "t:a", "%00",
]  # fmt: skip
FIELDS = [
    "name", "recreate", "client_id", "changes", "cursors", "wait", "n", "op", "key",
    "index", "value", "role", "device", "expires_in", "fz",
]  # fmt: skip
RAW_BODIES = [
    b"", b"null", b"NaN", b"1e400", b"-1E+999", b"[" * 5000, b'{"a":' * 200, b'"\xff"',
    b'"\\ud800"', b"1" * 400, b'{"name": "fz"}', b'{"name": "fz", "recreate": true}',
    b'{"client_id": "c", "changes": [{"n": 1, "op": "add", "key": "k9", "value": 1e400}]}',
    b'{"client_id": "c", "changes": [{"n": 1, "op": "add", "key": "k9", "value": '
    + b"1" * 30 + b"}]}",
    b'{"cursors": {"fz": null}, "wait": 0}', b'{"cursors": {"fz": null}, "wait": 1e400}',
    b"\xef\xbb\xbf{}", b"{} {}", b'{"a":1,"a":2}', b"\x00",
]  # fmt: skip

json_leaf = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=6) | st.sampled_from(["fz", "k1", "add", "delete", "c-1", "reader"])
)  # fmt: skip
json_body = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=3), inner, max_size=5),
    max_leaves=12,
)


@st.composite
def raw_requests(draw: st.DrawFn, cursor: str) -> tuple[str, bytes]:
    """One HTTP/1.1 request as bytes, and the method it was sent with."""
    method, template = draw(st.sampled_from(ENDPOINTS))
    if draw(st.integers(0, 3)) == 0:
        method = draw(st.sampled_from(METHODS))
    path = template
    for hole, choices in (("{s}", SEGMENTS), ("{k}", KEYS), ("{u}", SEGMENTS)):
        while hole in path:
            path = path.replace(hole, draw(st.sampled_from(choices)), 1)
    if draw(st.integers(0, 9)) == 0:
        path += draw(st.sampled_from(["/", "/x", "//", "/%2F", "?", "#f"]))
    pairs = [] if draw(st.booleans()) else draw(
        st.lists(st.tuples(st.sampled_from(QUERY_NAMES), st.sampled_from(QUERY_VALUES)), max_size=3)
    )
    query = "&".join(f"{n}={v}".replace("{cursor}", cursor) for n, v in pairs)
    target = (path + ("?" + query if query else "")).encode()

    if method in ("GET", "HEAD", "DELETE") and draw(st.integers(0, 3)):
        body = b""
    elif draw(st.integers(0, 2)) == 0:
        body = draw(st.sampled_from(RAW_BODIES) | st.binary(max_size=40))
    else:
        body = json.dumps(draw(json_body)).encode()
    headers = [b"Host: fuzz"]
    content_type = draw(
        st.sampled_from(
            ["application/json"] * 12
            + [None, "text/plain", "application/json; charset=utf-8", "APPLICATION/JSON", "", "application/jsonx"]
        )
    )
    if content_type is not None:
        headers.append(f"Content-Type: {content_type}".encode())
    framing = draw(
        st.sampled_from(
            ["length"] * 16 + ["none", "chunked", "both", "twice", "not a number", "short", "huge"]
        )
    )
    if framing in ("length", "both", "twice"):
        headers.append(f"Content-Length: {len(body)}".encode())
    if framing == "twice":
        headers.append(f"Content-Length: {len(body)}".encode())
    if framing == "not a number":
        headers.append(b"Content-Length: 1x")
    if framing == "short":
        headers.append(f"Content-Length: {len(body) // 2}".encode())
    if framing == "huge":
        headers.append(f"Content-Length: {9 * 1024 * 1024}".encode())
        body = b""
    if framing in ("chunked", "both"):
        headers.append(b"Transfer-Encoding: chunked")
        body = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    headers += [] if draw(st.integers(0, 4)) else draw(
        st.lists(
            st.sampled_from(
                [
                    b"Authorization: Bearer x",
                    b"Authorization: Basic YTpi",
                    b"Authorization: Bearer " + b"a" * 3000,
                    b"Accept: */*",
                    b"X-Odd: \xff\xfe",
                    b"X-\x01: y",
                    b"Expect: 100-continue",
                    b"Content-Encoding: gzip",
                    b"Transfer-Encoding: identity",
                    b"Idsync-Backoff: 9",
                ]
            ),
            max_size=2,
        )
    )
    head = method.encode() + b" " + target + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n"
    return method, head + body


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` on a new connection; the first answer's (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        # The server may answer (413, 400) and close before taking the whole body.
        with contextlib.suppress(OSError):
            sock.sendall(request)
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 1"):
                break
            data = body  # an interim answer (100 Continue): the final one follows
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), f"no answer to {request[:300]!r}: {data[:300]!r}"
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = int(headers.get("content-length", "0"))
        if request.startswith(b"HEAD ") and headers.get("connection") != "close":
            # Nothing follows the head of an answer to HEAD but the next answer
            # (to bytes after a short body, read as a second request).
            return status, headers, b"" if body.startswith(b"HTTP/1.1 ") else body
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body[:length]


def exchange_body(headers: dict[str, str], body: bytes) -> bytes:
    """The body already read after the head, cut to Content-Length."""
    return body[: int(headers.get("content-length", "0"))]


@pytest.fixture(params=["sqlite", "postgresql"])
def fuzz_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own (a SQLite file under tmp_path, or a fresh PostgreSQL database)
    with a store ``fz`` of a few records."""
    database = (
        str(tmp_path / "http-fuzz.sqlite3")
        if request.param == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    with ServerProcess(database) as proc:
        http = requests.Session()
        http.trust_env = False
        assert http.post(f"{proc.url}/v1/stores", json={"name": "fz"}).status_code == 201
        changes = [
            {"n": i, "op": "add", "key": f"k{i}", "index": ["t:a"], "value": {"i": i}}
            for i in range(1, 6)
        ]
        body = {"client_id": "seed", "changes": changes}
        assert http.post(f"{proc.url}/v1/stores/fz/push", json=body).status_code == 200
        yield proc


def test_no_request_gets_a_5xx_or_an_answer_that_is_not_json(
    fuzz_server: ServerProcess, full: bool
) -> None:
    http = requests.Session()
    http.trust_env = False
    url = fuzz_server.url

    def state() -> list[tuple[Any, ...]]:
        stores = http.get(f"{url}/v1/stores", timeout=30).json()["stores"]
        return [(s["name"], s["epoch"], s["head_seq"], s["live_records"]) for s in stores]

    cursor = http.get(f"{url}/v1/stores/fz/changes", params={"limit": 2}, timeout=30).json()[
        "cursor"
    ]
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    refused_then_changed: list[bytes] = []

    @settings(
        max_examples=10_000 if full else 300,
        deadline=None,
        derandomize=not full,
        database=None,
        phases=list(Phase) if full else [Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(raw_requests(cursor))
    # Found here on PostgreSQL: a NUL in a token id made the look-up fail (503).
    @example(("DELETE", b"DELETE /v1/admin/tokens/%00 HTTP/1.1\r\nHost: fuzz\r\n\r\n"))
    # Found here: a non-chunked Transfer-Encoding was read "until the end", unanswered.
    @example(
        (
            "PUT",
            b"PUT /v1/stores/fz/access/fz HTTP/1.1\r\nHost: fuzz\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: identity\r\n\r\n",
        )
    )
    # Found here: the garbage after a short body was answered 400 before the DELETE.
    @example(("HEAD", b"HEAD /v1/stores/fz/ HTTP/1.1\r\nHost: fuzz\r\nContent-Length: 2\r\n\r\nnull"))
    @example(
        (
            "DELETE",
            b"DELETE /v1/stores/fz HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json"
            b'\r\nContent-Length: 3\r\n\r\n{"a": []}',
        )
    )
    def one_request(case: tuple[str, bytes]) -> None:
        method, request = case
        before = state()
        status, headers, body = exchange(fuzz_server.port, request)
        statuses[status] += 1
        assert status < 500, f"{status} for {request[:300]!r}: {body[:300]!r}"
        refused_by_parser = status == 400 and headers.get("connection") == "close"
        if method == "HEAD" and not refused_by_parser:
            assert body == b"" and "content-length" in headers, (request, body)
            return
        if method == "HEAD":  # not parsed as a HEAD at all: the envelope is sent
            body = exchange_body(headers, body)
        assert headers.get("content-type", "").startswith("application/json"), body[:200]
        answer = json.loads(body)
        if status >= 400:
            assert set(answer) == {"error"}, answer
            error = answer["error"]
            assert set(error) == {"code", "message", "retryable", "details"}, error
            assert ERRORS[error["code"]].status == status, (status, error)
            codes[error["code"]] += 1
            changed = state() != before
            if changed:
                refused_then_changed.append(request)
            assert not changed, f"a refused request changed a store: {request!r}"
        else:
            assert 200 <= status < 300 and isinstance(answer, dict), answer
            if not any(name == "fz" for name, *_ in state()):  # dropped: bring it back
                http.post(f"{url}/v1/stores", json={"name": "fz", "recreate": True}, timeout=30)

    started = time.monotonic()
    try:
        one_request()
    finally:
        record(
            CampaignFigures(
                "fuzz: raw HTTP",
                backend="sqlite" if isinstance(fuzz_server.database, Path) else "postgresql",
                injected=sum(statuses.values()),
                unexpected_5xx=sum(n for s, n in statuses.items() if s >= 500),
                seconds=time.monotonic() - started,
                extra={
                    "2xx": sum(n for s, n in statuses.items() if s < 300),
                    "4xx": sum(n for s, n in statuses.items() if 400 <= s < 500),
                    "refused_but_changed": len(refused_then_changed),
                },
            )
        )
    print("raw HTTP fuzz: statuses", dict(sorted(statuses.items())), "codes", dict(codes))


# -- found by this fuzzing on PostgreSQL ----------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each backend (PostgreSQL is skipped where it is not installed)."""
    if request.param == "sqlite":
        return str(tmp_path / "server.sqlite3")
    return str(request.getfixturevalue("pg_url"))


def test_a_token_id_holding_nul_is_not_found_not_a_database_failure(any_database: str) -> None:
    # PostgreSQL cannot look up text holding NUL: the look-up failed and the
    # answer was 503 storage_unavailable (retryable) for a plain bad input.
    with ServerProcess(any_database) as server:
        for target in (b"/v1/admin/tokens/%00", b"/v1/admin/tokens/a%01b"):
            request = b"DELETE " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n"
            status, _, body = exchange(server.port, request)
            assert (status, json.loads(body)["error"]["code"]) == (404, "token_not_found"), body


def test_a_device_label_holding_nul_is_refused_before_it_is_stored(any_database: str) -> None:
    # The same on the way in: the insert failed on PostgreSQL (storage failure).
    from idsync_server_ref.accounts import Accounts
    from idsync_server_ref.storage.open import open_storage

    storage = open_storage(any_database)
    try:
        accounts = Accounts(storage.accounts())
        accounts.add_user("bob")
        for device in ("a\x00b", "tab\there", "\x9f"):
            with pytest.raises(ValueError, match="control character"):
                accounts.create_token("bob", device)
        assert storage.accounts().list_tokens("bob") == []
        assert accounts.create_token("bob", "laptop · 2").info.device == "laptop · 2"
    finally:
        storage.close()


def test_pipelined_requests_are_answered_in_order_even_when_a_later_one_is_garbage(
    tmp_path: Path,
) -> None:
    # Found by this fuzzing: a body shorter than the bytes sent leaves the rest
    # to be read as a second request; when that one did not parse, its 400 went
    # out at once and the connection closed, before the first request's answer:
    # the client read "400" for a DELETE that went through.
    with ServerProcess(tmp_path / "server.sqlite3") as server:
        http = requests.Session()
        http.trust_env = False
        assert http.post(f"{server.url}/v1/stores", json={"name": "s"}).status_code == 201
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
            sock.sendall(b"DELETE /v1/stores/s HTTP/1.1\r\nHost: t\r\n\r\nNOT HTTP\r\n\r\n")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        first, _, rest = received.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200"), received
        assert b'{"dropped":"s"}' in rest and b"HTTP/1.1 400" in rest, received
        assert http.get(f"{server.url}/v1/stores/s").status_code == 410


def test_a_body_framed_by_a_transfer_coding_other_than_chunked_is_refused_at_once(
    tmp_path: Path,
) -> None:
    # Found by this fuzzing: with "Transfer-Encoding: identity" (or gzip) the
    # body's length cannot be known; the server read "until the end" and the
    # client waited, unanswered, until the body timeout cut it off.
    with ServerProcess(tmp_path / "server.sqlite3") as server:
        for coding in (b"identity", b"gzip", b"chunked, gzip"):
            request = (
                b"PUT /v1/stores/s/access/bob HTTP/1.1\r\nHost: t\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
            )
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(request)
                answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 400"), answer
            assert b'"invalid_request"' in answer and b"Transfer-Encoding" in answer, answer
