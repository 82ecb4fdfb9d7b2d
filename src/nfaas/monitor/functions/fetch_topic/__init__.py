"""The fetch-topic function (see handler.py)."""
