"""Runs inside a sandbox: loads a function's code and serves invocations over a framed stream."""
