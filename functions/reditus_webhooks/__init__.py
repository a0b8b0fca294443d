"""The billing-webhook receiver's pure core: verify, parse, decide.

Nothing here touches AWS, the network or a provider's SDK, so the Lambda that wires it stays
small and every rule can be tested with plain bytes: ``signatures`` authenticates a request,
``providers`` turns a verified event into refund signals, ``decide`` turns a signal into what
to do (queue a refund request, ask an operator, ignore, or record as unmappable).
"""

PROVIDERS = ("stripe", "paddle", "chargebee", "lemonsqueezy", "polar")
