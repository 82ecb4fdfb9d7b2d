"""The dcs-create function (see handler.py)."""
