"""One invocation through a function's pool, with every failure turned into an HTTP status.

The gateway answers with it; the event plane decides on retries with it. Both must see the
same statuses for the same failures, so the mapping lives here once.
"""

from __future__ import annotations

from nfaas.core.delivery import parse_retry_after
from nfaas.events.outcome import Outcome
from nfaas.node.pool import CrashLooping, FunctionPool, Overloaded
from nfaas.sandbox.base import HandlerError, InvokeTimeout, Request, WorkerDied


def cold_start_cause(request: Request) -> str:
    """What a queued delivery's cold start is recorded as: the event that caused it."""
    for name, value in request.headers:
        if name.lower() == "x-nfaas-source":
            return "async" if value in ("http", "replay") else value
    return "async"


def _retry_header(seconds: float) -> list[tuple[str, str]]:
    return [("retry-after", str(max(1, int(seconds + 0.999))))]


async def invoke_pool(
    pool: FunctionPool, request: Request, accepted: float, cause: str = "request"
) -> Outcome:
    """``cause`` names what a cold start this call waits for is recorded as (its trigger)."""
    try:
        response, cold = await pool.invoke(request, accepted, cause)
    except HandlerError as exc:
        return Outcome(500, error=f"function raised {exc.kind}: {exc.message}")
    except InvokeTimeout:
        return Outcome(504, error=f"function exceeded its timeout of {pool.spec.limits.timeout:g}s")
    except WorkerDied as exc:
        return Outcome(502, error=f"function instance died during the request: {exc}")
    except Overloaded as exc:
        return Outcome(
            429, error=str(exc), headers=_retry_header(exc.retry_after), retry_after=exc.retry_after
        )
    except CrashLooping as exc:
        headers = _retry_header(exc.retry_after)
        if exc.load_error:
            return Outcome(500, error=f"function failed to load: {exc.reason}", headers=headers)
        return Outcome(
            503,
            error=f"function is failing to start: {exc.reason}",
            headers=headers,
            retry_after=exc.retry_after,
        )
    retry_after = None
    for name, value in response.headers:
        if name.lower() == "retry-after":
            retry_after = parse_retry_after(value)
    return Outcome(response.status, response.body, response.headers, retry_after, cold=cold)
