"""The operators' layer: what the console and the CLI do, one implementation for both.

Queue one refund, bulk import, history reads, requeue, dead-letter list/redrive/delete. It uses the
Lambda package's contract, history record, item layout and producer; the Lambda never imports it.
"""
