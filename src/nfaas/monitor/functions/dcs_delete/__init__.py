"""The dcs-delete function (see handler.py)."""
