"""The nfaas command line (typer + rich)."""
