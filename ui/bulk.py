"""The Bulk upload page's work, kept in the session so that a rerun resumes it instead of redoing it.

A file is parsed once (its refund_ids are fixed then, so nothing can be sent twice under new ids),
its payments are checked against the history, and it is queued in chunks, each chunk's result stored
before the next starts: a rerun (the operator clicked something meanwhile) picks up where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from reditus_operators.csv_import import NOTE_COLUMN, PAYMENT_COLUMN, CsvReport, RowProblem, parse_csv
from reditus_operators.history import HistoryReader
from reditus_operators.operations import history_warnings
from reditus_refunds.contract import RefundRequest
from reditus_refunds.producer import SendReport

# Rows per send_many call. Each call writes the next groups' pending records while it sends (see
# RefundProducer.send_many), so a chunk of 100 (one group) wrote, then sent, without overlap: 5,000
# rows in 100-row calls took 1.3x as long as in 1,000-row calls (2.9-3.0 s vs 2.2-2.3 s, DynamoDB
# and SQS on two moto servers as in bench/bulk.py). A chunk stopped part way loses nothing
# (BulkUpload.send keeps each answer as it comes).
SEND_CHUNK = 1_000

Progress = Callable[[int, int], None]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def guess_column(header: Sequence[str], wanted: str, hints: Sequence[str] = ()) -> str | None:
    """The file's header that most likely holds `wanted` (exact name first, then a hint inside it)."""
    lowered = [h.strip().lower() for h in header]
    if wanted in lowered:
        return header[lowered.index(wanted)]
    for hint in hints:
        for original, name in zip(header, lowered, strict=True):
            if hint in name:
                return original
    return None


@dataclass
class BulkUpload:
    """One uploaded file, from its validation report to the last queued chunk."""

    file_name: str
    file_digest: str
    columns: dict[str, str]
    report: CsvReport
    requested_by: str
    checked: int = 0  # how many valid rows have been checked against the history
    in_history: dict[str, str] = field(default_factory=dict)  # payment_id -> why it needs force
    send_history_matches: bool = False  # queue those too, with force
    sending: bool = False
    queued: dict[str, tuple[int, RefundRequest]] = field(default_factory=dict)  # refund_id -> (line, request)
    failed: dict[str, tuple[int, RefundRequest, str]] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    audited: set[str] = field(default_factory=set)  # refund_ids an audit entry already accounts for
    unsure: set[str] = field(default_factory=set)  # a stopped chunk's rest: SQS may have some of them
    dry_run_shown: bool = False

    # ---- the preview ----------------------------------------------------------------------
    @property
    def valid_rows(self) -> int:
        return len(self.report.valid)

    @property
    def history_checked(self) -> bool:
        return self.checked >= len(self.report.valid)

    def history_problems(self) -> list[RowProblem]:
        return [
            RowProblem(line, request.payment_id, self.in_history[request.payment_id])
            for line, request in self.report.valid
            if request.payment_id in self.in_history
        ]

    def problems(self) -> list[RowProblem]:
        """Every row that will not be queued as it stands, by line number."""
        rows = [*self.report.invalid, *self.report.duplicates]
        if not self.send_history_matches:
            rows += self.history_problems()
        return sorted(rows, key=lambda p: p.line)

    def to_send(self) -> list[tuple[int, RefundRequest]]:
        """The rows to queue: valid, first of their payment in the file, and clear of the history
        (or, when the operator chose so, sent with force although the history has them)."""
        rows: list[tuple[int, RefundRequest]] = []
        for line, request in self.report.valid:
            if request.payment_id in self.in_history:
                if not self.send_history_matches:
                    continue
                request = replace(request, force=True)
            rows.append((line, request))
        return rows

    def remaining(self) -> list[tuple[int, RefundRequest]]:
        return [
            (line, request)
            for line, request in self.to_send()
            if request.refund_id not in self.queued and request.refund_id not in self.failed
        ]

    @property
    def started(self) -> bool:
        return self.started_at is not None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    # ---- the work ---------------------------------------------------------------------------
    def check_history(self, store: HistoryReader, progress: Progress | None = None) -> None:
        """Look up every valid row's payment in the history: payment markers 100 at a time, and the
        refunds still in flight (see operations.history_warnings)."""
        payment_ids = [request.payment_id for _, request in self.report.valid]
        self.in_history = history_warnings(store, payment_ids, progress)
        self.checked = len(payment_ids)

    def start_sending(self) -> None:
        self.started_at = time.monotonic()
        self.sending = True

    def send(
        self,
        send_many: Callable[[Sequence[RefundRequest], Progress, SendReport, bool], SendReport],
        progress: Progress | None = None,
    ) -> None:
        """Queue what remains, a chunk at a time, remembering each chunk's result (resumable).

        `send_many(requests, progress, into, minted)` fills in `into` as SQS answers
        (RefundProducer.send_many; `minted`: its minted_ids). What SQS accepted is remembered even
        when a chunk stops part way (a rerun raises inside `progress`, an AWS failure): resumed, the
        chunk sends only the rest, since a refund_id sent twice would be a second message, and its
        pending record written again over its item. The rest of a stopped chunk may still hold a
        request SQS took without its answer coming back (a timeout): those go with minted=False, so
        an item the Lambda made of it meanwhile is not recorded pending over."""
        if self.started_at is None:
            self.start_sending()
        self.sending = True
        total = len(self.to_send())
        for chunk in _chunks(self.remaining(), SEND_CHUNK):
            lines = {request.refund_id: line for line, request in chunk}
            before = len(self.queued) + len(self.failed)

            def within_chunk(done: int, _: int, before: int = before) -> None:
                if progress:
                    progress(before + done, total)

            report = SendReport()
            minted = self.unsure.isdisjoint(lines)
            try:
                send_many([request for _, request in chunk], within_chunk, report, minted)
            finally:
                for request in report.sent:
                    self.queued[request.refund_id] = (lines[request.refund_id], request)
                for request, reason in report.failed:
                    self.failed[request.refund_id] = (lines[request.refund_id], request, reason)
                answered = {r.refund_id for r in report.sent} | {r.refund_id for r, _ in report.failed}
                self.unsure = (self.unsure | lines.keys()) - answered
            if progress:
                progress(len(self.queued) + len(self.failed), total)
        self.sending = False
        self.finished_at = time.monotonic()

    def unaudited(self) -> SendReport:
        """What was queued or refused that no audit entry accounts for yet (an upload stopped by a
        failure is audited then, and the rest when the retry finishes: each refund in one entry)."""
        return SendReport(
            sent=[request for _, request in self.queued.values() if request.refund_id not in self.audited],
            failed=[(r, why) for _, r, why in self.failed.values() if r.refund_id not in self.audited],
        )

    def mark_audited(self, report: SendReport) -> None:
        self.audited.update(request.refund_id for request in report.sent)
        self.audited.update(request.refund_id for request, _ in report.failed)

    @property
    def elapsed_seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.monotonic()) - self.started_at


def _chunks(rows: list[tuple[int, RefundRequest]], size: int) -> Iterator[list[tuple[int, RefundRequest]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def start_upload(data: bytes, file_name: str, columns: dict[str, str], requested_by: str) -> BulkUpload:
    """Validate every row (raises CsvError when the file as a whole cannot be used)."""
    report = parse_csv(data, requested_by=requested_by, source="csv", columns=columns)
    return BulkUpload(file_name, digest(data), dict(columns), report, requested_by)


def problems_csv(problems: Sequence[RowProblem]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["line", "payment_id", "reason"])
    for problem in problems:
        writer.writerow([problem.line, _safe(problem.payment_id), problem.reason])
    return buffer.getvalue().encode("utf-8")


def queued_csv(upload: BulkUpload) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["line", "payment_id", "refund_id", "status"])
    rows = [(line, request, "queued") for line, request in upload.queued.values()]
    rows += [(line, request, f"not queued: {reason}") for line, request, reason in upload.failed.values()]
    for line, request, status in sorted(rows, key=lambda row: row[0]):
        writer.writerow([line, _safe(request.payment_id), request.refund_id, status])
    return buffer.getvalue().encode("utf-8")


def _safe(text: str) -> str:
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


SAMPLE_CSV = f"{PAYMENT_COLUMN},{NOTE_COLUMN}\npay_1001,refunded by support (ticket 4821)\npay_1002,\n"
