"""``nfaas topic …``: topics (JetStream streams) as a platform resource."""

from __future__ import annotations

import typer

topic_app = typer.Typer(help="Create, list, describe and remove topics.", no_args_is_help=True)
