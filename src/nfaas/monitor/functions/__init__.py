"""The monitoring functions: one folder per function (``create_topic`` is deployed as
``create-topic``), each a ``handler.py`` that imports the shared ``mon`` module."""
