"""`reditus-refunds`: queue refunds, read the history, work the dead-letter queue, run the stack.

Without options it talks to the running local stack (`make run`); with `--stack-name NAME` to a
deployed stack, found through its CloudFormation outputs with the usual AWS settings
(AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL); HISTORY_TABLE_NAME and REFUND_QUEUE_URL (and
DEAD_LETTER_QUEUE_URL) name a system directly. Bad input and unreachable systems give one line
on stderr and a non-zero exit (2: bad input, 1: anything else), never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import re
import shlex
import sys
import unicodedata
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from reditus_refunds.aws_errors import AwsError, BotoCoreError, ClientError, aws_error
from reditus_refunds.contract import ContractError
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.producer import RefundProducer, SendReport
from reditus_refunds.records import HistoryRecord, Outcome
from reditus_refunds.repair import MAX_DAYS as RECOUNT_MAX_DAYS
from reditus_refunds.repair import DayRecount, DayRecounter, recount_days
from reditus_refunds.settings import SettingsError
from reditus_webhooks import PROVIDERS
from reditus_webhooks.events import EventStore
from reditus_webhooks.review import ReviewError

from . import actions
from .access import AccessDenied, Action, Actor, Role
from .audit import AuditReader, AuditWriter, audit_csv
from .config import (
    WEBHOOK_URL_ENV,
    ConfigError,
    SystemConfig,
    data_dir,
    from_local_state,
    local_webhook_env,
    pid_alive,
    read_local_state,
    resolve,
    webhook_url,
)
from .console import HOST, ConsoleError, check_port, port_from_env, run_console
from .csv_import import DELIMITER_NAMES, CsvError, parse_csv
from .dlq import DeadLetterQueue
from .history import START_OF_TIME, HistoryReader
from .operations import build_request, history_matches, payment_match
from .users import UserError, UserStore
from .webhooks import (
    RECORDED_DECISIONS,
    SampleError,
    WebhookReader,
    send_sample,
)

PROG = "reditus-refunds"
DETAIL_WIDTH = 60
LOCAL_STACK_MISSING = (
    "the local stack is not installed: it is part of a checkout of reditus-refunds "
    "(clone the repository, then `make run`); this tool works with a deployed stack through --stack-name"
)


class CliError(Exception):
    """A one-line error for the user; code 2 for bad input, 1 otherwise."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is in --help)."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: error: {message} (see --help)", 2)


# Shown escaped, never obeyed by a terminal: controls (C0, DEL, C1 such as CSI), format characters
# (bidi overrides, zero-width), lone surrogates, private use, line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def terminal_safe(text: object) -> str:
    """Untrusted text (Reditus's detail, message bodies, notes, names) as a terminal shows it safely."""
    value = str(text)
    if value.isprintable():
        return value
    out = []
    for char in value:
        if not _unsafe(char):
            out.append(char)
            continue
        code = ord(char)
        out.append(
            f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
        )
    return "".join(out)


def json_line(data: object) -> str:
    """One JSON object, non-ASCII text kept readable, anything a terminal would obey as \\u escapes
    (valid JSON: outside strings json.dumps writes ASCII only)."""
    text = json.dumps(data, default=str, ensure_ascii=False)
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if not _unsafe(char):
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:  # a UTF-16 surrogate pair, as JSON spells characters beyond the BMP
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "".join(out)


def _eprint(text: str) -> None:
    print(terminal_safe(text), file=sys.stderr, flush=True)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---- finding the system ---------------------------------------------------------------------------


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if getattr(args, "data_dir", None) else data_dir()


def _local_state(args: argparse.Namespace) -> dict[str, Any]:
    directory = _data_dir(args)
    state = read_local_state(directory)
    if state is None:
        raise ConfigError(
            f"no local stack is running from {directory}: start it with `make run` (or pass --data-dir)"
        )
    pid = state.get("pid")
    if isinstance(pid, int) and not pid_alive(pid):
        raise ConfigError(
            f"the local stack of {directory} is not running (it stopped without cleaning up): "
            "start it again with `make run`"
        )
    return state


def system(args: argparse.Namespace) -> SystemConfig:
    env = dict(os.environ)
    if getattr(args, "data_dir", None):
        env["REDITUS_LOCAL_DATA_DIR"] = str(args.data_dir)
    config = resolve(args.stack_name, env)
    if config.local:
        _local_state(args)  # says so plainly when the stack is not running
    return config


def _store(config: SystemConfig) -> HistoryReader:
    return HistoryReader(config.table_name, config.client("dynamodb"))


def _producer(config: SystemConfig) -> RefundProducer:
    """Sends to the refund queue and records what SQS accepted as pending."""
    return RefundProducer(
        config.client("sqs"), config.queue_url, HistoryWriter(config.table_name, config.client("dynamodb"))
    )


def caller_identity(config: SystemConfig) -> str:
    """The caller's AWS identity (its STS ARN): what the CLI records as who acted."""
    try:
        arn = str(config.client("sts").get_caller_identity()["Arn"])
    except (ClientError, BotoCoreError) as err:
        raise aws_error(
            err, AwsError, service="STS", resource="the caller's identity", names_hint="your AWS credentials"
        ) from None
    return arn


def _as_name(args: argparse.Namespace) -> str | None:
    name = getattr(args, "as_name", None) or getattr(args, "requested_by", None)
    if name is None:
        return None
    cleaned = " ".join(str(name).split())
    if not cleaned or len(cleaned) > 100 or not cleaned.isprintable():
        raise CliError("--as takes a readable name of up to 100 characters", 2)
    return cleaned


def acting(args: argparse.Namespace, config: SystemConfig) -> actions.Acting:
    """The CLI acts as the caller's STS identity. Its role in the operators' layer is admin unless
    --role says less: what a person may do on AWS is the managed policy their credentials carry."""
    role = Role.parse(getattr(args, "role", None) or "admin")
    actor = Actor(caller_identity(config), role, "cli", _as_name(args))
    return actions.Acting(actor, AuditWriter(config.table_name, config.client("dynamodb")))


# ---- enqueue ----------------------------------------------------------------------------------------


def cmd_enqueue(args: argparse.Namespace) -> int:
    if (args.payment_id is None) == (args.csv is None):
        raise CliError("give one PAYMENT_ID or --csv FILE", 2)
    if args.csv:
        return _enqueue_csv(args)
    _as_name(args)
    config = system(args)
    ctx = acting(args, config)
    try:
        request = build_request(
            args.payment_id,
            note=args.note,
            requested_by=ctx.actor.requested_by,
            source="cli",
            force=args.force,
        )
    except ContractError as err:
        raise CliError(err.reason, 2) from None
    store = _store(config)
    match = payment_match(store, request.payment_id)
    warning = match.warning if match else None
    if warning and not args.force:
        raise CliError(f"{warning}; not queued (--force queues it anyway)")
    if warning:
        _eprint(f"warning: {warning}; queued anyway (--force)")
    actions.queue_one(ctx, _producer(config), request)
    print(terminal_safe(request.refund_id), flush=True)
    _eprint(f"queued payment {request.payment_id} as refund {request.refund_id} ({config.origin})")
    return 0


def _enqueue_csv(args: argparse.Namespace) -> int:
    path = Path(args.csv)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}", 2) from None
    _as_name(args)
    config = system(args)
    ctx = acting(args, config)
    requested_by = ctx.actor.requested_by
    try:
        report = parse_csv(data, requested_by=requested_by, source="cli", force=args.force)
    except CsvError as err:
        raise CliError(f"{path}: {err}", 2) from None
    for problem in report.invalid:
        shown = f" (payment_id {problem.payment_id!r})" if problem.payment_id else ""
        _eprint(f"line {problem.line}: {problem.reason}{shown}")
    for duplicate in report.duplicates:
        _eprint(f"line {duplicate.line}: skipped, {duplicate.reason}")
    if report.invalid and not args.skip_invalid:
        raise CliError(
            f"{len(report.invalid)} invalid row(s) in {path}; nothing was queued "
            "(fix them, or pass --skip-invalid to queue the valid rows)",
            2,
        )
    requests = report.requests
    store = _store(config)
    held_back = 0
    if args.check_history and requests:
        found = history_matches(store, [r.payment_id for r in requests])
        for payment_id, match in found.items():
            action = "queued anyway (--force)" if args.force else "skipped"
            _eprint(f"{payment_id}: {match.warning}; {action}")
        if not args.force:
            requests = [r for r in requests if r.payment_id not in found]
            held_back = len(found)
    skipped = (
        f"{len(report.duplicates)} duplicate row(s), {len(report.invalid)} invalid row(s)"
        + (f", {held_back} already refunded or in flight" if args.check_history else "")
        + f" skipped; read as {DELIMITER_NAMES[report.delimiter]}-separated"
    )
    if args.dry_run or not requests:
        verb = "would queue" if args.dry_run else "queued"
        print(f"{verb} {len(requests)} refund(s); {skipped}", flush=True)
        return 0

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total}", end="", file=sys.stderr, flush=True)

    show = sys.stderr.isatty() and len(requests) > 100
    producer = _producer(config)
    file = {
        "file_name": path.name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "rows": report.rows,
        "invalid": len(report.invalid),
        "duplicates": len(report.duplicates),
        "held_back": held_back,
    }
    sent = SendReport()
    try:
        actions.bulk_upload(
            ctx,
            # parse_csv mints every row's refund_id (the file has no refund_id column).
            lambda chosen, into: producer.send_many(
                chosen, progress if show else None, minted_ids=True, into=into
            ),
            requests,
            file,
            into=sent,
        )
    except (AwsError, KeyboardInterrupt):
        if sent.sent:  # run again, the file gets new refund_ids: say how far this run got
            if show:
                _eprint("")
            _eprint(
                f"queued {len(sent.sent)} of {len(requests)} refund(s) before it stopped (their refund_ids "
                "are in the audit log); the others were not sent"
            )
        raise
    if show:
        _eprint("")
    for request, why in sent.failed:
        _eprint(f"{request.payment_id}: not queued: {why}")
    print(
        f"queued {len(sent.sent)} of {len(requests)} refund(s) in {sent.send_calls} SQS call(s); {skipped}",
        flush=True,
    )
    return 1 if sent.failed else 0


# ---- history -----------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """`30m`, `2h`, `7d` ago; a date (midnight UTC); or an ISO 8601 time (UTC unless it says)."""
    value = text.strip()
    match = _RELATIVE.fullmatch(value.lower())
    if match:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected 30m, 2h, 7d, 2026-11-01 or 2026-11-01T09:30, got {text!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _history_row(record: HistoryRecord) -> list[str]:
    detail = " ".join(record.detail.split())
    if len(detail) > DETAIL_WIDTH:
        detail = detail[: DETAIL_WIDTH - 3] + "..."
    cells = [
        record.queued_at.replace("T", " ")[:19],
        record.refund_id,
        record.payment_id or "-",
        record.outcome.value,
        str(record.http_status or "-"),
        str(record.attempts),
        record.requested_by or "-",
        detail,
    ]
    return [terminal_safe(cell) for cell in cells]


def cmd_history(args: argparse.Namespace) -> int:
    try:
        outcome = Outcome.parse(args.outcome) if args.outcome else None
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as err:
        raise CliError(str(err), 2) from None
    if args.limit < 1:
        raise CliError("--limit must be at least 1", 2)
    store = _store(system(args))
    if args.refund_id:
        found = store.get(args.refund_id)
        records = [found] if found else []
    else:
        if since is None and args.payment_id:
            since = START_OF_TIME  # a payment's whole story, not just the last 30 days
        records = store.query(
            outcome=outcome,
            payment_id=args.payment_id,
            requested_by=args.requested_by,
            since=since,
            until=until,
            limit=args.limit,
        ).records
    if args.json:
        # The whole record (its attempt log too), not only the list's columns the index holds.
        for record in store.whole(records) if records and not args.refund_id else records:
            print(json_line(record.to_dict()))
        sys.stdout.flush()
        return 0
    if not records:
        _eprint("no refunds match (the default window is the last 30 days; see --since)")
        return 0
    headers = ["QUEUED (UTC)", "REFUND_ID", "PAYMENT_ID", "OUTCOME", "HTTP", "TRIES", "BY", "DETAIL"]
    print(_table(headers, [_history_row(r) for r in records]), flush=True)
    if args.refund_id:
        config = system(args)
        touched = AuditReader(config.table_name, config.client("dynamodb")).for_refund(args.refund_id)
        if touched:
            print("\nACTIONS", flush=True)
            print(_table(AUDIT_HEADERS, [_audit_row(e) for e in touched]), flush=True)
    return 0


AUDIT_HEADERS = ["AT (UTC)", "WHO", "AS", "ACTION", "RESULT", "COUNT", "REFUND_IDS"]


def _audit_row(entry: Any) -> list[str]:
    ids = " ".join(entry.refund_ids[:3]) + (" ..." if entry.count > 3 or len(entry.refund_ids) > 3 else "")
    cells = (
        entry.at.replace("T", " ")[:19],
        entry.who,
        entry.who_name or "-",
        entry.action,
        entry.result,
        str(entry.count),
        ids or "-",
    )
    return [terminal_safe(c) for c in cells]


def cmd_audit(args: argparse.Namespace) -> int:
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as err:
        raise CliError(str(err), 2) from None
    if args.action and args.action not in {a.value for a in Action}:
        raise CliError(f"unknown action {args.action!r}; use one of {', '.join(a.value for a in Action)}", 2)
    if args.limit < 1:
        raise CliError("--limit must be at least 1", 2)
    config = system(args)
    ctx = acting(args, config)
    actions.check_audit(ctx)
    reader = AuditReader(config.table_name, config.client("dynamodb"))
    try:
        page = reader.list(who=args.who, action=args.action, since=since, until=until, limit=args.limit)
    except ValueError as err:
        raise CliError(str(err), 2) from None
    if args.csv:
        sys.stdout.write(audit_csv(page.entries).decode("utf-8"))
        sys.stdout.flush()
        actions.record_export(ctx, "audit", len(page.entries), [], format="csv")
        return 0
    if args.json:
        for entry in page.entries:
            data = entry.to_json()
            data["refund_ids"] = reader.all_refund_ids(entry)
            print(json_line(data))
        sys.stdout.flush()
        return 0
    if not page.entries:
        _eprint("no audit records match (the default window is the last 30 days; see --since)")
        return 0
    print(_table(AUDIT_HEADERS, [_audit_row(e) for e in page.entries]), flush=True)
    if page.cursor:
        _eprint(f"showing the newest {len(page.entries)}; --limit or --since/--until for more")
    return 0


def cmd_users_add(args: argparse.Namespace) -> int:
    try:
        role = Role.parse(args.role)
    except ValueError as err:
        raise CliError(str(err), 2) from None
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CliError("the two passwords differ; nothing was saved", 2)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    config = system(args)
    try:
        user = UserStore(config.table_name, config.client("dynamodb")).add(args.name, password, role)
    except UserError as err:
        raise CliError(str(err), 2) from None
    _eprint(f"added {user.name} ({user.role.value})")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    config = system(args)
    users = UserStore(config.table_name, config.client("dynamodb")).list()
    if args.json:
        for user in users:
            print(
                json_line(
                    {
                        "name": user.name,
                        "role": user.role.value,
                        "locked_until": user.locked_until,
                        "created_at": user.created_at,
                    }
                )
            )
        sys.stdout.flush()
        return 0
    if not users:
        _eprint(f"no accounts; `{PROG} users add NAME --role viewer|operator|admin` creates one")
        return 0
    rows = [
        [terminal_safe(c) for c in (u.name, u.role.value, u.locked_until or "-", u.created_at or "-")]
        for u in users
    ]
    print(_table(["NAME", "ROLE", "LOCKED UNTIL", "CREATED (UTC)"], rows), flush=True)
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    config = system(args)
    try:
        UserStore(config.table_name, config.client("dynamodb")).remove(args.name)
    except UserError as err:
        raise CliError(str(err), 2) from None
    _eprint(f"removed {args.name}")
    return 0


# ---- dead-letter queue --------------------------------------------------------------------------------


def _dlq(args: argparse.Namespace) -> DeadLetterQueue:
    config = system(args)
    if not config.dlq_url:
        raise ConfigError("no dead-letter queue known: set DEAD_LETTER_QUEUE_URL or pass --stack-name")
    return DeadLetterQueue(config.client("sqs"), config.dlq_url, config.queue_url)


def cmd_dlq_list(args: argparse.Namespace) -> int:
    letters = _dlq(args).peek()
    if args.json:
        for letter in letters:
            print(
                json_line(
                    {
                        "message_id": letter.message_id,
                        "payment_id": letter.payment_id,
                        "refund_id": letter.refund_id,
                        "receive_count": letter.receive_count,
                        "sent_at": _ms_iso(letter.sent_at_ms),
                        "body": letter.body,
                    }
                )
            )
        sys.stdout.flush()
        return 0
    if not letters:
        _eprint("the dead-letter queue is empty")
        return 0
    rows = [
        [
            terminal_safe(cell)
            for cell in (
                letter.message_id,
                letter.payment_id or "-",
                letter.refund_id or "-",
                str(letter.receive_count),
                _ms_iso(letter.sent_at_ms),
            )
        ]
        for letter in letters
    ]
    print(_table(["MESSAGE_ID", "PAYMENT_ID", "REFUND_ID", "RECEIVES", "SENT (UTC)"], rows), flush=True)
    _eprint(f"{len(letters)} message(s); `{PROG} dlq redrive --all` (or MESSAGE_IDs) sends them back")
    return 0


def _ms_iso(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    if args.all == bool(args.message_ids):
        raise CliError("give --all or the MESSAGE_IDs to send back (see `dlq list`)", 2)
    config = system(args)
    moved = actions.redrive(acting(args, config), _dlq(args), None if args.all else args.message_ids)
    for message_id in moved:
        print(terminal_safe(message_id))
    sys.stdout.flush()
    sent = f"sent {len(moved)} message(s) back to the refund queue"
    missing = [] if args.all else [m for m in args.message_ids if m not in moved]
    if missing:
        raise CliError(f"{sent}; not in the dead-letter queue: {', '.join(missing)}")
    _eprint(sent)
    return 0


# ---- day counters --------------------------------------------------------------------------------------


def _utc_day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"{option} takes a UTC day as YYYY-MM-DD, got {text!r}", 2) from None


def cmd_counters_recount(args: argparse.Namespace) -> int:
    """Set the day counters of the given UTC days to what the refunds of those days say."""
    since = _utc_day(args.since, "--since")
    until = since if args.until is None else _utc_day(args.until, "--until")
    if until < since:
        raise CliError("--until is before --since", 2)
    count = (until - since).days + 1
    if count > RECOUNT_MAX_DAYS:
        raise CliError(f"at most {RECOUNT_MAX_DAYS} days at a time, asked for {count}", 2)
    config = system(args)
    days = [since + timedelta(days=n) for n in range(count)]

    def show(result: DayRecount) -> None:
        counts = ", ".join(f"{k} {v}" for k, v in result.counts.items()) or "no refunds"
        was = (
            ""
            if not result.changed
            else " (was: " + (", ".join(f"{k} {v}" for k, v in result.before.items()) or "nothing") + ")"
        )
        print(terminal_safe(f"{result.day}: {counts}{was}"), flush=True)

    done = recount_days(DayRecounter(config.table_name, config.client("dynamodb")), days, show)
    changed = sum(1 for r in done if r.changed)
    _eprint(f"set the counters of {len(done)} day(s); {changed} had been off")
    return 0


# ---- billing webhooks ---------------------------------------------------------------------------------

REASON_WIDTH = 60


def _webhook_reader(config: SystemConfig) -> WebhookReader:
    return WebhookReader(config.table_name, config.client("dynamodb"))


def cmd_webhooks(args: argparse.Namespace) -> int:
    """Received events, newest first (one JSON object per line with --json)."""
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as err:
        raise CliError(str(err), 2) from None
    if args.limit < 1:
        raise CliError("--limit must be at least 1", 2)
    reader = _webhook_reader(system(args))
    try:
        page = reader.events(
            since=since, until=until, provider=args.provider, decision=args.decision, limit=args.limit
        )
    except ValueError as err:
        raise CliError(str(err), 2) from None
    if args.json:
        for event in page.events:
            print(json_line(event.to_json()))
        sys.stdout.flush()
        return 0
    if not page.events:
        _eprint("no webhook events match (the default window is the last 7 days; see --since)")
        return 0
    rows = []
    for event in page.events:
        reason = " ".join(event.reason.split())
        if len(reason) > REASON_WIDTH:
            reason = reason[: REASON_WIDTH - 3] + "..."
        cells = (
            event.received_at.replace("T", " ")[:19],
            event.provider,
            event.type or "-",
            event.decision,
            event.refund_id or "-",
            event.payment_id or "-",
            reason,
        )
        rows.append([terminal_safe(cell) for cell in cells])
    headers = ["RECEIVED (UTC)", "PROVIDER", "TYPE", "DECISION", "REFUND_ID", "PAYMENT_ID", "REASON"]
    print(_table(headers, rows), flush=True)
    if page.cursor:
        _eprint(f"showing the newest {len(page.events)}; --limit or --since/--until for more")
    return 0


def cmd_webhooks_reviews(args: argparse.Namespace) -> int:
    reviews = _webhook_reader(system(args)).open_reviews(args.provider)
    if args.json:
        for review in reviews:
            print(
                json_line(
                    {
                        "refund_id": review.refund_id,
                        "provider": review.provider,
                        "payment_id": review.request.payment_id,
                        "event_id": review.event_id,
                        "opened_at": review.opened_at,
                        "reason": review.reason,
                    }
                )
            )
        sys.stdout.flush()
        return 0
    if not reviews:
        _eprint("no partial refund awaits a decision")
        return 0
    rows = [
        [
            terminal_safe(cell)
            for cell in (
                review.opened_at.replace("T", " ")[:19],
                review.provider,
                review.refund_id,
                review.request.payment_id,
                " ".join(review.reason.split())[:REASON_WIDTH],
            )
        ]
        for review in reviews
    ]
    print(_table(["OPENED (UTC)", "PROVIDER", "REFUND_ID", "PAYMENT_ID", "REASON"], rows), flush=True)
    _eprint(f"{len(reviews)} open review(s); `{PROG} webhooks submit|dismiss REFUND_ID` decides one")
    return 0


def cmd_webhooks_submit(args: argparse.Namespace) -> int:
    config = system(args)
    ctx = acting(args, config)
    operator = ctx.actor.requested_by
    events = EventStore(config.table_name, config.client("dynamodb"))
    try:
        done = actions.submit(ctx, args.refund_id, events=events, producer=_producer(config))
    except ReviewError as err:
        raise CliError(str(err)) from None
    print(terminal_safe(done.refund_id), flush=True)
    if done.message_id is None:
        _eprint(f"refund {done.refund_id} had been requested already; the review is closed, nothing sent")
    else:
        _eprint(f"queued refund {done.refund_id}, requested by {operator} ({config.origin})")
    return 0


def cmd_webhooks_dismiss(args: argparse.Namespace) -> int:
    config = system(args)
    ctx = acting(args, config)
    events = EventStore(config.table_name, config.client("dynamodb"))
    try:
        review = actions.dismiss(ctx, args.refund_id, events=events)
    except ReviewError as err:
        raise CliError(str(err)) from None
    print(terminal_safe(review.refund_id), flush=True)
    _eprint(f"dismissed {review.refund_id} (nothing queued); a later event for it opens it again")
    return 0


def _sample_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment, with the running local stack's receiver URL and secrets where it has none."""
    env = dict(os.environ)
    if getattr(args, "data_dir", None):
        env["REDITUS_LOCAL_DATA_DIR"] = str(args.data_dir)
    return {**local_webhook_env(env), **os.environ}


def _sample_url(args: argparse.Namespace, env: dict[str, str]) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    given = webhook_url(None, env)
    if given:
        return given
    try:
        config = system(args)
    except ConfigError:
        config = None
    found = webhook_url(config)
    if not found:
        raise CliError(
            f"no webhook URL known: pass --url, set {WEBHOOK_URL_ENV} "
            '(eval "$(reditus-refunds local env)" for the local stack), or --stack-name a deployed stack',
            2,
        )
    return found


def cmd_webhooks_send_sample(args: argparse.Namespace) -> int:
    env = _sample_env(args)
    url = _sample_url(args, env)
    try:
        sent = send_sample(args.provider, url, env, partial=args.partial, payment_id=args.payment_id)
    except SampleError as err:
        raise CliError(str(err)) from None
    print(json_line({"status_code": sent.status, **sent.answer}), flush=True)
    kind = "partial" if sent.sample.partial else "full"
    _eprint(
        f"posted a {kind} {sent.sample.provider} {sent.sample.event_type} ({sent.sample.event_id}, "
        f"payment {sent.sample.payment_id}) to {sent.url}: HTTP {sent.status}"
    )
    return 0 if 200 <= sent.status < 300 else 1


# ---- console and local stack ---------------------------------------------------------------------------


def cmd_console(args: argparse.Namespace) -> int:
    config = system(args)
    try:
        port = check_port(args.port or port_from_env())
        _eprint(f"console for {config.origin}: http://{HOST}:{port} (Ctrl-C stops it)")
        return run_console(config, port)
    except ConsoleError as err:
        raise CliError(str(err)) from None


def _import_local_stack() -> None:
    """The local stack (infra/reditus_local), only when asked for: an installed tool has none."""
    try:
        import reditus_local.stack  # noqa: F401 - only whether it imports
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] == "reditus_local":
            raise CliError(LOCAL_STACK_MISSING, 2) from None
        raise CliError(
            f"the local stack cannot start: {err.name} is not installed (run `make install`)"
        ) from None


def cmd_local_up(args: argparse.Namespace) -> int:
    _import_local_stack()
    from reditus_local.resources import DEFAULT_TEMPLATE, parse_parameter
    from reditus_local.stack import StackError, StackOptions, port_from_env, real_reditus_from_env, up

    try:
        parameters = dict(parse_parameter(p) for p in args.parameter)
    except ValueError as err:
        raise CliError(f"--parameter: {err}", 2) from None
    if not 0 <= args.fault_rate <= 1:
        raise CliError("--fault-rate must be between 0 and 1", 2)
    for name in ("visibility_timeout", "max_receive_count"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "visibility_timeout" else 1):
            raise CliError(f"--{name.replace('_', '-')} is too small: {value}", 2)
    try:
        base_url, key = real_reditus_from_env()
    except StackError as err:
        raise CliError(str(err), 2) from None
    options = StackOptions(
        data_dir=_data_dir(args),
        moto_port=args.moto_port or port_from_env("moto"),
        simulator_port=args.simulator_port or port_from_env("simulator"),
        console_port=args.console_port or port_from_env("console"),
        fresh=args.fresh,
        console=not args.no_console,
        fault_rate=args.fault_rate,
        visibility_timeout=args.visibility_timeout,
        max_receive_count=args.max_receive_count,
        parameters=parameters,
        template=Path(args.template) if args.template else DEFAULT_TEMPLATE,
        verbose=args.verbose,
        reditus_base_url=base_url,
        reditus_api_key=key,
    )
    try:
        return up(options)
    except StackError as err:
        raise CliError(str(err)) from None


def cmd_local_env(args: argparse.Namespace) -> int:
    state = _local_state(args)
    lines = from_local_state(state).export_lines()
    lines.append(f"export REDITUS_LOCAL_DATA_DIR={state.get('data_dir') or _data_dir(args).resolve()}")
    # The webhook receiver's URL and this stack's signing secrets (written by reditus_local.stack).
    for name, value in sorted((state.get("webhook_env") or {}).items()):
        lines.append(f"export {name}={shlex.quote(str(value))}")
    print("\n".join(lines), flush=True)
    return 0


# ---- the parser ------------------------------------------------------------------------------------------


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Refunds to Reditus: queue them, follow them, and run the whole system locally.",
    )
    parser.add_argument(
        "--stack-name", help="a deployed stack (CloudFormation outputs); default: the local stack"
    )
    parser.add_argument(
        "--data-dir", help="the local stack's data folder (default $REDITUS_LOCAL_DATA_DIR or .local-data)"
    )
    parser.add_argument(
        "--as",
        dest="as_name",
        metavar="NAME",
        help="a readable name recorded next to your AWS identity (never instead of it)",
    )
    parser.add_argument(
        "--role",
        choices=[r.value for r in Role],
        help="act with less than admin (your AWS credentials' policy is what limits you on AWS)",
    )
    # The same two options after the command too (SUPPRESS: given there, they win; absent, no override).
    common = OneLineParser(add_help=False)
    common.add_argument("--stack-name", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--as", dest="as_name", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--role", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    enqueue = commands.add_parser(
        "enqueue", parents=[common], help="queue one refund (prints its refund_id) or a CSV of them"
    )
    enqueue.add_argument("payment_id", nargs="?", metavar="PAYMENT_ID")
    enqueue.add_argument("--csv", metavar="FILE", help="a CSV with a payment_id column (and optionally note)")
    enqueue.add_argument("--note", help="free text kept with the refund")
    enqueue.add_argument("--requested-by", help="same as --as (kept for scripts)")
    enqueue.add_argument("--force", action="store_true", help="queue even if already refunded or in flight")
    enqueue.add_argument(
        "--skip-invalid", action="store_true", help="CSV: queue the valid rows despite bad ones"
    )
    enqueue.add_argument(
        "--check-history", action="store_true", help="CSV: skip payments already refunded or in flight"
    )
    enqueue.add_argument("--dry-run", action="store_true", help="CSV: check the file, queue nothing")
    enqueue.set_defaults(func=cmd_enqueue)

    history = commands.add_parser(
        "history", parents=[common], help="refunds and their outcomes, newest first"
    )
    history.add_argument(
        "--outcome",
        help="200, 400, 404 or an outcome name: refunded, rejected, not_found, "
        "invalid, pending, retrying, duplicate, failed, dead_lettered",
    )
    history.add_argument("--payment-id", help="one payment's refunds (all time unless --since)")
    history.add_argument("--refund-id", help="one refund")
    history.add_argument("--requested-by", help="only refunds asked for by this person")
    history.add_argument("--since", help="30m, 2h, 7d, a date or an ISO time (default: 30 days ago)")
    history.add_argument("--until", help="as --since (default: now)")
    history.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    history.set_defaults(func=cmd_history)

    dlq = commands.add_parser("dlq", help="the dead-letter queue: list, redrive")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    dlq_list = dlq_commands.add_parser("list", parents=[common], help="the messages SQS gave up on")
    dlq_list.add_argument("--json", action="store_true", help="one JSON object per line")
    dlq_list.set_defaults(func=cmd_dlq_list)
    redrive = dlq_commands.add_parser("redrive", parents=[common], help="send dead letters back to the queue")
    redrive.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
    redrive.add_argument("--all", action="store_true", help="every message in the dead-letter queue")
    redrive.set_defaults(func=cmd_dlq_redrive)

    webhooks = commands.add_parser(
        "webhooks",
        parents=[common],
        help="billing webhooks: received events, partial refunds to decide, signed samples",
        description="Without an action: the received events, newest first.",
    )
    webhooks.add_argument("--provider", choices=PROVIDERS, help="one provider's events")
    webhooks.add_argument("--decision", choices=RECORDED_DECISIONS, help="only events with this decision")
    webhooks.add_argument("--since", help="30m, 2h, 7d, a date or an ISO time (default: 7 days ago)")
    webhooks.add_argument("--until", help="as --since (default: now)")
    webhooks.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    webhooks.add_argument("--json", action="store_true", help="one JSON object per line")
    webhooks.set_defaults(func=cmd_webhooks)
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", metavar="ACTION")
    reviews = webhook_commands.add_parser(
        "reviews", parents=[common], help="partial refunds awaiting a decision, oldest first"
    )
    reviews.add_argument("--provider", choices=PROVIDERS, help="one provider's reviews")
    reviews.add_argument("--json", action="store_true", help="one JSON object per line")
    reviews.set_defaults(func=cmd_webhooks_reviews)
    for name, func, what in (
        ("submit", cmd_webhooks_submit, "queue a reviewed partial refund (its refund_id as listed)"),
        ("dismiss", cmd_webhooks_dismiss, "close a review without queueing anything"),
    ):
        decide = webhook_commands.add_parser(name, parents=[common], help=what)
        decide.add_argument("refund_id", metavar="REFUND_ID")
        decide.add_argument("--requested-by", help="same as --as (kept for scripts)")
        decide.set_defaults(func=func)
    sample = webhook_commands.add_parser(
        "send-sample",
        parents=[common],
        help="post a signed sample refund event of a provider to the webhook receiver",
    )
    sample.add_argument("provider", choices=PROVIDERS, metavar="PROVIDER", help=", ".join(PROVIDERS))
    sample.add_argument("--partial", action="store_true", help="refund half the payment instead of all")
    sample.add_argument("--payment-id", help="the id the event names (default: a new one)")
    sample.add_argument("--url", help=f"the receiver's base URL (default ${WEBHOOK_URL_ENV} or the stack's)")
    sample.set_defaults(func=cmd_webhooks_send_sample)

    audit = commands.add_parser("audit", parents=[common], help="the audit log: who did what (admins)")
    audit.add_argument("--who", help="one person's actions (their identity as recorded)")
    audit.add_argument("--action", help=", ".join(a.value for a in Action))
    audit.add_argument("--since", help="30m, 2h, 7d, a date or an ISO time (default: 30 days ago)")
    audit.add_argument("--until", help="as --since (default: now)")
    audit.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    output = audit.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object per line")
    output.add_argument("--csv", action="store_true", help="CSV on standard output")
    audit.set_defaults(func=cmd_audit)

    users = commands.add_parser("users", help="password mode's accounts: add, list, remove")
    user_commands = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    # Its --role is the account's, not the acting one: a parent without the shared --role (argparse's
    # "resolve" would strip it from the shared action, for every command).
    account = OneLineParser(add_help=False)
    account.add_argument("--stack-name", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    account.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    users_add = user_commands.add_parser(
        "add",
        parents=[account],
        help="add an account (password from stdin, else prompted twice)",
    )
    users_add.add_argument("name", metavar="NAME")
    users_add.add_argument("--role", required=True, choices=[r.value for r in Role])
    users_add.set_defaults(func=cmd_users_add)
    users_list = user_commands.add_parser("list", parents=[common], help="the accounts and their roles")
    users_list.add_argument("--json", action="store_true", help="one JSON object per line")
    users_list.set_defaults(func=cmd_users_list)
    users_remove = user_commands.add_parser("remove", parents=[common], help="remove an account")
    users_remove.add_argument("name", metavar="NAME")
    users_remove.set_defaults(func=cmd_users_remove)

    counters = commands.add_parser("counters", help="the day counters the console's charts read: recount")
    counter_commands = counters.add_subparsers(dest="counters_command", metavar="ACTION", required=True)
    recount = counter_commands.add_parser(
        "recount",
        parents=[common],
        help="set the counters of UTC days to what their refunds say (after a migration or a long "
        "stream outage; exact when those days' refunds do not change meanwhile)",
    )
    recount.add_argument("--since", required=True, help="the first UTC day, YYYY-MM-DD")
    recount.add_argument(
        "--until", help=f"the last UTC day, YYYY-MM-DD (default: --since; at most {RECOUNT_MAX_DAYS} days)"
    )
    recount.set_defaults(func=cmd_counters_recount)

    console = commands.add_parser("console", parents=[common], help="the Streamlit console on its own")
    console.add_argument("--port", type=int, help="default $REDITUS_LOCAL_CONSOLE_PORT or 8501")
    console.set_defaults(func=cmd_console)

    local = commands.add_parser("local", help="the whole system on this machine")
    local_commands = local.add_subparsers(dest="local_command", metavar="ACTION", required=True)
    local_up = local_commands.add_parser(
        "up", parents=[common], help="start moto, the Reditus simulator, the worker and the console"
    )
    local_up.add_argument(
        "--fresh", action="store_true", help="start empty instead of restoring the saved state"
    )
    local_up.add_argument("--no-console", action="store_true", help="do not start the console")
    local_up.add_argument("--moto-port", type=int, help="default $REDITUS_LOCAL_MOTO_PORT or 5005")
    local_up.add_argument("--simulator-port", type=int, help="default $REDITUS_LOCAL_SIMULATOR_PORT or 8100")
    local_up.add_argument("--console-port", type=int, help="default $REDITUS_LOCAL_CONSOLE_PORT or 8501")
    local_up.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="share of simulator answers that are transient faults (429, 5xx, slow, dropped), 0..1",
    )
    local_up.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a template parameter, e.g. NotFoundGraceSeconds=900 (repeatable)",
    )
    local_up.add_argument(
        "--visibility-timeout", type=int, help="seconds; for tests (default: the template's)"
    )
    local_up.add_argument("--max-receive-count", type=int, help="for tests (default: the template's)")
    local_up.add_argument("--template", help="default: template.yaml of this project")
    local_up.add_argument(
        "--verbose", action="store_true", help="every AWS request and the handler's INFO logs"
    )
    local_up.set_defaults(func=cmd_local_up)
    local_env = local_commands.add_parser(
        "env",
        parents=[common],
        help='export lines for the running local stack: eval "$(reditus-refunds local env)"',
    )
    local_env.set_defaults(func=cmd_local_env)
    return parser


def _aws_message(err: BaseException, args: argparse.Namespace | None) -> str:
    """One line: what failed (reditus_refunds.aws_errors says it) and what to check."""
    if not isinstance(err, AwsError):
        err = aws_error(err, AwsError, service="AWS", resource="an AWS resource", names_hint="the stack name")
    message = str(err)
    if err.code == "Unreachable" and args is not None and not getattr(args, "stack_name", None):
        return f"{message} - is the local stack running? (make run)"
    return f"{message}. {err.hint}" if err.hint else message


def main(argv: Sequence[str] | None = None) -> int:
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except CliError as err:
        code, message = err.code, str(err)
    except (ContractError, CsvError) as err:
        code, message = 2, str(err)
    except AccessDenied as err:
        code, message = 1, f"refused: {err}"
    except UserError as err:
        code, message = 2, str(err)
    except (ConfigError, SettingsError) as err:
        code, message = 1, str(err)
    except (AwsError, BotoCoreError, ClientError) as err:
        code, message = 1, _aws_message(err, args)
    except KeyboardInterrupt:
        code, message = 130, "interrupted"
    except BrokenPipeError:
        # The reader (head, less) went away: not an error worth a word.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    except Exception as err:  # the promise is one line, never a traceback
        code, message = 1, f"unexpected {type(err).__name__}: {err}"
    if not message.startswith(PROG):
        message = f"{PROG}: error: {message}"
    _eprint(_one_line(message))
    return code


if __name__ == "__main__":
    sys.exit(main())
