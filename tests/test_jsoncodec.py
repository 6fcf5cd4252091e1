"""Both JSON back ends (orjson and the standard library) behave the same."""

from __future__ import annotations

import importlib
import json
import sys

import pytest

from idsync_client import jsoncodec


@pytest.fixture(params=["orjson", "stdlib"])
def codec(request, monkeypatch):
    if request.param == "stdlib":
        monkeypatch.setitem(sys.modules, "orjson", None)  # import orjson now fails
    module = importlib.reload(jsoncodec)
    yield module
    monkeypatch.undo()
    importlib.reload(jsoncodec)


def test_round_trip_and_compact_output(codec) -> None:
    value = {"b": [1, 2.5, None, True], "a": 'é 😀 " \\'}
    text = codec.dumps(value)
    assert text == '{"b":[1,2.5,null,true],"a":"é 😀 \\" \\\\"}'
    assert codec.loads(text) == value and codec.loads(text.encode()) == value


@pytest.mark.parametrize("bad", ["{", "NaN", "[Infinity]", '"\\ud800"x', b"\xff"])
def test_invalid_json_is_refused(codec, bad) -> None:
    with pytest.raises(codec.JSONDecodeError):
        codec.loads(bad)


def test_a_long_digit_run_anywhere_in_a_large_text_keeps_integers_exact() -> None:
    # The run is looked for over the whole text (a page of thousands of
    # changes), in bytes and in str, wherever it sits.
    filler = [{"k": "x" * 50, "n": 123456789012345678} for _ in range(2000)]
    for big in (2**64, -(2**64) - 1, 10**30):
        value = [*filler, {"big": big}]
        text = json.dumps(value, separators=(",", ":"))
        assert jsoncodec.loads(text)[-1]["big"] == big
        assert jsoncodec.loads(text.encode())[-1]["big"] == big
    assert jsoncodec.loads('"\\ud800 1234567890123456789"') == "\ud800 1234567890123456789"
