"""What a refund costs at AWS list prices, from measured handler time and counted calls.

Prices: AWS's published on-demand list prices for us-east-1 (US East, N. Virginia), first tier,
no free tier, no Savings Plans. PRICES_DATE is the date they are stated as of: the newest of them
(DynamoDB on-demand throughput, halved on 2024-11-01) took effect then; none has changed since
to our knowledge. Check https://aws.amazon.com/{lambda,dynamodb,sqs,cloudwatch}/pricing/ before
quoting these figures to anyone.
"""

from __future__ import annotations

from dataclasses import dataclass

REGION = "us-east-1"
PRICES_DATE = "2024-11-01"
LAMBDA_ARM_USD_PER_GB_SECOND = 0.0000133334  # arm64, first 7.5 billion GB-s a month
LAMBDA_USD_PER_REQUEST = 0.20 / 1_000_000
DYNAMODB_USD_PER_WRU = 0.625 / 1_000_000  # on-demand, Standard table class
DYNAMODB_USD_PER_RRU = 0.125 / 1_000_000
SQS_USD_PER_REQUEST = 0.40 / 1_000_000  # standard queue, first 100 billion requests a month
CLOUDWATCH_LOGS_USD_PER_GB = 0.50  # standard log class, ingestion (not in the totals; see below)

MEMORY_GB = 256 / 1024  # template.yaml FunctionMemorySize default
BATCH = 10  # template.yaml BatchSize default


@dataclass(frozen=True)
class PerRefund:
    """Resources one refund uses, averaged over a run."""

    handler_ms: float  # billed Lambda duration of its batch, divided by the batch size
    wru: float  # DynamoDB write request units, base table and indexes, producer and Lambda
    rru: float
    sqs_requests: float  # send + receive + delete
    log_bytes: float = 0.0


@dataclass(frozen=True)
class Cost:
    lambda_usd: float
    dynamodb_usd: float
    sqs_usd: float
    logs_usd: float

    @property
    def total(self) -> float:
        """Lambda + DynamoDB + SQS (CloudWatch Logs is reported beside, not added)."""
        return self.lambda_usd + self.dynamodb_usd + self.sqs_usd


def per_million(use: PerRefund) -> Cost:
    """USD per million refunds.

    Assumptions: full batches of ten (one invocation per ten refunds); producers send ten per
    SendMessageBatch (the console, CLI and CSV do), the event source mapping receives and deletes
    ten per call, and its empty polls of an idle queue are not counted; the handler's duration is
    as measured on the bench machine (a 256 MB function has ~1/7 of a vCPU, so its CPU-bound part
    runs slower in Lambda); the Secrets Manager call (once per 5 minutes per instance), X-Ray and
    storage are left out.
    """
    millions = 1_000_000
    lambda_usd = millions * (
        use.handler_ms / 1000 * MEMORY_GB * LAMBDA_ARM_USD_PER_GB_SECOND + LAMBDA_USD_PER_REQUEST / BATCH
    )
    dynamodb_usd = millions * (use.wru * DYNAMODB_USD_PER_WRU + use.rru * DYNAMODB_USD_PER_RRU)
    sqs_usd = millions * use.sqs_requests * SQS_USD_PER_REQUEST
    logs_usd = millions * use.log_bytes / 1e9 * CLOUDWATCH_LOGS_USD_PER_GB
    return Cost(lambda_usd, dynamodb_usd, sqs_usd, logs_usd)
