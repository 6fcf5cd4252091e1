"""POST /v1/wait with ``"pages": true``: the changed stores' first pages ride in the answer."""

from __future__ import annotations

from typing import Any

import pytest

from idsync_client.wire import MalformedAnswer, PullAnswer, WaitAnswer

from .conftest import Api, add


def _cursor_now(api: Api, store: str) -> str:
    return api.pull_all(store)[1]


def test_an_old_style_body_gets_the_old_answer(api: Api, store: str) -> None:
    start = _cursor_now(api, store)
    api.push(store, "c1", [add(1)])
    response = api.call("POST", "/v1/wait", {"cursors": {store: start}, "wait": 0})
    assert response.status_code == 200, response.text
    assert response.json() == {"changed": [store], "errors": {}}


def test_pages_carry_the_changes_a_pull_would_give(api: Api, store: str) -> None:
    start = _cursor_now(api, store)
    api.push(store, "c1", [add(1, "k1"), add(2, "k2")])
    pulled = api.call("GET", f"/v1/stores/{store}/changes", params={"cursor": start}).json()
    body = {"cursors": {store: start}, "wait": 0, "pages": True}
    answer = api.call("POST", "/v1/wait", body).json()
    assert answer["changed"] == [store]
    assert answer["pages"] == {store: pulled}
    assert [c["key"] for c in answer["pages"][store]["changes"]] == ["k1", "k2"]


def test_a_limit_cuts_the_page_and_says_more(api: Api, store: str) -> None:
    start = _cursor_now(api, store)
    api.push(store, "c1", [add(i) for i in range(1, 4)])
    body = {"cursors": {store: start}, "wait": 0, "pages": True, "limit": 2}
    page = api.call("POST", "/v1/wait", body).json()["pages"][store]
    assert len(page["changes"]) == 2 and page["more"] is True
    rest = api.call("GET", f"/v1/stores/{store}/changes", params={"cursor": page["cursor"]})
    assert [c["value"]["n"] for c in rest.json()["changes"]] == [3]


def test_unchanged_missing_and_cursorless_stores_get_no_page(api: Api, store: str) -> None:
    start = _cursor_now(api, store)
    api.push(store, "c1", [add(1)])
    body = {
        "cursors": {store: start, "no-such-store": None},
        "wait": 0,
        "pages": True,
    }
    answer = api.call("POST", "/v1/wait", body).json()
    assert answer["errors"]["no-such-store"]["code"] == "store_not_found"
    assert set(answer["pages"]) == {store}
    # From the start (no cursor): changed, but no page (a first sync may load a snapshot).
    body = {"cursors": {store: None}, "wait": 0, "pages": True}
    answer = api.call("POST", "/v1/wait", body).json()
    assert answer == {"changed": [store], "errors": {}, "pages": {}}
    # Caught up: not changed, no page.
    head = _cursor_now(api, store)
    answer = api.call("POST", "/v1/wait", {"cursors": {store: head}, "pages": True}).json()
    assert answer == {"changed": [], "errors": {}, "pages": {}}


def test_a_waiting_request_answers_the_page_of_the_change_that_woke_it(
    api: Api, store: str
) -> None:
    import threading

    head = _cursor_now(api, store)
    answers: list[Any] = []
    body = {"cursors": {store: head}, "wait": 10, "pages": True}
    waiter = threading.Thread(target=lambda: answers.append(api.call("POST", "/v1/wait", body)))
    waiter.start()
    try:
        # Push until the waiter is answered (it may not have been parked yet).
        for n in range(1, 50):
            api.push(store, "c1", [add(n, f"k{n}")])
            waiter.join(0.2)
            if not waiter.is_alive():
                break
    finally:
        waiter.join(15)
    answer = answers[0].json()
    assert answer["changed"] == [store]
    assert answer["pages"][store]["changes"][0]["key"] == "k1"


def test_big_pages_are_cut_by_bytes_and_later_stores_get_none(api: Api) -> None:
    names = []
    for i in range(8):
        name = api.create_store(f"bytes-{i}-{id(names)}")["name"]
        names.append(name)
    starts = {name: _cursor_now(api, name) for name in names}
    big = "x" * 60_000
    for name in names:  # ~300 KB each: over one store's bound; eight are over the answer's
        api.push(name, "c1", [add(n, value={"b": big}) for n in range(1, 6)])
    answer = api.call("POST", "/v1/wait", {"cursors": starts, "pages": True}).json()
    assert sorted(answer["changed"]) == sorted(names)
    pages = answer["pages"]
    assert all(page["more"] for page in pages.values()), "each page cut by the store bound"
    assert 0 < len(pages) < len(names), "the answer's bound leaves later stores without a page"
    assert len(str(answer)) < 2 * 1024 * 1024


@pytest.mark.parametrize(
    "extra",
    [
        {"pages": "yes"},
        {"pages": 1},
        {"pages": None},
        {"limit": 5},  # a limit without pages
        {"pages": True, "limit": 0},
        {"pages": True, "limit": 10**9},
        {"pages": True, "limit": True},
        {"pages": True, "limit": 2.5},
        {"pages": True, "limit": "5"},
        {"pages": True, "since": 3},  # an unknown field
    ],
)
def test_a_wrong_body_is_refused_and_changes_nothing(api: Api, store: str, extra: dict) -> None:
    start = _cursor_now(api, store)
    api.push(store, "c1", [add(1)])
    before = api.call("GET", f"/v1/stores/{store}").json()
    response = api.call("POST", "/v1/wait", {"cursors": {store: start}, "wait": 0, **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert api.call("GET", f"/v1/stores/{store}").json() == before


def test_the_answer_parses_with_its_pages() -> None:
    from idsync_client.protocol import Cursor

    page = PullAnswer.to_json(['{"seq":1,"op":"delete","key":"k"}'], Cursor.decode("e0dfce38364e469d.4.68f8349c07f746d7"), True)
    text = WaitAnswer.to_json({"b", "a"}, {}, {"a": page})
    import json

    answer = WaitAnswer.parse(json.loads(text))
    assert answer.changed == ["a", "b"]
    assert answer.pages["a"].changes == [{"seq": 1, "op": "delete", "key": "k"}]
    assert answer.pages["a"].more is True
    assert WaitAnswer.parse(json.loads(WaitAnswer.to_json(["a"], {}))).pages == {}


@pytest.mark.parametrize(
    "answer",
    [
        {"changed": [], "errors": {}, "pages": {"a": {"changes": [], "cursor": "x", "more": 0}}},
        {"changed": ["a"], "errors": {}, "pages": []},
        {"changed": ["a"], "errors": {}, "pages": {"a": {"changes": []}}},
    ],
)
def test_a_malformed_page_is_refused(answer: dict) -> None:
    with pytest.raises(MalformedAnswer):
        WaitAnswer.parse(answer)
