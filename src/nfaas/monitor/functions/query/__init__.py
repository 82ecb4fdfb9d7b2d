"""The query function (see handler.py)."""
