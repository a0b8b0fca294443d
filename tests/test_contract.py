"""The message contract: one validator, and a published JSON Schema that agrees with it."""

from __future__ import annotations

import json

import jsonschema
import pytest

from reditus_refunds.contract import ContractError, RefundRequest, json_schema, parse_body, validate

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


def test_refund_id_defaults_to_the_message_id() -> None:
    assert parse_body('{"payment_id": "p"}', default_refund_id="msg-1").refund_id == "msg-1"
    assert (
        parse_body('{"payment_id": "p", "refund_id": "mine"}', default_refund_id="msg-1").refund_id == "mine"
    )


def test_round_trip_through_the_message_body() -> None:
    request = RefundRequest(payment_id="pay_9", refund_id="r-9", requested_by="a@b.c", note="why", force=True)
    assert parse_body(request.to_body()) == request
    jsonschema.validate(json.loads(request.to_body()), json_schema())
