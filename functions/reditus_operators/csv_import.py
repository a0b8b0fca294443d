"""CSV of refunds (a payment_id column, optional note): validated row by row before anything is sent.

The work is bounded by the file's bytes and lines (blank lines count), not only its rows, and the
delimiter is read from the header line: comma, semicolon (what Excel saves as "CSV" where the
comma is the decimal separator) or tab.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reditus_refunds.contract import ContractError, RefundRequest, new_refund_id, validate

PAYMENT_COLUMN = "payment_id"
NOTE_COLUMN = "note"
MAX_ROWS = 100_000
MAX_BYTES = 20 * 1024 * 1024
# Physical lines, blank ones and a quoted note's own line breaks included: room for every row
# to span a few lines, never the millions of a file of newlines.
MAX_LINES = 2 * MAX_ROWS
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}


class CsvError(ValueError):
    """The file as a whole cannot be used (not CSV, no payment_id column, too large)."""


@dataclass(frozen=True)
class RowProblem:
    line: int  # line number in the file, header = 1
    payment_id: str
    reason: str


@dataclass
class CsvReport:
    header: list[str]
    delimiter: str = ","
    valid: list[tuple[int, RefundRequest]] = field(default_factory=list)
    invalid: list[RowProblem] = field(default_factory=list)
    duplicates: list[RowProblem] = field(default_factory=list)  # repeats within the file

    @property
    def requests(self) -> list[RefundRequest]:
        return [request for _, request in self.valid]

    @property
    def rows(self) -> int:
        return len(self.valid) + len(self.invalid) + len(self.duplicates)


def detect_delimiter(text: str) -> str:
    """The header line's delimiter (comma when the header is a single column or says nothing)."""
    first = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    try:
        return csv.Sniffer().sniff(first, delimiters="".join(DELIMITER_NAMES)).delimiter
    except csv.Error:
        return ","


def read_header(data: bytes | str) -> list[str]:
    return _header(_decode(data))[0]


def _header(text: str) -> tuple[list[str], str, Any]:
    """(header, delimiter, the reader positioned at the first data row)."""
    delimiter = detect_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CsvError("the file is empty") from None
    except csv.Error as err:
        raise CsvError(f"the file is not valid CSV: {err}") from None
    return header, delimiter, reader


def _decode(data: bytes | str) -> str:
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise CsvError(f"the file is larger than {MAX_BYTES // (1024 * 1024)} MB; split it")
    if isinstance(data, str):
        text = data.lstrip("\ufeff")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise CsvError("the file is not UTF-8 text; save it as CSV UTF-8") from None
    # Counted before parsing (fast, in C): a file of blank lines is refused, not walked through.
    if max(text.count("\n"), text.count("\r")) > MAX_LINES:
        raise CsvError(f"the file has more than {MAX_LINES:,} lines; split it (blank lines count too)")
    return text


def parse_csv(
    data: bytes | str,
    *,
    requested_by: str | None = None,
    source: str = "csv",
    columns: Mapping[str, str] | None = None,
    force: bool = False,
) -> CsvReport:
    """Validate every row with the shared contract; `columns` maps our names to the file's headers."""
    text = _decode(data)
    mapping = {PAYMENT_COLUMN: PAYMENT_COLUMN, NOTE_COLUMN: NOTE_COLUMN, **(columns or {})}
    header, delimiter, reader = _header(text)
    lowered = [h.lower() for h in header]
    payment_header = mapping[PAYMENT_COLUMN].lower()
    if payment_header not in lowered:
        shown = ", ".join(repr(h) for h in header[:10])
        raise CsvError(
            f"no {mapping[PAYMENT_COLUMN]!r} column; the header has {shown} "
            f"(read as {DELIMITER_NAMES[delimiter]}-separated)"
        )
    payment_index = lowered.index(payment_header)
    note_header = mapping.get(NOTE_COLUMN, "").lower()
    note_index = lowered.index(note_header) if note_header and note_header in lowered else None
    report = CsvReport(header=header, delimiter=delimiter)
    first_seen: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            if line > MAX_LINES + 1:  # line endings the count above does not see (a lone \r in a quote)
                raise CsvError(
                    f"the file has more than {MAX_LINES:,} lines; split it (blank lines count too)"
                )
            if not any(cell.strip() for cell in row):
                continue
            if report.rows >= MAX_ROWS:
                raise CsvError(f"the file has more than {MAX_ROWS} rows; split it")
            raw_payment = row[payment_index] if payment_index < len(row) else ""
            note = row[note_index] if note_index is not None and note_index < len(row) else None
            try:
                request = validate(
                    {
                        "payment_id": raw_payment,
                        "note": note or None,
                        "requested_by": requested_by,
                        "source": source,
                        "force": force,
                    },
                    default_refund_id=new_refund_id(),
                )
            except ContractError as err:
                report.invalid.append(RowProblem(line, raw_payment[:80], err.reason))
                continue
            if request.payment_id in first_seen:
                report.duplicates.append(
                    RowProblem(
                        line, request.payment_id, f"same payment_id as line {first_seen[request.payment_id]}"
                    )
                )
                continue
            first_seen[request.payment_id] = line
            report.valid.append((line, request))
    except csv.Error as err:
        raise CsvError(f"the file is not valid CSV near line {reader.line_num}: {err}") from None
    return report


def payment_ids(report: CsvReport) -> Iterable[str]:
    return (request.payment_id for request in report.requests)
