"""``nfaas monitor …``: the 5G monitoring platform (seed 001) deployed on nfaas in one step."""

from __future__ import annotations

import typer
from rich.table import Table

from nfaas.cli.common import JSON_OPT, client, emit_json, fail, out
from nfaas.core.spec import SpecError
from nfaas.monitor.deploy import DEFAULT_NAMESPACE, DeployError, deploy, remove

monitor_app = typer.Typer(
    help="The 5G monitoring platform: topic lifecycle chains, stores, dashboards.",
    no_args_is_help=True,
)

NAMESPACE_OPT = typer.Option(
    DEFAULT_NAMESPACE, "--namespace", "-n", help="Namespace of the functions (and its token)."
)


def _admin() -> tuple[str, str]:
    api = client()
    if not api.token:
        fail("no token: set NFAAS_TOKEN to the admin token (or run on the node)")
    return api.url, api.token


@monitor_app.command("deploy")
def monitor_deploy(
    namespace: str = NAMESPACE_OPT,
    function_url: str | None = typer.Option(
        None, "--function-url", help="How the functions reach the platform (default: NFAAS_URL)."
    ),
    public_dashboard: bool = typer.Option(
        False, "--public-dashboard", help="Let the dashboard be read without a token."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Create or update every monitoring function, its token and the dashboards topic."""
    url, token = _admin()
    try:
        done = deploy(url, token, namespace, function_url, public_dashboard)
    except (DeployError, SpecError) as exc:
        fail(str(exc))
    if as_json:
        emit_json(done.to_json())
        return
    table = Table("FUNCTION", "INVOKE")
    for name in done.functions:
        table.add_row(name, f"/function/{name}.{namespace}")
    out.print(table)
    out.print(f"namespace {namespace}: {len(done.functions)} functions, token {done.token_id}")
    if done.revoked:
        out.print(f"revoked the previous deployment's token(s): {', '.join(done.revoked)}")
    out.print(
        f"set up an experiment: nfaas invoke dcm-create.{namespace} "
        '<<< \'{"topics": ["<useCase>.<expId>.<site>.<type>.<metric>"]}\''
    )
    out.print(f"dashboards: {done.dashboard_url}  (one experiment: ?experiment=<expId>)")
    out.print(f"records:    {done.query_url}?experiment=<expId>&metric=<metric>")
    if not public_dashboard:
        out.print("(the dashboard needs a bearer token; --public-dashboard opens it to browsers)")


@monitor_app.command("rm")
def monitor_rm(
    namespace: str = NAMESPACE_OPT,
    purge: bool = typer.Option(
        False, "--purge", help="Also delete the deployment's topics, stores and dashboards."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Remove the monitoring functions and revoke their token."""
    url, token = _admin()
    try:
        gone = remove(url, token, namespace, purge)
    except (DeployError, SpecError) as exc:
        fail(str(exc))
    if as_json:
        emit_json(
            {
                "namespace": gone.namespace,
                "functions": gone.functions,
                "revoked_token_ids": gone.revoked,
                "topics": gone.topics,
            }
        )
        return
    out.print(f"removed {len(gone.functions)} function(s) from namespace {namespace}")
    if gone.topics:
        out.print(f"deleted {len(gone.topics)} topic(s): {', '.join(gone.topics)}")
