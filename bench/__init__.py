"""`make bench`: speed and cost figures of reditus-refunds, measured side by side (python -m bench.run)."""
