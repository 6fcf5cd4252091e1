"""Numbers beyond what a value may hold are valid JSON: the server refuses
the change (422 invalid_change with details.n), never the body as malformed."""

from __future__ import annotations

import importlib
import json
import math
import sys
import uuid

import pytest

from idsync_client import jsoncodec

from .conftest import Api

HUGE = "9" * 310
FAR_BEYOND = "9" * 5000  # over Python's digit limit for int()


@pytest.fixture(params=["orjson", "stdlib"])
def codec(request, monkeypatch):
    if request.param == "stdlib":
        monkeypatch.setitem(sys.modules, "orjson", None)
    module = importlib.reload(jsoncodec)
    yield module
    monkeypatch.undo()
    importlib.reload(jsoncodec)


@pytest.mark.parametrize("text", [HUGE, f"-{HUGE}", f'{{"a":[{HUGE}]}}'])
def test_integers_of_any_length_decode_exactly(codec, text: str) -> None:
    value = codec.loads(text)
    assert value == json.loads(text)  # exact, as Python's int reads it
    assert codec.loads(text.encode()) == value


@pytest.mark.parametrize("text", ["1e400", "[-1e400]", f"[{FAR_BEYOND}]", f"[-{FAR_BEYOND}]"])
def test_numbers_beyond_a_double_decode_as_infinities(codec, text: str) -> None:
    value = codec.loads(text)
    number = value[0] if isinstance(value, list) else value
    assert math.isinf(number)


@pytest.mark.parametrize("text", ["[1e400", "[NaN, 1e400]", f"[{HUGE},]"])
def test_malformed_texts_with_far_numbers_are_still_malformed(codec, text: str) -> None:
    with pytest.raises(codec.JSONDecodeError):
        codec.loads(text)


@pytest.mark.parametrize("number", [HUGE, f"-{HUGE}", FAR_BEYOND, "1e400", "-1e400", "1E+999"])
def test_server_refuses_the_change_not_the_body(api: Api, number: str) -> None:
    store = f"r{uuid.uuid4().hex[:12]}"
    api.create_store(store)
    body = (
        '{"client_id":"c1","changes":['
        '{"n":1,"op":"add","key":"ok","value":1},'
        f'{{"n":2,"op":"add","key":"big","value":{{"x":[{number}]}}}}]}}'
    )
    response = api.call(
        "POST",
        f"/v1/stores/{store}/push",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_change" and error["details"] == {"n": 2}


@pytest.mark.parametrize("text", ["1e400", "[-1e400]", f"[{FAR_BEYOND}]", '{"v":1E+999}'])
def test_finite_decoding_refuses_numbers_beyond_a_double(codec, text: str) -> None:
    """For a server's answers (no validation follows): refused, never an infinity."""
    with pytest.raises(codec.JSONDecodeError):
        codec.loads(text, finite=True)
    assert codec.loads(f"[{HUGE}]", finite=True) == [int(HUGE)]  # exact, as always
