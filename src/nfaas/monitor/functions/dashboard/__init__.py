"""The dashboard function (see handler.py)."""
