"""The figures: bench/results.json (exactly the tracked keys), the printed table, docs/performance.md."""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import calls, pricing
from .batches import BatchFigures, Samples
from .bulk import BulkFigures
from .calls import CallFigures
from .counting import DDB_READS, DDB_WRITES
from .e2e import E2EFigures
from .machine import Machine
from .memory import MemoryFigures
from .procs import ROOT
from .startup import StartupFigures
from .webhooks import WebhookCost, WebhookInit, WebhookLatency

RESULTS = ROOT / "bench" / "results.json"
DOC = ROOT / "docs" / "performance.md"

KEYS = (
    "batch10_overhead_ms",
    "batch10_vs_limit",
    "batch10_vs_sequential",
    "init_vs_bare",
    "ddb_writes_per_refund",
    "ddb_reads_per_refund",
    "usd_per_million_refunds",
    "usd_per_million_refunds_sequential",
    "history_items_read_first_page_10k",
    "history_items_read_first_page_100k",
    "history_items_read_requested_by_rare_100k",
    "history_items_read_pending_rare_100k",
    "summary_items_read_30_days",
    "bulk_10k_send_calls",
    "bulk_10k_vs_raw",
    "peak_rss_mb_batch10",
    "e2e_refunds_per_second",
    "webhook_init_vs_bare",
    "webhook_p50_ms",
    "webhook_p99_ms",
    "webhook_p50_ms_concurrent20",
    "webhook_p99_ms_concurrent20",
    "wru_per_refund",
    "rru_per_refund",
    "wru_per_webhook_refund",
    "rru_per_webhook_refund",
    "wru_per_webhook_replay",
)


@dataclass
class Figures:
    machine: Machine
    batches: BatchFigures
    calls: CallFigures
    bulk: BulkFigures
    memory: MemoryFigures
    startup: StartupFigures
    history: dict[str, dict[str, int]]
    e2e: E2EFigures
    webhook_init: WebhookInit
    webhook_latency: WebhookLatency
    webhook_cost: WebhookCost
    seconds: float

    def usage(self, batch_ms: float) -> pricing.PerRefund:
        calls = self.calls
        return pricing.PerRefund(
            handler_ms=batch_ms / pricing.BATCH,
            wru=calls.wru_per_refund,
            rru=calls.rru_per_refund,
            sqs_requests=calls.sqs_requests_per_refund,
            log_bytes=calls.log_bytes / calls.refunds,
        )

    @property
    def cost(self) -> pricing.Cost:
        return pricing.per_million(self.usage(self.batches.ours_100.median))

    @property
    def cost_sequential(self) -> pricing.Cost:
        return pricing.per_million(self.usage(self.batches.textbook_100.median))

    def results(self) -> dict[str, float]:
        b, c, w = self.batches, self.calls, self.webhook_latency
        values: dict[str, float] = {
            "batch10_overhead_ms": round(b.overhead_ms, 1),
            "batch10_vs_limit": round(b.vs_limit, 3),
            "batch10_vs_sequential": round(b.vs_sequential, 2),
            "init_vs_bare": round(self.startup.ratio, 3),
            "ddb_writes_per_refund": round(c.per_refund(c.lambda_ddb, DDB_WRITES), 3),
            "ddb_reads_per_refund": round(c.per_refund(c.lambda_ddb, DDB_READS), 3),
            "usd_per_million_refunds": round(self.cost.total, 2),
            "usd_per_million_refunds_sequential": round(self.cost_sequential.total, 2),
            "history_items_read_first_page_10k": self.history["10000"]["page_items"],
            "history_items_read_first_page_100k": self.history["100000"]["page_items"],
            "history_items_read_requested_by_rare_100k": self.history["100000"]["requested_by_rare_items"],
            "history_items_read_pending_rare_100k": self.history["100000"]["pending_rare_items"],
            "summary_items_read_30_days": self.history["100000"]["summary_items"],
            "bulk_10k_send_calls": self.bulk.send_calls,
            "bulk_10k_vs_raw": round(self.bulk.vs_raw, 2),
            "peak_rss_mb_batch10": round(self.memory.median, 1),
            "e2e_refunds_per_second": round(self.e2e.per_second, 2),
            "webhook_init_vs_bare": round(self.webhook_init.ratio, 3),
            "webhook_p50_ms": round(w.p(w.sequential_ms, 0.5), 1),
            "webhook_p99_ms": round(w.p(w.sequential_ms, 0.99), 1),
            "webhook_p50_ms_concurrent20": round(w.p(w.concurrent_ms, 0.5), 1),
            "webhook_p99_ms_concurrent20": round(w.p(w.concurrent_ms, 0.99), 1),
            "wru_per_refund": round(c.wru_per_refund, 2),
            "rru_per_refund": round(c.rru_per_refund, 2),
            "wru_per_webhook_refund": round(self.webhook_cost.wru_per_webhook_refund, 2),
            "rru_per_webhook_refund": round(self.webhook_cost.rru_per_webhook_refund, 2),
            "wru_per_webhook_replay": round(self.webhook_cost.wru_per_webhook_replay, 2),
        }
        assert tuple(values) == KEYS
        return values

    # ---- the table -------------------------------------------------------------------------------
    def rows(self) -> list[tuple[str, str, str]]:
        r = self.results()
        b, s = self.batches, self.startup
        wi, wl = self.webhook_init, self.webhook_latency
        e2e_note = "all settled" if self.e2e.complete else f"only {self.e2e.settled} settled: cut off"
        return [
            ("batch10_overhead_ms", f"{r['batch10_overhead_ms']}", "10 refunds, Reditus answering at once"),
            (
                "batch10_vs_limit",
                f"{r['batch10_vs_limit']}",
                f"target <= 1.2 ({b.ours_100.median:.0f} ms at 100 ms)",
            ),
            (
                "batch10_vs_sequential",
                f"{r['batch10_vs_sequential']}",
                f"textbook {b.textbook_100.median:.0f} ms vs ours {b.ours_100.median:.0f} ms",
            ),
            (
                "init_vs_bare",
                f"{r['init_vs_bare']}",
                f"target <= 1.15 ({s.handler_median:.0f} vs {s.bare_median:.0f} ms CPU bare, {s.where})",
            ),
            (
                "ddb_writes_per_refund",
                f"{r['ddb_writes_per_refund']}",
                "Lambda's write calls; issue 6's target <= 3 traded for cost by issue 15 (4 single writes "
                "bill half the units of 2 transactions of two)",
            ),
            ("ddb_reads_per_refund", f"{r['ddb_reads_per_refund']}", "Lambda's read calls"),
            (
                "usd_per_million_refunds",
                f"{r['usd_per_million_refunds']}",
                f"{pricing.REGION} list prices of {pricing.PRICES_DATE}",
            ),
            (
                "usd_per_million_refunds_sequential",
                f"{r['usd_per_million_refunds_sequential']}",
                "textbook handler",
            ),
            (
                "history_items_read_first_page_10k",
                f"{r['history_items_read_first_page_10k']}",
                "50-row page, 7 days: 50 keys from by_day, then those 50 items by key",
            ),
            (
                "history_items_read_first_page_100k",
                f"{r['history_items_read_first_page_100k']}",
                "must equal 10k",
            ),
            (
                "history_items_read_requested_by_rare_100k",
                f"{r['history_items_read_requested_by_rare_100k']}",
                "one refund of a person among 100k, 90 days: page + small constant",
            ),
            (
                "history_items_read_pending_rare_100k",
                f"{r['history_items_read_pending_rare_100k']}",
                "one pending refund among 100k, 30 days, deep in a day of ~3,300: the 30 day counters "
                "(which list their days' pending refunds) and that refund by key; no Query",
            ),
            ("summary_items_read_30_days", f"{r['summary_items_read_30_days']}", "one counter item per day"),
            ("bulk_10k_send_calls", f"{r['bulk_10k_send_calls']}", "SendMessageBatch calls"),
            (
                "bulk_10k_vs_raw",
                f"{r['bulk_10k_vs_raw']}",
                f"{self.bulk.product_s:.1f} s vs raw {self.bulk.raw_s:.1f} s, DynamoDB and SQS on two moto "
                f"servers; on one: {self.bulk.vs_raw_one_server:.2f}",
            ),
            (
                "peak_rss_mb_batch10",
                f"{r['peak_rss_mb_batch10']}",
                f"bare boto3+requests: {self.memory.bare_mb:.0f} MB",
            ),
            (
                "e2e_refunds_per_second",
                f"{r['e2e_refunds_per_second']}",
                f"{self.e2e.refunds} refunds, {e2e_note}",
            ),
            (
                "webhook_init_vs_bare",
                f"{r['webhook_init_vs_bare']}",
                f"target <= 1.3 ({wi.receiver.cpu:.0f} vs {wi.bare.cpu:.0f} ms CPU bare, {wi.python})",
            ),
            (
                "webhook_p50_ms",
                f"{r['webhook_p50_ms']}",
                f"one sender, {len(wl.sequential_ms)} refund events",
            ),
            ("webhook_p99_ms", f"{r['webhook_p99_ms']}", "one sender"),
            (
                "webhook_p50_ms_concurrent20",
                f"{r['webhook_p50_ms_concurrent20']}",
                f"20 senders, {len(wl.concurrent_ms)} refund events",
            ),
            ("webhook_p99_ms_concurrent20", f"{r['webhook_p99_ms_concurrent20']}", "20 senders"),
            (
                "wru_per_refund",
                f"{r['wru_per_refund']}",
                "DynamoDB write units, all in: producer, Lambda, counters, table and indexes",
            ),
            ("rru_per_refund", f"{r['rru_per_refund']}", "DynamoDB read units, all in"),
            (
                "wru_per_webhook_refund",
                f"{r['wru_per_webhook_refund']}",
                f"a refund from a billing webhook: the receiver's records and pending record "
                f"({self.webhook_cost.events} events) + the Lambda's share above",
            ),
            ("rru_per_webhook_refund", f"{r['rru_per_webhook_refund']}", "the same, read units"),
            (
                "wru_per_webhook_replay",
                f"{r['wru_per_webhook_replay']}",
                f"a provider's retry of a handled event ({self.webhook_cost.replays} replays)",
            ),
        ]

    def details(self) -> list[str]:
        b, c, s, bulk, e2e = self.batches, self.calls, self.startup, self.bulk, self.e2e
        wi = self.webhook_init
        cost, seq = self.cost, self.cost_sequential
        n = c.refunds

        def ops(counter: dict[str, int]) -> str:
            return ", ".join(f"{op} {count / n:.3g}" for op, count in sorted(counter.items())) or "none"

        def ms(samples: Samples) -> str:
            return f"{samples.median:.0f} ({samples.cpu_median:.0f} CPU)"

        m = c.priced
        by_call = sorted(
            (op, sum(part.per_op.get(op, 0.0) for part in c.parts))
            for op in {op for part in c.parts for op in part.per_op}
        )
        packages = ", ".join(f"{name} {value:.0f}" for name, value in s.breakdown)
        rss = ", ".join(f"{m:.1f}" for m in self.memory.handler_mb)
        return [
            f"Batch of 10, median ms: ours {ms(b.ours_0)} at 0 ms, {ms(b.ours_100)} at 100 ms; "
            f"textbook {ms(b.textbook_0)} at 0 ms, {ms(b.textbook_100)} at 100 ms "
            f"({len(b.ours_0.wall_ms)} and {len(b.ours_100.wall_ms)} rounds)",
            f"DynamoDB in moto (one request at a time): {b.textbook_0.ddb_calls_per_batch:.0f} calls per "
            f"batch, {b.textbook_0.ddb_ms_per_call:.1f} ms each when made one after the other (textbook at "
            f"0 ms), so {b.textbook_0.ddb_calls_per_batch * b.textbook_0.ddb_ms_per_call:.0f} ms of every "
            "batch is moto's; ours waits on them concurrently",
            f"Calls per refund, Lambda: DynamoDB {ops(c.lambda_ddb)}; SQS {ops(c.lambda_sqs)}",
            f"Calls per refund, producer (console, CSV): DynamoDB {ops(c.producer_ddb)}; "
            f"SQS {ops(c.producer_sqs)}",
            f"Calls per refund, event source mapping: SQS {ops(c.esm_sqs)}",
            f"Request units per refund (over {m}): "
            + "; ".join(
                f"{name} {u.wru / m:.2f} WRU table + {u.gsi_wru / m:.2f} WRU indexes + {u.rru / m:.2f} RRU"
                for name, u in zip(("producer", "Lambda", "counters' stream function"), c.parts, strict=True)
            )
            + f" (the stream function invoked {c.counter_invocations} times, once per "
            f"{calls.STREAM_EVERY} refunds)",
            "Request units per refund by call: " + ", ".join(f"{op} {u / m:.2f}" for op, u in by_call),
            self._webhook_cost_line(),
            f"USD per million refunds, ours: Lambda {cost.lambda_usd:.2f}, DynamoDB {cost.dynamodb_usd:.2f}, "
            f"SQS {cost.sqs_usd:.2f} (CloudWatch Logs, not added: {cost.logs_usd:.2f} for "
            f"{c.log_bytes / n:.0f} bytes/refund); textbook: Lambda {seq.lambda_usd:.2f}",
            f"Import and init ({s.where}), median ms over {len(s.handler.cpu_ms)} fresh processes: "
            f"handler {s.handler.cpu:.0f} CPU ({s.handler.wall:.0f} wall), bare {s.bare.cpu:.0f} CPU "
            f"({s.bare.wall:.0f} wall): {s.wall_ratio:.3f} by wall time; handler by package (one run): "
            f"{packages}",
            f"Import and init without bytecode (as SAM's default builder would ship it), median ms over "
            f"{len(s.source_handler.cpu_ms)}: handler {s.source_handler.cpu:.0f} CPU, bare "
            f"{s.source_bare.cpu:.0f} CPU",
            f"Webhook receiver import and init ({wi.python}), median ms over {len(wi.receiver.cpu_ms)}: "
            f"receiver {wi.receiver.cpu:.0f} CPU ({wi.receiver.wall:.0f} wall), bare {wi.bare.cpu:.0f} CPU "
            f"({wi.bare.wall:.0f} wall): {wi.wall_ratio:.3f} by wall time; by package (one run): "
            + ", ".join(f"{name} {value:.0f}" for name, value in wi.breakdown),
            f"History: first page {self.history['10000']['page_calls']} Query call at 10k and "
            f"{self.history['100000']['page_calls']} at 100k; summary "
            f"{self.history['100000']['summary_calls']} BatchGetItem call",
            f"Bulk 10k: product {bulk.product_s:.1f} s with DynamoDB and SQS on two moto servers "
            f"({bulk.vs_raw:.2f} of raw), {bulk.product_one_server_s:.1f} s with both on one "
            f"({bulk.vs_raw_one_server:.2f} of raw); SQS-only path {bulk.sqs_only_s:.1f} s; "
            f"raw {bulk.raw_s:.1f} s; {bulk.send_calls} SendMessageBatch + {bulk.pending_ddb_calls} "
            f"DynamoDB calls (pending records) vs raw {bulk.raw_calls} SendMessageBatch",
            f"Peak RSS, MB: {rss} (bare {self.memory.bare_mb:.1f})",
            f"End to end: {e2e.settled} settled in {e2e.seconds:.1f} s (queueing took "
            f"{e2e.queue_seconds:.1f} s); settled by: "
            + ", ".join(f"{count} at {t:.0f} s" for count, t in e2e.milestones),
        ]

    def _webhook_cost_line(self) -> str:
        wc = self.webhook_cost
        calls = ", ".join(f"{op} {n / wc.events:.3g}" for op, n in sorted(wc.calls.items()))
        replay_calls = ", ".join(f"{op} {n / wc.replays:.3g}" for op, n in sorted(wc.replay_calls.items()))
        units = ", ".join(f"{op} {u:.2f}" for op, u in wc.by_call())
        return (
            f"Webhook refund (in-process receiver, {wc.events} Stripe charge.refunded events, each a new "
            f"refund): receiver calls per event {calls}; request units per event by call: {units}; "
            f"plus the Lambda's {wc.lambda_wru:.2f} WRU + {wc.lambda_rru:.2f} RRU per refund (from the "
            f"calls above, not measured twice); a replay ({wc.replays}): {replay_calls}, "
            f"{wc.wru_per_webhook_replay:.2f} WRU + {wc.rru_per_webhook_replay:.2f} RRU"
        )

    def table(self) -> str:
        rows = self.rows()
        width = max(len(r[0]) for r in rows)
        value_width = max(len(r[1]) for r in rows)
        out = [f"{'figure':<{width}}  {'value':>{value_width}}  notes", "-" * (width + value_width + 40)]
        out += [f"{name:<{width}}  {value:>{value_width}}  {note}" for name, value, note in rows]
        out.append("")
        out += [f"- {line}" for line in self.details()]
        out.append(f"- Machine: {self.machine.line()}; bench took {self.seconds:.0f} s")
        return "\n".join(out)

    # ---- files -------------------------------------------------------------------------------------
    def write(self) -> None:
        RESULTS.write_text(json.dumps(self.results(), indent=2) + "\n")
        DOC.write_text(self.markdown())

    def _e2e_note(self) -> str:
        if self.e2e.complete:
            return ""
        return (
            f" This run cut it off after {self.e2e.seconds:.0f} s with {self.e2e.settled} settled: the"
            "\n  local stack's moto copies the whole table for every action of a transaction, so it slows"
            "\n  down as the history grows."
        )

    def markdown(self) -> str:
        rows = "\n".join(f"| `{name}` | {value} | {note} |" for name, value, note in self.rows())
        details = "\n".join(f"- {line}" for line in self.details())
        return f"""<!-- Written by `make bench` (bench/report.py); the first part is the README's section. -->
## Performance

`make bench` measures speed and cost side by side and writes the figures to
`bench/results.json`; each is a ratio or a count from one run (none is a timed test). Latest run,
{self.machine.date}, on {self.machine.line()}:

| Figure | Value | Notes |
| --- | --- | --- |
{rows}

AWS is a moto server in its own process and Reditus the simulator in its own process, so the
batch times are mostly moto's (see below). To reproduce: `make bench` (about
{self.seconds / 60:.0f} minutes here); it prints this table and rewrites `bench/results.json` and
`docs/performance.md`.

## Details of this run

{details}

## How the figures are taken

The docstrings of `bench/*.py` say more.

- **Batches** (`bench/batches.py`): a batch of ten refunds queued as the console does, delivered
  as an SQS event, handled by `reditus_refunds.handler.lambda_handler`; only the handler call is
  timed, medians over interleaved rounds, each against an empty table. The textbook handler
  (`bench/textbook.py`) is Powertools' `BatchProcessor` doing the same work one record at a time.
- **Cost** (`bench/pricing.py`): the 100 ms batch's wall time at {pricing.MEMORY_GB * 1024:.0f} MB
  arm64, DynamoDB request units priced from the calls of the first {self.calls.priced} of
  {self.calls.refunds} common-case refunds (producer, Lambda and the day counters' stream function,
  applied once per {calls.STREAM_EVERY} refunds; transactional writes at 2 WRU per
  item, plus the writes DynamoDB makes to the table's indexes that hold what changed, and the
  conditional writes it refuses, billed by the item as it stands, at least 1 WRU; `bench/counting.py`
  `CapacityModel`), and SQS send, receive and delete, ten per call; {pricing.REGION} list prices as
  of {pricing.PRICES_DATE}. A 256 MB function has about a seventh of a vCPU, so its CPU-bound part
  runs slower than here.
  `wru_per_refund`/`rru_per_refund` are the console's refund (producer, Lambda, counters);
  `*_per_webhook_refund` a refund from a billing webhook: the receiver (`bench/webhooks.py`
  `measure_cost`, in this process, as `build_receiver` composes it, over the moto server and an
  empty table of its own) priced over {self.webhook_cost.events} signed Stripe
  `charge.refunded` events, each a new refund (event record, dedup read, the refund request
  recorded pending, event finished with its counts), plus the Lambda's share per refund taken
  from the figures above (its claim, result and counters are the same; not measured twice);
  `wru_per_webhook_replay` is a provider's retry of a handled event ({self.webhook_cost.replays} of them).
  The same model prices them, the receiver's writes to its own sparse indexes and its refused
  conditional writes included.
- **Cold start** (`bench/startup.py`, `bench/artifact.py`): the function's package built by
  `functions/Makefile` (its locked dependencies installed for Python 3.12, everything compiled to
  bytecode) and imported from that directory by python3.12, the template's runtime, in fresh
  interpreters timed from inside: the handler module against `boto3` + `requests` + the same
  clients, both as in Lambda (LAMBDA_TASK_ROOT set, tracing on). The ratio is of the processes'
  CPU time (medians over interleaved rounds): on a shared 2-core machine wall times of the same
  import vary twofold with the neighbours' load; wall times are in the details. Without
  python3.12 the development venv is used instead, and the table says so.
- **History** (`bench/history.py`): 10,000- and 100,000-refund tables in an in-process moto; items
  read counted from the responses. The first page reads 50 keys from `by_day` (keys only) and those
  50 refunds by key. A pending refund has no outcome yet, so it is in no outcome index: the Pending
  filter reads the period's day counters (one BatchGetItem per 100 days), which list each day's
  pending refunds (refund_id and queued_at, kept by the stream function up to 100 per day), and
  reads the page's refunds by key. The bench puts its one pending refund deep in a day of about
  3,300 refunds and writes the counters as the stream function keeps them, list included. A day
  with more than 100 pending refunds at some point (a backlog) lists fewer than it counts until
  they have drained; such a day is walked newest first until it gave its count, a cost this
  figure does not show (its pending refunds are then that day's newest).
- **Bulk** (`bench/bulk.py`): `parse_csv` + `RefundProducer.send_many` against a raw
  `send_message_batch` loop over the same rows. The headline ratio runs the product's DynamoDB
  calls (its pending records) on a second moto server process and its SQS calls, like the raw
  loop's (which makes no DynamoDB call), on the bench's: in AWS the two are separate services,
  while one moto server is one Python process doing both services' work in turn. The same product
  run with both services on one moto server is in the table's note and the details. It runs in a
  Python process of its own, as the CLI does, started when the figures before it are done.
- **Webhooks** (`bench/webhooks.py`): the receiver's import and init against `boto3` + the same
  DynamoDB and SQS clients, as the cold start above, from the receiver's own built package;
  and request to answer of signed Stripe `charge.refunded` events, each a
  new refund, posted to the real handler served on 127.0.0.1 by `reditus_local.webhooks` (its own
  process) over the project's moto server, warm, by one sender and by 20 concurrent senders.
- **End to end** (`bench/e2e.py`): `reditus-refunds local up --no-console --fresh`, 1,000
  refunds queued, clock stopped when the day counters show all settled.{self._e2e_note()}

The moto server of the batch, cost, bulk and memory figures is the project's
(`reditus_local.motoserver`, the one `make run` uses), which removes four of moto's costs: a
`TransactWriteItems` deep-copied the whole table once per action, a `SendMessage` counted every
message in the queue, a `ReceiveMessage` counted them again (with a datetime round trip each) for
every message it handed out, and every item written summed the sizes of its attributes once per
attribute (quadratic in its attributes); with them these figures would measure moto. It logs no
line per request (`--verbose` does), as the local stack's server. The end-to-end figure runs the
local stack exactly as `make run` does.
"""
