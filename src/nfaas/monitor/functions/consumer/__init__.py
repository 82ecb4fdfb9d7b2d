"""The consumer function (see handler.py)."""
