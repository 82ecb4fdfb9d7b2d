"""The consumer-start function (see handler.py)."""
