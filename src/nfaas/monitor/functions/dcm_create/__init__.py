"""The dcm-create function (see handler.py)."""
