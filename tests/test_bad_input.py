"""Malformed messages sent straight to SQS, bypassing our producers: each is recorded as invalid
with a reason, none reaches Reditus, none is retried, and the good messages beside them succeed."""

from __future__ import annotations

import json

from reditus_refunds.records import Outcome

from .lambda_rig import Lambda, LambdaContext

MALFORMED: list[str] = [
    # not JSON, or not an object
    "not json",
    "",
    " ",
    "\n\t",
    "{",
    '{"payment_id": "p",}',
    "{'payment_id': 'p'}",
    "[]",
    '["pay_1"]',
    "42",
    "-1.5e9",
    "null",
    "true",
    '"pay_1"',
    # payment_id missing, blank, oversize, wrong type, bad characters
    "{}",
    '{"payment_id": null}',
    '{"payment_id": ""}',
    '{"payment_id": "   "}',
    '{"payment_id": "\\t\\n"}',
    json.dumps({"payment_id": "x" * 256}),
    json.dumps({"payment_id": "x" * 10_000}),
    json.dumps({"payment_id": 12345}),
    json.dumps({"payment_id": 1.5}),
    json.dumps({"payment_id": True}),
    json.dumps({"payment_id": ["pay_1"]}),
    json.dumps({"payment_id": {"id": "pay_1"}}),
    '{"payment_id": "pay\\u0000id"}',
    '{"payment_id": "pay\\u001bid"}',
    '{"payment_id": "pay\\u0085id"}',
    '{"payment_id": "\\ud800"}',
    '{"payment_id": "pay_\\udfff"}',
    # other fields of the wrong type or out of bounds
    json.dumps({"payment_id": "p", "note": "n" * 1001}),
    json.dumps({"payment_id": "p", "note": {"text": "x"}}),
    json.dumps({"payment_id": "p", "requested_by": 7}),
    json.dumps({"payment_id": "p", "requested_by": "a\x07b"}),
    json.dumps({"payment_id": "p", "source": "Billing System"}),
    json.dumps({"payment_id": "p", "source": 3}),
    json.dumps({"payment_id": "p", "force": "true"}),
    json.dumps({"payment_id": "p", "force": 1}),
    json.dumps({"payment_id": "p", "refund_id": 99}),
    json.dumps({"payment_id": "p", "refund_id": "has spaces"}),
    json.dumps({"payment_id": "p", "refund_id": "x" * 129}),
    json.dumps({"payment_id": "p", "requeue_of": ["r1"]}),
    # unknown fields: a financial instruction we do not understand is refused
    json.dumps({"payment_id": "p", "amount": 1500}),
    json.dumps({"payment_id": "p", "currency": "usd"}),
    json.dumps({"payment_id": "p", "payment": {"id": "p"}}),
    # hostile strings
    json.dumps({"payment_id": "<script>alert(1)</script>", "extra": 1}),
    json.dumps({"payment_id": "'; DROP TABLE refunds; --", "amount": 1}),
    json.dumps({"payment_id": "p", "source": "<img src=x onerror=alert(1)>"}),
    json.dumps({"payment_id": {"$ne": None}}),
    json.dumps({"payment_id": "p", "note": "x", "__proto__": {"admin": True}}),
    # what makes Python's json raise something other than JSONDecodeError, or accept what JSON has not
    '{"payment_id": ' + "1" * 5_000 + "}",  # int(): ValueError over 4,300 digits
    "9" * 5_000,
    '{"payment_id": "p", "force": ' + "1" * 5_000 + "}",
    '{"payment_id": 1e999}',
    "[" * 5_000 + "]" * 5_000,  # RecursionError
    '{"payment_id": ' * 3_000 + '"p"' + "}" * 3_000,
    '{"payment_id": "p", "force": NaN}',
    '{"payment_id": Infinity}',
    "-Infinity",
    '{"payment_id": "p", "\\ud800": 1}',
    # a key twice: which one counts differs between parsers
    '{"payment_id": "pay_a", "payment_id": "pay_b"}',
    '{"refund_id": "dup-1", "payment_id": "p", "refund_id": "dup-2"}',
    # look-alike ids: invisible format characters
    json.dumps({"payment_id": "pay\u200b_1"}),
    json.dumps({"payment_id": "pay\u200d_1"}),
    json.dumps({"payment_id": "pay_\u202e1"}),
    json.dumps({"payment_id": "\ufeffpay_1"}),
    json.dumps({"payment_id": "pay_1\u2060"}, ensure_ascii=False),
    json.dumps({"payment_id": "p", "refund_id": "r\u200b1"}),
]

BODY_LIMIT_PAYMENT = json.dumps({"payment_id": "x" * 300_000})


def test_at_least_forty_malformed_messages_all_end_invalid(lam: Lambda) -> None:
    assert len(MALFORMED) >= 40
    message_ids: list[str] = []
    # Nine bad and one good per batch, as they would arrive mixed on the queue.
    for start in range(0, len(MALFORMED), 9):
        bad = MALFORMED[start : start + 9]
        lam.sim.add_payment(f"pay_good_{start}")
        event, failures = lam.run(*bad, {"payment_id": f"pay_good_{start}", "refund_id": f"good-{start}"})
        assert failures == set(), "an invalid message must never be retried"
        message_ids += [r["messageId"] for r in event["Records"] if r["body"] in bad]
    assert len(message_ids) == len(MALFORMED)
    items = [i for i in lam.items() if i.get("outcome", {}).get("S") == Outcome.INVALID.value]
    by_message = {i["message_id"]["S"]: i for i in items}
    assert set(by_message) == set(message_ids)
    for item in items:
        assert item["detail"]["S"], "every invalid record says why"
    # Only the good ones reached Reditus, and all of them succeeded.
    reached = {r.payment_id for r in lam.sim.records()}
    assert reached == {f"pay_good_{start}" for start in range(0, len(MALFORMED), 9)}
    refunded = [i for i in lam.items() if i.get("outcome", {}).get("S") == Outcome.REFUNDED.value]
    assert len(refunded) == len(range(0, len(MALFORMED), 9))


def test_reasons_are_specific(lam: Lambda) -> None:
    cases = {
        "not json": "not JSON",
        "[]": "must be a JSON object",
        json.dumps({"payment_id": "p", "amount": 5}): "unknown field(s) 'amount'",
        json.dumps({"payment_id": "x" * 10_000}): "the limit is 255",
        '{"payment_id": "\\ud800"}': "surrogate",
        '{"payment_id": ' + "1" * 5_000 + "}": "payment_id must be a string, not a number",
        "[" * 5_000 + "]" * 5_000: "nested too deeply",
        '{"payment_id": "p", "force": NaN}': "NaN is not a JSON value",
        '{"payment_id": "pay_a", "payment_id": "pay_b"}': "the key 'payment_id' appears more than once",
        json.dumps({"payment_id": "pay\u200b_1"}): "invisible format character (U+200B ZERO WIDTH SPACE)",
        json.dumps({"payment_id": "\ufeffpay_1"}): "invisible format character (U+FEFF",
    }
    event, _ = lam.run(*cases)
    for record in event["Records"]:
        stored = lam.record(record["messageId"])
        assert stored.outcome is Outcome.INVALID
        assert cases[record["body"]] in stored.detail


def test_a_body_over_the_sqs_limit_never_becomes_a_request(lam: Lambda) -> None:
    """Real SQS refuses bodies over 256 KiB at send; moto accepts them, so the contract checks too."""
    lam.send(BODY_LIMIT_PAYMENT)
    event = lam.receive_event()
    response = lam.handler.lambda_handler(event, LambdaContext())
    assert response["batchItemFailures"] == []
    stored = lam.record(event["Records"][0]["messageId"])
    assert stored.outcome is Outcome.INVALID and "larger than" in stored.detail
    assert lam.sim.records() == []
