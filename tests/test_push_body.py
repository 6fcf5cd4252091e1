"""The server's fast reading of push bodies refuses exactly what the plain rules refuse.

``idsync_server_ref.push_body`` skips the scalar-by-scalar walk of
``protocol.parse_change`` when orjson alone read the body, and makes each
change's hash from the value already decoded. These properties hold the two
to the same answers on generated bodies: NaN-like tokens, lone surrogates,
deep nesting, integers past 64 bits, numbers past a double, long fractions,
repeated member names.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idsync_client import jsoncodec
from idsync_client.protocol import Change, Limits, ProtocolViolation, parse_change
from idsync_server_ref.push_body import parse_changes, value_depth_within
from idsync_server_ref.storage.equality import HashedChange, change_hash

from .conftest import Api, add

LIMITS = Limits(
    max_depth=5, max_value_bytes=300, max_key_length=12, max_index_items=3, max_index_item_length=4
)
SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- generated JSON texts ----------------------------------------------------------------

_NUMBER_TEXTS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(17, 30).map(lambda k: "9" * k),
    st.integers(17, 30).map(lambda k: "-1" + "0" * k),
    st.integers(1, 40).map(lambda k: "0." + "0123456789" * (k // 10) + "1" * (k % 10)),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.sampled_from(
        ["1e400", "-1E+999", "1e-400", "12345678901234567890e2", "1.5e308", "-0", "-0.0"]
    ),
    st.integers(300, 320).map(lambda k: "9" * k),
)
_BAD_TOKENS = st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "[1,]", "01", "'x'"])
_STRING_TEXTS = st.one_of(
    st.text(max_size=12).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.text(max_size=12).map(json.dumps),
    st.sampled_from(
        [
            '"\\ud800"',
            '"a\\udc00"',
            '"\\ud83d\\ude00"',
            '"[[[[[[[["',
            '"\\"]]{{"',
            '"\x01"',
            '"\\u0000"',
            '"\\\\"',
        ]
    ),
)
_SCALAR_TEXTS = st.one_of(
    st.sampled_from(["null", "true", "false"]), _NUMBER_TEXTS, _STRING_TEXTS
)
_MEMBER_NAMES = st.sampled_from(['"a"', '"b"', '"A"', '"[{"', '"\\u0061"'])


def _deep(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.integers(0, 9), st.sampled_from("[{"), inner).map(
        lambda t: ("[" * t[0] + t[2] + "]" * t[0])
        if t[1] == "["
        else ('{"d":' * t[0] + t[2] + "}" * t[0])
    )


_VALUE_TEXTS = st.recursive(
    st.one_of(_SCALAR_TEXTS, st.just("[]"), st.just("{}")),
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(_MEMBER_NAMES, children), max_size=4).map(
            lambda ms: "{" + ",".join(f"{k}:{v}" for k, v in ms) + "}"
        ),
        _deep(children),
    ),
    max_leaves=12,
)
_KEY_TEXTS = st.one_of(
    st.sampled_from(['"k1"', '"k2"', '""', '"\\u0007"', '"\\ud800"', "1", "null"]),
    st.text(max_size=14).map(json.dumps),
)
_INDEX_TEXTS = st.one_of(
    st.lists(
        st.sampled_from(['"b"', '"a"', '"a"', '""', '"x\\n"', "7", '"\\udc00"', '"abcde"']),
        max_size=5,
    ).map(
        lambda xs: "[" + ",".join(xs) + "]"
    ),
    st.sampled_from(['"a"', "null", "{}"]),
)
_N_TEXTS = st.one_of(
    st.integers(1, 5).map(str),
    st.sampled_from(["0", "-1", "true", "1.0", '"1"', "9223372036854775807", "9223372036854775808"]),
)


@st.composite
def _change_texts(draw: st.DrawFn) -> str:
    fields = {"n": draw(_N_TEXTS), "op": draw(st.sampled_from(['"add"', '"add"', '"delete"', '"x"']))}
    fields["key"] = draw(_KEY_TEXTS)
    if draw(st.booleans()):
        fields["index"] = draw(_INDEX_TEXTS)
    if draw(st.integers(0, 9)):
        fields["value"] = draw(st.one_of(_VALUE_TEXTS, _BAD_TOKENS))
    if not draw(st.integers(0, 15)):
        fields["extra"] = "1"
    order = draw(st.permutations(list(fields)))
    return "{" + ",".join(f'"{name}":{fields[name]}' for name in order) + "}"


_CHANGES_TEXTS = st.one_of(
    st.lists(_change_texts(), min_size=1, max_size=4).map(lambda cs: "[" + ",".join(cs) + "]"),
    st.sampled_from(['[1]', '["x"]', "[[]]"]),
)

# -- the two readers ---------------------------------------------------------------------


def _plain(text: bytes) -> Any:
    """What the plain rules answer: 'malformed', an error, or the changes with their hashes."""
    try:
        body = jsoncodec.loads(text)
    except jsoncodec.JSONDecodeError:
        return "malformed"
    try:
        changes = [parse_change(raw, LIMITS) for raw in body]
    except ProtocolViolation as exc:
        return ("refused", exc.code, exc.message, exc.details)
    return [(_fields(c), change_hash(c), jsoncodec.dumps(list(c.index))) for c in changes]


def _fast(text: bytes) -> Any:
    try:
        body, checked = jsoncodec.loads_checked(text)
    except jsoncodec.JSONDecodeError:
        return "malformed"
    if not isinstance(body, list):
        return "not a list"
    try:
        changes = parse_changes(body, LIMITS, checked)
    except ProtocolViolation as exc:
        return ("refused", exc.code, exc.message, exc.details)
    assert all(type(c) is HashedChange for c in changes)
    return [(_fields(c), c.body_hash, c.index_json) for c in changes]  # type: ignore[attr-defined]


def _fields(change: Change) -> tuple[Any, ...]:
    return (change.n, change.op, change.key, change.index, change.value_json)


@SETTINGS
@given(_CHANGES_TEXTS)
def test_fast_reading_answers_as_the_plain_rules(text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    assert _fast(data) == _plain(data)


@SETTINGS
@given(_VALUE_TEXTS)
def test_a_value_is_accepted_or_refused_alike(value_text: str) -> None:
    """Every generated value as the only change of a body, so none hides behind another."""
    text = f'[{{"n":1,"op":"add","key":"k","index":["b","a"],"value":{value_text}}}]'
    data = text.encode("utf-8", "surrogatepass")
    assert _fast(data) == _plain(data)


@SETTINGS
@given(
    st.one_of(st.just('"k"'), _KEY_TEXTS),
    _INDEX_TEXTS,
    st.sampled_from(["1", "1e400", "[18446744073709551616]"]),
)
def test_keys_and_index_items_are_accepted_or_refused_alike(
    key_text: str, index_text: str, value_text: str
) -> None:
    """Read by orjson alone, or by the standard library (a far number beside them)."""
    text = f'[{{"n":1,"op":"add","key":{key_text},"index":{index_text},"value":{value_text}}}]'
    data = text.encode("utf-8", "surrogatepass")
    assert _fast(data) == _plain(data)


def test_a_repeated_member_name_keeps_its_last_value() -> None:
    """Both readers read a name given twice as given once, with the last value."""
    text = b'[{"n":1,"op":"add","key":"k","value":{"a":1,"b":[2],"a":{"c":3}}}]'
    (fast,) = _fast(text)
    assert fast == _plain(text)[0]
    assert fast[0][4] == '{"a":{"c":3},"b":[2]}'
    once = b'[{"n":1,"op":"add","key":"k","value":{"b":[2],"a":{"c":3}}}]'
    assert _fast(once)[0][1] == fast[1]  # the same change: a replay is a duplicate


@pytest.mark.parametrize(
    "text",
    [
        '[{"n":1,"op":"add","key":"k","value":[9223372036854775808]}]',
        '[{"n":1,"op":"add","key":"k","value":[-9223372036854775809]}]',
        '[{"n":1,"op":"add","key":"k","value":{"x":1e400}}]',
        '[{"n":1,"op":"add","key":"k","value":[[[[[[1]]]]]]}]',
        '[{"n":1,"op":"add","key":"k","value":"' + "é" * 200 + '"}]',
    ],
)
def test_values_past_a_limit_are_refused_on_both_paths(text: str) -> None:
    refused = _fast(text.encode())
    assert refused[:2] == ("refused", "invalid_change") and refused[3] == {"n": 1}
    assert refused == _plain(text.encode())


# -- the pieces the fast path stands on -----------------------------------------------------


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


_VALUES = st.recursive(
    st.one_of(st.none(), st.integers(-5, 5), st.text(alphabet='[]{}"\\ab', max_size=6)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text("[{\"\\", max_size=3), children)
    ),
    max_leaves=40,
)


@SETTINGS
@given(_VALUES, st.integers(1, 8))
def test_depth_read_off_the_text_is_the_depth_of_the_value(value: Any, limit: int) -> None:
    text = jsoncodec.dumps(value)
    assert value_depth_within(text, limit) == (_depth(value) <= limit)


_NUMBERS_IN_TEXT = st.lists(
    st.one_of(_NUMBER_TEXTS, st.just('"12345678901234567890"')), min_size=1, max_size=6
).map(lambda xs: "[" + ",".join(xs) + "]")


@SETTINGS
@given(_NUMBERS_IN_TEXT)
def test_numbers_decode_exactly_as_the_standard_library_reads_them(text: str) -> None:
    """A long integer is never read as a float; a long fraction is the same float."""
    expected = json.loads(text)
    for data in (text, text.encode()):
        value, checked = jsoncodec.loads_checked(data)
        assert json.dumps(value) == json.dumps(expected)
        assert [type(v) for v in value] == [type(v) for v in expected]
        assert json.dumps(jsoncodec.loads(data)) == json.dumps(expected)
        if checked:  # nothing is left for validation to find
            assert all(
                type(v) is not int or -(2**63) <= v < 2**63 for v in value
            ) and all(type(v) is not float or abs(v) != float("inf") for v in value)


def test_a_long_fraction_is_read_by_orjson_alone() -> None:
    """A float with a long run of digits needs no second parse (it used to take one)."""
    value, checked = jsoncodec.loads_checked(b"[0.01234567890123456789012, -1.5e-1234567890123456789]")
    assert checked and value == [0.01234567890123456789012, -0.0]


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"client_id":"c1","changes":[{"n":1,"op":"add","key":"k","value":'
        + b"[" * 60
        + b"]" * 60
        + b"}]}",
        b"{not json",
    ],
)
def test_a_push_to_a_missing_store_is_answered_before_its_body_is_checked(
    api: Api, body: bytes
) -> None:
    store = f"missing-{uuid.uuid4().hex[:8]}"
    response = api.call(
        "POST", f"/v1/stores/{store}/push", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "store_not_found"
    # The connection serves the next request as usual.
    assert api.call("GET", "/v1/health").status_code == 200


def test_a_store_dropped_after_a_push_is_found_missing(api: Api) -> None:
    store = f"dropped-{uuid.uuid4().hex[:8]}"
    api.create_store(store)
    api.push(store, "c1", [add(1)])
    assert api.call("DELETE", f"/v1/stores/{store}").status_code == 200
    response = api.call(
        "POST", f"/v1/stores/{store}/push", {"client_id": "c1", "changes": [add(2)]}
    )
    assert response.status_code == 410, response.text
    assert response.json()["error"]["code"] == "store_dropped"


def test_tags_drawn_in_bulk_are_63_bit_and_distinct() -> None:
    from idsync_server_ref.storage.push_rules import Tags

    tags = Tags()
    drawn = [tags.next() for _ in range(1000)]  # several draws from the OS
    assert all(0 <= t < 2**63 for t in drawn)
    assert len(set(drawn)) == len(drawn)
    assert max(drawn) >= 2**62  # the top bit of 63 is used
