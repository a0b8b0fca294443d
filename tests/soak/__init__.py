"""Soak helpers: the local system's processes, fault injection and the count at the end.

Used by tests/test_soak.py (the reliability scenarios) and tests/test_secrets.py (the API key never
shows). Nothing here is product code: it drives the product's own processes from outside.
"""
