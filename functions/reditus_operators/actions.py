"""The operators' use cases with their permission check and audit record, for console and CLI alike.

Each takes the acting `Actor`: what its role may not do is refused here (and the refusal is
audited), whatever the caller drew or skipped; what it does is audited with who, when, what, how
many and the refund ids concerned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reditus_refunds.aws_errors import AwsError
from reditus_refunds.contract import RefundRequest
from reditus_refunds.producer import RefundProducer, SendReport
from reditus_refunds.records import HistoryRecord
from reditus_webhooks.events import EventStore, Review
from reditus_webhooks.review import Submitted

from .access import AccessDenied, Action, Actor
from .audit import DONE, REFUSED, STOPPED, AuditWriter
from .dlq import DeadLetterQueue
from .operations import requeue
from .webhooks import dismiss_review, submit_review


@dataclass(frozen=True)
class Acting:
    """Who acts, and where their actions are recorded."""

    actor: Actor
    audit: AuditWriter


def authorize(ctx: Acting, action: Action, refund_ids: Sequence[str] = (), **details: Any) -> None:
    """Raise AccessDenied (after recording the refusal) unless the actor's role allows `action`."""
    if ctx.actor.may(action):
        return
    denied = AccessDenied(ctx.actor, action)
    ctx.audit.record(
        ctx.actor, action, refund_ids=refund_ids, result=REFUSED, reason=str(denied), details=details or None
    )
    raise denied


def queue_one(ctx: Acting, producer: RefundProducer, request: RefundRequest) -> str:
    """Send one request (force needs the admin role); returns its message id."""
    action = Action.FORCE if request.force else Action.QUEUE
    authorize(ctx, Action.QUEUE, [request.refund_id], payment_id=request.payment_id)
    authorize(ctx, action, [request.refund_id], payment_id=request.payment_id)
    message_id = producer.send(request)
    ctx.audit.record(
        ctx.actor,
        action,
        refund_ids=[request.refund_id],
        details={"payment_id": request.payment_id},
        new_refunds=True,
    )
    return message_id


def check_bulk(ctx: Acting, requests: Sequence[RefundRequest]) -> None:
    """Before a bulk upload sends anything: operator, and admin when any row is forced."""
    authorize(ctx, Action.BULK_UPLOAD, count=len(requests))
    if any(r.force for r in requests):
        authorize(ctx, Action.FORCE, count=sum(1 for r in requests if r.force))


def bulk_upload(
    ctx: Acting,
    send: Callable[[Sequence[RefundRequest], SendReport], SendReport],
    requests: Sequence[RefundRequest],
    file: Mapping[str, Any],
    into: SendReport | None = None,
) -> SendReport:
    """Send a file's requests and record one audit entry: file name, size, row counts, SHA-256.

    `send(requests, into)` fills in `into` as SQS answers (RefundProducer.send_many). If it stops
    part way, what it queued is recorded all the same (result "stopped", with why) before the
    error goes on: those refunds exist, and the audit log must say who made them.
    """
    check_bulk(ctx, requests)
    report = SendReport() if into is None else into
    try:
        send(requests, report)
    except BaseException as err:
        if report.sent or report.failed:
            record_bulk(ctx, report, file, stopped=err)
        raise
    record_bulk(ctx, report, file)
    return report


def record_bulk(
    ctx: Acting, report: SendReport, file: Mapping[str, Any], stopped: BaseException | None = None
) -> bool:
    """One bulk-upload audit entry for what `report` says was queued (`stopped`: see _record);
    True if it was written."""
    return _record(
        ctx,
        Action.BULK_UPLOAD,
        stopped,
        refund_ids=[r.refund_id for r in report.sent],
        details={
            **file,
            "queued": len(report.sent),
            "refused_by_queue": len(report.failed),
            "forced": sum(1 for r in report.sent if r.force),
        },
        new_refunds=True,
    )


def _record(ctx: Acting, action: Action, stopped: BaseException | None, **entry: Any) -> bool:
    """Record an action's audit entry; True if written. `stopped`: the error that stopped the action
    part way (result "stopped", why as the reason); an entry that cannot be written then is told on
    that error rather than raised over it (False)."""
    try:
        ctx.audit.record(
            ctx.actor,
            action,
            result=DONE if stopped is None else STOPPED,
            reason=None if stopped is None else stopped_reason(stopped),
            **entry,
        )
    except AwsError as err:
        if stopped is None:
            raise
        stopped.add_note(f"and its audit record was not written: {err}")
        return False
    return True


def stopped_reason(err: BaseException) -> str:
    """Why an action stopped, for its audit entry: an AWS error's own (mapped, readable) text, else
    only the kind of interruption (an arbitrary exception's text is not an operator's to read)."""
    if isinstance(err, AwsError):
        return str(err)
    return f"interrupted ({type(err).__name__})"


def requeue_records(
    ctx: Acting, producer: RefundProducer, records: Sequence[HistoryRecord], *, source: str
) -> tuple[SendReport, list[tuple[HistoryRecord, str]]]:
    """Requeue under new refund ids (a forced refund stays forced: that needs the admin role)."""
    old = [r.refund_id for r in records]
    authorize(ctx, Action.REQUEUE, old)
    if any(r.force for r in records):
        authorize(ctx, Action.FORCE, [r.refund_id for r in records if r.force])
    report = SendReport()
    try:
        _, refused = requeue(
            producer, records, requested_by=ctx.actor.requested_by, source=source, into=report
        )
    except BaseException as err:
        if report.sent or report.failed:  # what was requeued before it stopped exists: say who did it
            _record_requeue(ctx, old, report, len(report.failed), stopped=err)
        raise
    _record_requeue(ctx, old, report, len(refused) + len(report.failed))
    return report, refused


def _record_requeue(
    ctx: Acting, old: list[str], report: SendReport, refused: int, stopped: BaseException | None = None
) -> None:
    new = [r.refund_id for r in report.sent]
    _record(
        ctx,
        Action.REQUEUE,
        stopped,
        refund_ids=old + new,
        count=len(new),
        details={
            "requeued": {r.requeue_of: r.refund_id for r in report.sent if r.requeue_of},
            "refused": refused,
        },
    )


def redrive(ctx: Acting, queue: DeadLetterQueue, message_ids: Sequence[str] | None) -> list[str]:
    authorize(ctx, Action.REDRIVE)
    refund_ids = _dead_letter_refund_ids(queue, message_ids)
    moved = queue.redrive(message_ids)
    ctx.audit.record(
        ctx.actor,
        Action.REDRIVE,
        refund_ids=[refund_ids[m] for m in moved if m in refund_ids],
        count=len(moved),
        details={"message_ids": moved[:1000], "all": message_ids is None},
    )
    return moved


def delete_dead_letters(ctx: Acting, queue: DeadLetterQueue, message_ids: Sequence[str]) -> list[str]:
    authorize(ctx, Action.DELETE)
    refund_ids = _dead_letter_refund_ids(queue, message_ids)
    deleted = queue.delete(message_ids)
    ctx.audit.record(
        ctx.actor,
        Action.DELETE,
        refund_ids=[refund_ids[m] for m in deleted if m in refund_ids],
        count=len(deleted),
        details={"message_ids": deleted[:1000]},
    )
    return deleted


def _dead_letter_refund_ids(queue: DeadLetterQueue, message_ids: Sequence[str] | None) -> dict[str, str]:
    """message_id -> the refund id the Lambda used for it (read before the messages move)."""
    from .dlq import original_refund_id

    wanted = None if message_ids is None else set(message_ids)
    return {
        letter.message_id: original_refund_id(letter.message_id, letter.body)
        for letter in queue.peek()
        if wanted is None or letter.message_id in wanted
    }


def submit(ctx: Acting, refund_id: str, *, events: EventStore, producer: RefundProducer) -> Submitted:
    authorize(ctx, Action.SUBMIT, [refund_id.strip()])
    done = submit_review(refund_id, events=events, producer=producer, operator=ctx.actor.requested_by)
    ctx.audit.record(
        ctx.actor, Action.SUBMIT, refund_ids=[done.refund_id], details={"sent": done.message_id is not None}
    )
    return done


def dismiss(ctx: Acting, refund_id: str, *, events: EventStore) -> Review:
    authorize(ctx, Action.DISMISS, [refund_id.strip()])
    review = dismiss_review(refund_id, events=events, operator=ctx.actor.requested_by)
    ctx.audit.record(ctx.actor, Action.DISMISS, refund_ids=[review.refund_id])
    return review


def check_export(ctx: Acting, what: str) -> None:
    authorize(ctx, Action.EXPORT, what=what)


def record_export(ctx: Acting, what: str, rows: int, refund_ids: Sequence[str], **details: Any) -> None:
    """An export happened: how many rows of what (the refund ids when they are refunds)."""
    ctx.audit.record(
        ctx.actor, Action.EXPORT, refund_ids=refund_ids, count=rows, details={"what": what, **details}
    )


def check_audit(ctx: Acting) -> None:
    authorize(ctx, Action.AUDIT)
