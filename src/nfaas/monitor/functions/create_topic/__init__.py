"""The create-topic function (see handler.py)."""
