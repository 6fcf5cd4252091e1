"""The server keeps its promises at the edges: big integers, long digit runs, bad prefixes."""

from __future__ import annotations

import importlib
import sys

import pytest

from idsync_client import jsoncodec, protocol
from idsync_client.protocol import INT64_MAX, INT64_MIN, Limits, ProtocolViolation

from .conftest import Api

OUT_OF_RANGE = [str(2**63), str(2**64), str(10**30), str(INT64_MIN - 1), str(-(10**30))]


def _push_raw(api: Api, store: str, changes_text: str):
    body = '{"client_id":"raw","changes":[' + changes_text + "]}"
    return api.session.post(
        f"{api.url}/v1/stores/{store}/push",
        data=body.encode("utf-8"),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


@pytest.mark.parametrize("number", OUT_OF_RANGE)
@pytest.mark.parametrize("where", ["{}", '{{"a":[1,{{"b":{}}}]}}', "[0,{}]"])
def test_integers_outside_64_bits_are_refused_over_http(
    api: Api, store: str, number: str, where: str
) -> None:
    value = where.format(number)
    ok = '{"n":1,"op":"add","key":"fine","value":1}'
    response = _push_raw(api, store, ok + ',{"n":2,"op":"add","key":"big","value":' + value + "}")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_change" and error["details"] == {"n": 2}
    assert "64 bits" in error["message"]
    # Nothing of the batch was written.
    assert api.call("GET", f"/v1/stores/{store}").json()["head_seq"] == 0


def test_64_bit_limits_and_long_digit_strings_round_trip_exactly(api: Api, store: str) -> None:
    value_text = (
        f'{{"max":{INT64_MAX},"min":{INT64_MIN},"s":"12345678901234567890123",'
        '"t":"-99999999999999999999999999.5","f":0.1000000000000000055511151231257827}'
    )
    response = _push_raw(api, store, '{"n":1,"op":"add","key":"k","value":' + value_text + "}")
    assert response.status_code == 200, response.text
    raw = api.call("GET", f"/v1/stores/{store}/records/k").text
    value = jsoncodec.loads(raw)["value"]
    assert value["max"] == INT64_MAX and type(value["max"]) is int
    assert value["min"] == INT64_MIN and type(value["min"]) is int
    assert value["s"] == "12345678901234567890123"
    assert value["t"] == "-99999999999999999999999999.5"
    assert value["f"] == 0.1
    assert f'"max":{INT64_MAX},' in raw and '"s":"12345678901234567890123"' in raw


@pytest.fixture(params=["orjson", "stdlib"])
def codec(request, monkeypatch):
    """The JSON codec as installed, or its standard-library fallback."""
    if request.param == "stdlib":
        monkeypatch.setitem(sys.modules, "orjson", None)  # import orjson now fails
    module = importlib.reload(jsoncodec)
    assert (module._orjson is None) == (request.param == "stdlib")
    yield module
    monkeypatch.undo()
    importlib.reload(jsoncodec)


@pytest.mark.parametrize("number", OUT_OF_RANGE)
def test_integers_outside_64_bits_are_refused_by_either_codec(codec, number: str) -> None:
    body = codec.loads('{"n":7,"op":"add","key":"k","value":{"a":[' + number + "]}}")
    assert body["value"]["a"][0] == int(number)  # decoded exactly, never a float
    with pytest.raises(ProtocolViolation) as caught:
        protocol.parse_change(body, Limits())
    assert caught.value.code == "invalid_change" and caught.value.details == {"n": 7}


def test_long_digit_strings_keep_their_text_with_either_codec(codec) -> None:
    text = '{"n":1,"op":"add","key":"k","value":["12345678901234567890123",' + str(INT64_MAX) + "]}"
    change = protocol.parse_change(codec.loads(text), Limits())
    assert change.value_json == '["12345678901234567890123",' + str(INT64_MAX) + "]"


@pytest.mark.parametrize(
    "item",
    ["", "a\x00b", "x" * (Limits().max_index_item_length + 1), "\x1f", "tag\x7f"],
    ids=["empty", "nul", "too-long", "control", "del"],
)
@pytest.mark.parametrize("prefix", ["true", "false"])
def test_bad_index_query_is_invalid_request(api: Api, store: str, item: str, prefix: str) -> None:
    response = api.call(
        "GET", f"/v1/stores/{store}/records", params={"index": item, "prefix": prefix}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
