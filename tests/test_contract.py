"""The message contract: one validator, and a published JSON Schema that agrees with it.

The schema's text patterns are built from the contract's character tables (``python -m
tests.test_contract`` rewrites them) and the two validators are run side by side on a corpus.
Whatever a producer puts in a body ends as a request or a ContractError, never another exception.
"""

from __future__ import annotations

import json
import random
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reditus_refunds import contract
from reditus_refunds.contract import (
    CONTROLS,
    FORMAT_CHARS,
    MAX_NOTE,
    MAX_PAYMENT_ID,
    MAX_REQUESTED_BY,
    MAX_SOURCE_EVENT_ID,
    REFUND_ID_PATTERN,
    SOURCE_PATTERN,
    SURROGATES,
    TRIMMED,
    ContractError,
    RefundRequest,
    json_schema,
    parse_body,
    validate,
)

GOOD = [
    {"payment_id": "pay_1"},
    {"payment_id": "  pay_2  ", "refund_id": "5f0c1a9e-3c1b-4f1e-9a7d-2b9f8e0d1c11"},
    {
        "payment_id": "in_1Nv",
        "note": "line one\nline two",
        "requested_by": "ops@example.com",
        "source": "csv",
    },
    {"payment_id": "x" * 255, "force": True},
    {"payment_id": "ch_1", "requeue_of": "abc-123", "force": False, "note": None},
    {"payment_id": "ch_2", "source": "stripe", "source_event_id": "evt_3QxyZ2LkdIwHu7ix1a2b3c4d"},
    {"payment_id": "ch_3", "source_event_id": "order_refunded:1:1199 " + "e" * 230},
]

BAD = [
    ({}, "payment_id is required"),
    ({"payment_id": None}, "payment_id is required"),
    ({"payment_id": ""}, "blank"),
    ({"payment_id": "   "}, "blank"),
    ({"payment_id": "x" * 256}, "256 characters"),
    ({"payment_id": "pay\x00id"}, "control character"),
    ({"payment_id": "pay\u0085id"}, "control character"),
    ({"payment_id": 42}, "must be a string, not a number"),
    ({"payment_id": ["a"]}, "not an array"),
    ({"payment_id": {"id": "a"}}, "not an object"),
    ({"payment_id": True}, "not a boolean"),
    ({"payment_id": "p", "amount": 500}, "unknown field"),
    ({"payment_id": "p", "note": "n" * 1001}, "1001 characters"),
    ({"payment_id": "p", "force": "yes"}, "force must be true or false"),
    ({"payment_id": "p", "refund_id": "has space"}, "refund_id must be"),
    ({"payment_id": "p", "refund_id": "payment#x"}, "refund_id must be"),
    ({"payment_id": "p", "refund_id": 7}, "refund_id must be a string"),
    ({"payment_id": "p", "source": "<script>"}, "source must be"),
    ({"payment_id": "p", "requested_by": 5}, "requested_by must be a string"),
    # Look-alikes: invisible format characters in an id.
    (
        {"payment_id": "pay\u200b1"},
        "payment_id contains an invisible format character (U+200B ZERO WIDTH SPACE)",
    ),
    ({"payment_id": "pay\u200d1"}, "U+200D ZERO WIDTH JOINER"),
    ({"payment_id": "pay_\u202e1"}, "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ({"payment_id": "\ufeffpay_1"}, "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
    ({"payment_id": "pay_1\u2060"}, "U+2060 WORD JOINER"),
    ({"payment_id": "pay\U000e0041"}, "U+E0041 TAG LATIN CAPITAL LETTER A"),
    (
        {"payment_id": "p", "refund_id": "r\u200b1"},
        "refund_id contains an invisible format character (U+200B",
    ),
    (
        {"payment_id": "p", "requeue_of": "\u2066r1"},
        "requeue_of contains an invisible format character (U+2066",
    ),
    # A newline after an id is not the end of it (Python's `$` would say it is).
    ({"payment_id": "p", "refund_id": "r-1\n"}, "refund_id must be"),
    ({"payment_id": "p", "source": "csv\n"}, "source must be"),
    # The provider event behind a request: an id, so the same rules as payment_id (but optional).
    ({"payment_id": "p", "source_event_id": "e" * 256}, "source_event_id is 256 characters long"),
    ({"payment_id": "p", "source_event_id": "evt\x001"}, "source_event_id contains a control character"),
    ({"payment_id": "p", "source_event_id": "evt\u200b1"}, "source_event_id contains an invisible format"),
    ({"payment_id": "p", "source_event_id": 42}, "source_event_id must be a string, not a number"),
]


@pytest.mark.parametrize("data", GOOD)
def test_good_messages_pass_both_validators(data: dict) -> None:
    request = validate(data)
    assert request.payment_id == data["payment_id"].strip()
    jsonschema.validate(data, json_schema())


@pytest.mark.parametrize(("data", "reason"), BAD)
def test_bad_messages_are_refused_by_both_validators(data: dict, reason: str) -> None:
    with pytest.raises(ContractError) as err:
        validate(data)
    assert reason in err.value.reason
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json_schema())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (None, "empty"),
        ("", "empty"),
        ("   ", "empty"),
        ("not json", "not JSON"),
        ("[1, 2]", "not an array"),
        ("42", "not a number"),
        ("null", "not null"),
        ('"pay_1"', "not str"),
        ('{"payment_id": "\\ud800"}', "surrogate"),
        (b"\xff\xfe", "not valid UTF-8"),
        ("[" * 100_000, "not JSON"),
        ("[" * 5_000 + "]" * 5_000, "nested too deeply"),
        ('{"payment_id": ' * 3_000 + '"p"' + "}" * 3_000, "nested too deeply"),
        ("1" * 5_000, "not a number"),  # int() refuses over 4,300 digits (ValueError)
        ('{"payment_id": ' + "9" * 100_000 + "}", "payment_id must be a string, not a number"),
        ('{"payment_id": "p", "force": ' + "1" * 5_000 + "}", "force must be true or false, not a number"),
        ('{"payment_id": 1e999}', "not a number"),
        ('{"payment_id": -1e-999}', "not a number"),
        ('{"payment_id": "p", "force": NaN}', "NaN is not a JSON value"),
        ('{"payment_id": Infinity}', "Infinity is not a JSON value"),
        ("-Infinity", "-Infinity is not a JSON value"),
        ('{"payment_id": "a", "payment_id": "b"}', "the key 'payment_id' appears more than once"),
        ('{"payment_id": "p", "refund_id": "r", "refund_id": "r"}', "'refund_id' appears more than once"),
        ('{"payment_id": "p", "note": {"x": 1, "x": 2}}', "'x' appears more than once"),
        ('{"payment_id": "p", "\\ud800": 1}', "unknown field(s) '\\ud800'"),
        ('\ufeff{"payment_id": "p"}', "not JSON"),
        ('{"payment_id": "p\\u200b"}', "invisible format character"),
        ('{"payment_id": "p\ud800"}', "surrogate"),  # a raw lone surrogate in a str body
        (bytearray(b'{"payment_id": "p"}'), "must be text, not bytearray"),
    ],
)
def test_bodies_that_are_not_requests(body: str | bytes | None, reason: str) -> None:
    with pytest.raises(ContractError) as err:
        parse_body(body)
    assert reason in err.value.reason


def test_invalid_message_keeps_what_identifies_it() -> None:
    with pytest.raises(ContractError) as err:
        parse_body(json.dumps({"payment_id": "pay_1", "refund_id": "r-1", "amount": 3}))
    assert err.value.refund_id == "r-1"
    assert err.value.payment_id == "pay_1"


@pytest.mark.parametrize("payment_id", ["   ", "\t\n", "pay\u200b1", "\ufeffpay"])
def test_an_invalid_message_never_names_a_blank_or_look_alike_payment(payment_id: str) -> None:
    """The invalid record is stored under this id: never "" (an index key) nor a look-alike."""
    with pytest.raises(ContractError) as err:
        validate({"payment_id": payment_id, "refund_id": "r-1"})
    assert err.value.refund_id == "r-1" and err.value.payment_id is None


def test_refund_id_defaults_to_the_message_id() -> None:
    assert parse_body('{"payment_id": "p"}', default_refund_id="msg-1").refund_id == "msg-1"
    assert (
        parse_body('{"payment_id": "p", "refund_id": "mine"}', default_refund_id="msg-1").refund_id == "mine"
    )


def test_round_trip_through_the_message_body() -> None:
    request = RefundRequest(payment_id="pay_9", refund_id="r-9", requested_by="a@b.c", note="why", force=True)
    assert parse_body(request.to_body()) == request
    jsonschema.validate(json.loads(request.to_body()), json_schema())


# ---- the character tables --------------------------------------------------------------------------


def codes(ranges: Iterable[tuple[int, int]]) -> set[int]:
    return {code for low, high in ranges for code in range(low, high + 1)}


def test_the_tables_match_this_python() -> None:
    """TRIMMED is what str.strip() trims; every format character this Python knows is in FORMAT_CHARS
    (a newer Unicode may add some: then extend the table, and regenerate the schema)."""
    everything = range(sys.maxunicode + 1)
    assert codes(TRIMMED) == {c for c in everything if chr(c).isspace()}
    assert codes(CONTROLS) == {c for c in everything if unicodedata.category(chr(c)) == "Cc"}
    assert codes(SURROGATES) == {c for c in everything if unicodedata.category(chr(c)) == "Cs"}
    assert {c for c in everything if unicodedata.category(chr(c)) == "Cf"} <= codes(FORMAT_CHARS)
    assert not codes(FORMAT_CHARS) & codes(TRIMMED)


def _char_class(excluded: set[int], negate: bool = True) -> str:
    """A regex character class, the same in Python's re and ECMA-262 (with the u flag)."""
    parts: list[str] = []
    ordered = sorted(excluded)
    start = previous = ordered[0]
    for code in [*ordered[1:], -1]:
        if code == previous + 1:
            previous = code
            continue
        # Escapes for the BMP (a lone surrogate can only be written so); astral characters literally.
        low, high = (f"\\u{c:04x}" if c <= 0xFFFF else chr(c) for c in (start, previous))
        parts.append(low if start == previous else f"{low}-{high}")
        start = previous = code
    return f"[{'^' if negate else ''}{''.join(parts)}]"


def _trimmed_text(forbidden: set[int], limit: int, required: bool) -> str:
    """A string that, once trimmed as str.strip() does, is 1..limit characters (0.. if not required)
    of allowed characters: what validate() checks, as one pattern."""
    spaces = _char_class(codes(TRIMMED), negate=False)
    edge = _char_class(forbidden | codes(TRIMMED))
    inner = _char_class(forbidden)
    core = f"{edge}(?:{inner}{{0,{limit - 2}}}{edge})?"
    return f"^{spaces}*{core if required else f'(?:{core})?'}{spaces}*$"


def _whole(pattern: str) -> str:
    # `$(?!\n)`: Python's `$` also matches before a final newline; ECMA's does not.
    return f"^{pattern}$(?!\\n)"


def expected_patterns() -> dict[str, str]:
    """The schema's patterns, generated from the contract's tables and patterns."""
    text = codes(CONTROLS) | codes(SURROGATES)
    note = text - {ord(c) for c in "\t\n\r"}
    identifier = text | codes(FORMAT_CHARS)
    return {
        "payment_id": _trimmed_text(identifier, MAX_PAYMENT_ID, required=True),
        "refund_id": _whole(REFUND_ID_PATTERN.pattern),
        "requeue_of": _whole(REFUND_ID_PATTERN.pattern),
        "requested_by": _trimmed_text(text, MAX_REQUESTED_BY, required=False),
        "note": _trimmed_text(note, MAX_NOTE, required=False),
        "source": _whole(SOURCE_PATTERN.pattern),
        "source_event_id": _trimmed_text(identifier, MAX_SOURCE_EVENT_ID, required=False),
    }


SCHEMA_FILE = Path(contract.__file__).with_name("schema") / "refund-request.schema.json"


def write_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text("utf-8"))
    for name, pattern in expected_patterns().items():
        schema["properties"][name]["pattern"] = pattern
    SCHEMA_FILE.write_text(json.dumps(schema, indent=2, ensure_ascii=True) + "\n", "utf-8")


def test_the_schema_patterns_are_generated_from_the_contract() -> None:
    properties = json_schema()["properties"]
    stale = [name for name, pattern in expected_patterns().items() if properties[name]["pattern"] != pattern]
    assert not stale, f"run `python -m tests.test_contract` to regenerate the schema's patterns: {stale}"
    jsonschema.Draft202012Validator.check_schema(json_schema())


# ---- the two validators agree ----------------------------------------------------------------------
def _interesting_chars() -> list[str]:
    """Each table's ends, their neighbours, and a few of every kind."""
    found: set[int] = {0x20, ord("a"), ord("é"), 0x10FFFF, 0x1F600, 0xFFFD, 0xE000}
    for low, high in (*TRIMMED, *CONTROLS, *SURROGATES, *FORMAT_CHARS):
        found |= {low - 1, low, (low + high) // 2, high, high + 1}
    return [chr(c) for c in sorted(found) if 0 <= c <= sys.maxunicode]


def _texts(limit: int) -> Iterator[str]:
    yield from ("", " ", "p", "pay_1", "pay 1", "x" * limit, "x" * (limit + 1), "x" * (limit - 1))
    yield from (" " + "x" * limit, "x" * limit + "\n", "\t" + "x" * (limit - 1) + " \r\n", " " * 300 + "x")
    yield from (" " + "x" * (limit + 1), "\u3000" * 2 + "x" * limit + "\u2028")
    for ch in _interesting_chars():
        yield from (ch, ch + "p", "p" + ch, "p" + ch + "q", ch * 2, " " + ch + " ", "a" + ch + "\n")


def _values(name: str) -> Iterator[Any]:
    yield from (None, 1, 1.5, True, False, [], {}, ["p"], {"id": "p"})
    if name in ("refund_id", "requeue_of"):
        yield from ("a", "a" * 128, "a" * 129, "-a", "a-b.c:d_e", "abc\n", "abc ", " abc", "é", "a\u200b", "")
        yield from ("A" + "9" * 127, "r#1", "\n", "a\nb")
    elif name == "source":
        yield from ("csv", "Csv", "c" * 32, "c" * 33, "csv\n", "", "a-b_c", "1a", "billing system")
    elif name == "force":
        yield from (0, 1, "true", "false")
    else:
        yield from _texts(
            {
                "payment_id": MAX_PAYMENT_ID,
                "requested_by": MAX_REQUESTED_BY,
                "source_event_id": MAX_SOURCE_EVENT_ID,
            }.get(name, MAX_NOTE)
        )


def _messages() -> Iterator[Any]:
    yield from ({}, [], "p", 1, None, {"amount": 1}, {"payment_id": "p", "amount": 1}, {"payment_id": "p"})
    for name in contract.FIELDS:
        for value in _values(name):
            yield {"payment_id": value} if name == "payment_id" else {"payment_id": "pay_1", name: value}


def _python_accepts(data: Any) -> bool:
    try:
        validate(data)
    except ContractError:
        return False
    return True


def test_the_validator_and_the_schema_agree_on_a_corpus() -> None:
    """Every message is accepted by both or refused by both: the schema a producer checks against
    says what the Lambda will do. The corpus covers each field's type, length bounds (trimmed or
    not), and every kind of character at the start, inside and at the end."""
    schema = jsonschema.Draft202012Validator(json_schema())
    messages = list(_messages())
    assert len(messages) > 1500
    disagree = [
        (message, _python_accepts(message))
        for message in messages
        if _python_accepts(message) != schema.is_valid(message)
    ]
    assert not disagree, disagree[:5]
    # And through the body: what parse_body accepts is what the schema accepts.
    for message in messages[:300]:
        body = json.dumps(message)
        try:
            parse_body(body)
            accepted = True
        except ContractError:
            accepted = False
        assert accepted == schema.is_valid(message), body
    # The corpus is not trivially one-sided.
    accepted = sum(_python_accepts(m) for m in messages)
    assert 200 < accepted < len(messages) - 200


def test_the_case_the_review_found() -> None:
    """A 256-character payment_id starting with a space: trimmed it is 255 characters, which the
    contract accepts (it is the trimmed id that is stored and sent); the schema now says the same."""
    message = {"payment_id": " " + "x" * 255}
    assert validate(message).payment_id == "x" * 255
    jsonschema.validate(message, json_schema())
    assert not jsonschema.Draft202012Validator(json_schema()).is_valid({"payment_id": " " + "x" * 256})


# ---- nothing escapes parse_body --------------------------------------------------------------------
GOOD_BODIES = [
    '{"payment_id": "pay_1"}',
    json.dumps(
        {
            "refund_id": "r-1",
            "payment_id": "in_1Nv",
            "note": "line one\nline two",
            "requested_by": "ops@example.com",
            "source": "csv",
            "force": True,
            "requeue_of": "r-0",
        }
    ),
]
# JSON fragments a hostile producer would try, in place of a value, a key or anywhere.
HOSTILE_TOKENS = [
    "1" * 5_000,
    "-" + "9" * 4_301,
    "1e999",
    "-1e999",
    "1e-999",
    "1" * 400 + ".5e" + "9" * 400,
    "NaN",
    "Infinity",
    "-Infinity",
    "0x10",
    "01",
    ".5",
    "+1",
    "[" * 3_000 + "]" * 3_000,
    '{"a":' * 3_000 + "1" + "}" * 3_000,
    "[" * 3_000,
    '"\\ud800"',
    '"\\udfff\\ud800"',
    '"\\u0000"',
    '"\\u200b"',
    '"\\u202e"',
    '"\\ufeff"',
    '"\\uZZZZ"',
    '"\\',
    '"\ud800"',
    '"\x00"',
    '"\u2028"',
    "\ufeff",
    '"' + "x" * 300_000 + '"',
    "true",
    "null",
    "{}",
    "[]",
    '{"payment_id": "p", "payment_id": "q"}',
    '"p", "payment_id": "q"',
    '"p", "__proto__": {}',
    "undefined",
    "'p'",
    "/* */",
]


def hostile_bodies(seed: int = 12, mutations: int = 3_000) -> Iterator[str | bytes]:
    """Generated systematically: every prefix of a good body, every hostile token in place of every
    value and every key, and seeded random byte mutations (flips, inserts, deletes, repeats)."""
    for body in GOOD_BODIES:
        for end in range(len(body)):
            yield body[:end]
    for token in HOSTILE_TOKENS:
        yield token
        for name in contract.FIELDS:
            yield (
                f'{{"payment_id": "p", "{name}": {token}}}'
                if name != "payment_id"
                else f'{{"{name}": {token}}}'
            )
        yield f'{{{token}: "p"}}'
        yield f'{{"payment_id": "p", {token}}}'
        yield f"[{token}]"
    rng = random.Random(seed)
    raw = [body.encode() for body in GOOD_BODIES]
    tokens = [token.encode("utf-8", "surrogatepass") for token in HOSTILE_TOKENS if len(token) < 10_000]
    for _ in range(mutations):
        data = bytearray(rng.choice(raw))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) + 1)
            kind = rng.randrange(5)
            if kind == 0 and data:
                data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif kind == 1:
                data[at:at] = bytes([rng.randrange(256)])
            elif kind == 2:
                data[at:at] = rng.choice(tokens)
            elif kind == 3:
                del data[at : at + rng.randint(1, 8)]
            else:
                data[at:at] = data[at : at + rng.randint(1, 16)] * rng.randint(2, 50)
        yield bytes(data)
        # The same as text, when it is text (SQS bodies are str); surrogates kept as they are.
        yield bytes(data).decode("utf-8", "surrogateescape")


def test_every_body_ends_as_a_request_or_a_reason() -> None:
    outcomes = {"request": 0, "invalid": 0}
    for body in hostile_bodies():
        try:
            parse_body(body)
            outcomes["request"] += 1
        except ContractError as err:
            assert err.reason and isinstance(err.reason, str)
            outcomes["invalid"] += 1
    assert outcomes["invalid"] > 5_000 and outcomes["request"] > 50, outcomes


if __name__ == "__main__":
    write_schema()
    print(f"wrote the patterns of {SCHEMA_FILE}")
