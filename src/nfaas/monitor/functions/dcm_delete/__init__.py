"""The dcm-delete function (see handler.py)."""
