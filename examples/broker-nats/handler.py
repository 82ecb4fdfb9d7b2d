"""Not used: a `runtime: command` function runs its program (see stack.yml), not a handler.

The platform's bundle checks still ask every bundle for a handler.py at its top level; this
empty one satisfies them. See docs/runtime-command.md.
"""
