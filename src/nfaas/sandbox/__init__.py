"""Sandbox drivers behind one interface: prepare a shell, load a function into it, invoke."""
