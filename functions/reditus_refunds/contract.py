"""The message contract: what a producer puts on the refund queue.

One definition for the Lambda, the console and the CLI. The published JSON Schema
(schema/refund-request.schema.json) says the same thing for other producers; a test
keeps the two in step.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any

MAX_PAYMENT_ID = 255
MAX_NOTE = 1000
MAX_REQUESTED_BY = 256
MAX_BODY_BYTES = 256 * 1024  # the SQS message size limit

REFUND_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
SOURCE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
FIELDS = ("refund_id", "payment_id", "requested_by", "note", "source", "force", "requeue_of")


class ContractError(ValueError):
    """The message breaks the contract; the text says why, for people."""

    def __init__(self, reason: str, refund_id: str | None = None, payment_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        # What could still be read from the message, so the invalid record can be found.
        self.refund_id = refund_id
        self.payment_id = payment_id


@dataclass(frozen=True)
class RefundRequest:
    payment_id: str
    refund_id: str
    requested_by: str | None = None
    note: str | None = None
    source: str | None = None
    force: bool = False
    requeue_of: str | None = None

    def to_message(self) -> dict[str, Any]:
        body: dict[str, Any] = {"refund_id": self.refund_id, "payment_id": self.payment_id}
        for name in ("requested_by", "note", "source", "requeue_of"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.force:
            body["force"] = True
        return body

    def to_body(self) -> str:
        return json.dumps(self.to_message(), ensure_ascii=False, separators=(",", ":"))


def new_refund_id() -> str:
    return str(uuid.uuid4())


def _bad_chars(text: str, allow_newlines: bool = False) -> str | None:
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "an unpaired surrogate (invalid UTF-16 escape)"
        if category == "Cc" and not (allow_newlines and ch in "\n\r\t"):
            return f"a control character (U+{ord(ch):04X})"
    return None


def _describe(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def _optional_text(data: dict[str, Any], name: str, limit: int, allow_newlines: bool = False) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ContractError(f"{name} must be a string, not {_describe(value)}")
    value = value.strip()
    if len(value) > limit:
        raise ContractError(f"{name} is {len(value)} characters long; the limit is {limit}")
    bad = _bad_chars(value, allow_newlines)
    if bad:
        raise ContractError(f"{name} contains {bad}")
    return value or None


def _refund_id(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ContractError(f"{name} must be a string, not {_describe(value)}")
    if not REFUND_ID_PATTERN.fullmatch(value):
        raise ContractError(
            f"{name} must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return value


def validate(data: Any, default_refund_id: str | None = None) -> RefundRequest:
    """Check a decoded message and return the request, or raise ContractError."""
    if not isinstance(data, dict):
        raise ContractError(f"the message must be a JSON object, not {_describe(data)}")
    refund_id: str | None = None
    if data.get("refund_id") is not None:
        refund_id = _refund_id(data["refund_id"], "refund_id")
    payment_hint = data.get("payment_id") if isinstance(data.get("payment_id"), str) else None
    try:
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            shown = ", ".join(repr(k[:40]) for k in unknown[:5])
            raise ContractError(
                f"unknown field(s) {shown}: a refund request carries only {', '.join(FIELDS)}"
            )
        if "payment_id" not in data or data["payment_id"] is None:
            raise ContractError("payment_id is required")
        raw = data["payment_id"]
        if not isinstance(raw, str):
            raise ContractError(f"payment_id must be a string, not {_describe(raw)}")
        payment_id = raw.strip()
        if not payment_id:
            raise ContractError("payment_id is blank")
        if len(payment_id) > MAX_PAYMENT_ID:
            raise ContractError(
                f"payment_id is {len(payment_id)} characters long; the limit is {MAX_PAYMENT_ID}"
            )
        bad = _bad_chars(payment_id)
        if bad:
            raise ContractError(f"payment_id contains {bad}")
        force = data.get("force", False)
        if force is None:
            force = False
        if not isinstance(force, bool):
            raise ContractError(f"force must be true or false, not {_describe(force)}")
        source = data.get("source")
        if source is not None and (not isinstance(source, str) or not SOURCE_PATTERN.fullmatch(source)):
            raise ContractError("source must be a short lowercase word such as console, csv, cli or api")
        requeue_of = None if data.get("requeue_of") is None else _refund_id(data["requeue_of"], "requeue_of")
        request = RefundRequest(
            payment_id=payment_id,
            refund_id=refund_id or default_refund_id or new_refund_id(),
            requested_by=_optional_text(data, "requested_by", MAX_REQUESTED_BY),
            note=_optional_text(data, "note", MAX_NOTE, allow_newlines=True),
            source=source,
            force=force,
            requeue_of=requeue_of,
        )
    except ContractError as err:
        err.refund_id = refund_id
        safe_payment = payment_hint.strip() if payment_hint else None
        if safe_payment and (len(safe_payment) > MAX_PAYMENT_ID or _bad_chars(safe_payment)):
            safe_payment = None
        err.payment_id = safe_payment
        raise
    return request


def parse_body(body: str | bytes | None, default_refund_id: str | None = None) -> RefundRequest:
    """Decode an SQS message body and validate it."""
    if body is None:
        raise ContractError("the message body is empty")
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ContractError("the message body is not valid UTF-8") from None
    if len(body.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
        raise ContractError(f"the message body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise ContractError("the message body is empty")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ContractError(
            f"the message body is not JSON ({err.msg if hasattr(err, 'msg') else err})"
        ) from None
    return validate(data, default_refund_id=default_refund_id)


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a message."""
    text = resources.files(__package__).joinpath("schema/refund-request.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
