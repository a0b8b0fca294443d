"""The message contract: what a producer puts on the refund queue.

One definition for the Lambda, the console and the CLI. The published JSON Schema
(schema/refund-request.schema.json) says the same thing for other producers: its text patterns
are generated from the character tables below, and a test runs both on a corpus.

Decisions, the same on both sides:
* Text fields are trimmed (str.strip()) and their limits apply to the trimmed text: a 256-character
  payment_id whose first character is a space is the 255-character id that is stored and sent.
* Ids (payment_id, refund_id, requeue_of, source_event_id) refuse invisible Unicode format
  characters (zero-width space and joiners, bidi controls, the BOM...), so look-alike ids cannot
  get separate markers.
* A body is plain JSON (RFC 8259): NaN and Infinity are refused, as is a key given twice in one
  object (parsers disagree on which value counts); numbers are never converted.
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
MAX_SOURCE_EVENT_ID = 255
MAX_BODY_BYTES = 256 * 1024  # the SQS message size limit

REFUND_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
SOURCE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
FIELDS = (
    "refund_id",
    "payment_id",
    "requested_by",
    "note",
    "source",
    "force",
    "requeue_of",
    "source_event_id",
)


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
    # The id of the provider event that caused the request (billing webhooks), for the audit trail.
    source_event_id: str | None = None

    def to_message(self) -> dict[str, Any]:
        body: dict[str, Any] = {"refund_id": self.refund_id, "payment_id": self.payment_id}
        for name in ("requested_by", "note", "source", "requeue_of", "source_event_id"):
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


# What str.strip() trims (str.isspace), as code point ranges: the JSON Schema's patterns are built
# from this same table, and a test checks it against the running Python.
TRIMMED: tuple[tuple[int, int], ...] = (
    (0x09, 0x0D),
    (0x1C, 0x20),
    (0x85, 0x85),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
)
CONTROLS: tuple[tuple[int, int], ...] = ((0x00, 0x1F), (0x7F, 0x9F))  # category Cc
SURROGATES: tuple[tuple[int, int], ...] = ((0xD800, 0xDFFF),)  # category Cs
# Unicode format characters (category Cf, Unicode 15.1): zero-width space and joiners, bidi controls,
# the BOM, tag characters... Invisible, so inside an id they make look-alikes that would get their own
# markers. A fixed table, not unicodedata, so that every Python (3.11 knows Unicode 14) and the JSON
# Schema refuse the same characters; a test checks that the running Python's Cf is inside it.
FORMAT_CHARS: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
)
_FORMAT_SET = frozenset(c for low, high in FORMAT_CHARS for c in range(low, high + 1))


def _format_char(text: str) -> str | None:
    for ch in text:
        if ord(ch) in _FORMAT_SET:
            name = unicodedata.name(ch, "")
            return (
                f"an invisible format character (U+{ord(ch):04X}{' ' + name if name else ''}), "
                "which would let two ids look the same"
            )
    return None


def _bad_chars(text: str, allow_newlines: bool = False, identifier: bool = False) -> str | None:
    for ch in text:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            return "an unpaired surrogate (invalid UTF-16 escape)"
        if (code <= 0x1F or 0x7F <= code <= 0x9F) and not (allow_newlines and ch in "\n\r\t"):
            return f"a control character (U+{code:04X})"
    return _format_char(text) if identifier else None


class _JsonNumber:
    """A number as read from a body, never converted: no field of the contract is a number, and
    converting is what fails (a 5,000-digit integer) or misleads (1e999 is inf)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text[:40]


class _Unreadable(Exception):
    """Raised by the JSON hooks; parse_body turns it into a ContractError."""


def _refuse_constant(name: str) -> Any:
    raise _Unreadable(f"{name} is not a JSON value")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        # Parsers disagree on which of two values counts (json keeps the last): refuse, never guess.
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Unreadable(f"the key {key[:40]!r} appears more than once in one object")
            seen.add(key)
    return data


def _describe(value: Any) -> str:
    if isinstance(value, _JsonNumber):
        return "a number"
    return {dict: "an object", list: "an array", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def _optional_text(
    data: dict[str, Any], name: str, limit: int, allow_newlines: bool = False, identifier: bool = False
) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ContractError(f"{name} must be a string, not {_describe(value)}")
    value = value.strip()
    if len(value) > limit:
        raise ContractError(f"{name} is {len(value)} characters long; the limit is {limit}")
    bad = _bad_chars(value, allow_newlines, identifier=identifier)
    if bad:
        raise ContractError(f"{name} contains {bad}")
    return value or None


def _refund_id(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ContractError(f"{name} must be a string, not {_describe(value)}")
    if not REFUND_ID_PATTERN.fullmatch(value):
        invisible = _format_char(value)
        reason = f"{name} contains {invisible}; " if invisible else ""
        raise ContractError(
            f"{reason}{name} must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
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
        bad = _bad_chars(payment_id, identifier=True)
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
            source_event_id=_optional_text(data, "source_event_id", MAX_SOURCE_EVENT_ID, identifier=True),
        )
    except ContractError as err:
        err.refund_id = refund_id
        safe_payment = payment_hint.strip() if payment_hint else None
        if safe_payment and (len(safe_payment) > MAX_PAYMENT_ID or _bad_chars(safe_payment, identifier=True)):
            safe_payment = None
        # Never "": a blank id is no id (and DynamoDB refuses an empty string as an index key).
        err.payment_id = safe_payment or None
        raise
    return request


def parse_body(body: str | bytes | None, default_refund_id: str | None = None) -> RefundRequest:
    """Decode an SQS message body and validate it.

    Whatever the body, the answer is a request or a ContractError with a reason, never another
    exception: a message that raised anything else would be retried into the dead-letter queue
    without a history record. Stricter than json.loads: NaN and Infinity (not JSON) and a key
    repeated in one object are refused; numbers are never converted (no field is a number).
    """
    if body is None:
        raise ContractError("the message body is empty")
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ContractError("the message body is not valid UTF-8") from None
    if not isinstance(body, str):
        raise ContractError(f"the message body must be text, not {type(body).__name__}")
    if len(body.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
        raise ContractError(f"the message body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise ContractError("the message body is empty")
    try:
        data = json.loads(
            body,
            object_pairs_hook=_object,
            parse_int=_JsonNumber,
            parse_float=_JsonNumber,
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as err:
        raise ContractError(f"the message body is not JSON ({err.msg})") from None
    except _Unreadable as err:
        raise ContractError(f"the message body is not valid JSON: {err}") from None
    except RecursionError:
        raise ContractError("the message body is not JSON we accept (nested too deeply)") from None
    except ValueError as err:  # anything else the decoder refuses; its text is ours, not the body's
        raise ContractError(f"the message body is not JSON ({type(err).__name__})") from None
    return validate(data, default_refund_id=default_refund_id)


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a message."""
    text = resources.files(__package__).joinpath("schema/refund-request.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
