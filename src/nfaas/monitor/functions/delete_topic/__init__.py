"""The delete-topic function (see handler.py)."""
