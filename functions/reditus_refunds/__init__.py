"""reditus-refunds: reject Reditus affiliate commissions on refunded payments."""

__version__ = "0.1.0"
USER_AGENT = f"reditus-refunds/{__version__} (+https://github.com/reditus-refunds)"
