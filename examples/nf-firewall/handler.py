"""nf-firewall: a stateful firewall between ports "inside" and "outside", rules in nftables syntax.

`graph(context)` builds the NF (`nfaas.vnfs.firewall.firewall_graph`): connection tracking
first (replies and related ICMP errors of allowed connections pass), then a per-flow verdict
cache, then the rules. The rules come from the file named by the env var FIREWALL_RULES
(relative paths are relative to this folder; default `rules.nft`, shipped next to this file).

`handle(event, context)` is the control API, served while the graph runs:

    GET    /rules            the rules as an `nft -f` file (text/plain)
    POST   /rules            append the rules in the body (nftables rule syntax, one per line;
                             `?position=N` inserts them at N instead); 201 with their indices,
                             400 naming line and column on a syntax error
    DELETE /rules/{index}    remove rule `index` (later rules move up); 404 if there is none
    GET    /counters         packets per outcome and conntrack state, cache hits, per-rule counts

Env: FIREWALL_RULES (path), FIREWALL_CONNTRACK, FIREWALL_FLOW_CACHE, FIREWALL_DROP_INVALID,
FIREWALL_SEND_REJECTS (1/0, true/false; defaults 1, 1, 1, 0).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from nfaas.nf.graph import Graph
from nfaas.vnfs.firewall import Firewall, firewall_graph
from nfaas.vnfs.firewall.nft import NftError, format_rule, load_nft

HERE = Path(__file__).resolve().parent
_JSON = {"content-type": "application/json"}
_TEXT = {"content-type": "text/plain; charset=utf-8"}

# graph() and handle() may run on different threads: one firewall, made once.
_made = threading.Lock()
_firewall: Firewall | None = None


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"env {name}={value!r}: expected 1/0, true/false, yes/no or on/off")


def firewall(context: Any) -> Firewall:
    """The function's one Firewall, built from its env on first use."""
    global _firewall
    with _made:
        if _firewall is None:
            env = dict(getattr(context, "env", {}) or {})
            path = Path(env.get("FIREWALL_RULES") or "rules.nft")
            ruleset = load_nft(path if path.is_absolute() else HERE / path)
            _firewall = Firewall(
                ruleset,
                conntrack=_flag(env, "FIREWALL_CONNTRACK", True),
                flow_cache=_flag(env, "FIREWALL_FLOW_CACHE", True),
                drop_invalid=_flag(env, "FIREWALL_DROP_INVALID", True),
            )
        return _firewall


def graph(context: Any) -> Graph:
    env = dict(getattr(context, "env", {}) or {})
    send_rejects = _flag(env, "FIREWALL_SEND_REJECTS", False)
    return firewall_graph(firewall(context), name="nf-firewall", send_rejects=send_rejects)


# -- the control API ------------------------------------------------------------------------


def _reply(status: int, body: Any) -> dict[str, Any]:
    return {"statusCode": status, "body": json.dumps(body), "headers": dict(_JSON)}


def _error(status: int, message: str, **where: Any) -> dict[str, Any]:
    return _reply(status, {"error": message, **where})


def handle(event: Any, context: Any) -> dict[str, Any]:
    fw = firewall(context)
    method = (getattr(event, "method", "GET") or "GET").upper()
    parts = [p for p in (getattr(event, "path", "/") or "/").split("/") if p]
    if parts[:1] == ["rules"] and len(parts) == 1:
        if method == "GET":
            return {"statusCode": 200, "body": fw.to_nft(), "headers": dict(_TEXT)}
        if method == "POST":
            return _add_rules(fw, event)
        return _error(405, f"{method} /rules: use GET or POST")
    if parts[:1] == ["rules"] and len(parts) == 2:
        if method != "DELETE":
            return _error(405, f"{method} /rules/{{index}}: use DELETE")
        return _delete_rule(fw, parts[1])
    if parts == ["counters"]:
        if method != "GET":
            return _error(405, f"{method} /counters: use GET")
        return _reply(200, fw.counters())
    return _error(404, f"no route {method} /{'/'.join(parts)}")


def _add_rules(fw: Firewall, event: Any) -> dict[str, Any]:
    body = getattr(event, "body", b"") or b""
    try:
        text = body if isinstance(body, str) else bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        return _error(400, f"body is not UTF-8 (byte {exc.start})", field="body")
    query = getattr(event, "query", {}) or {}
    position = None
    if "position" in query:
        raw = query["position"]
        if not raw.isdigit() or int(raw) > len(fw):
            return _error(400, f"position must be 0..{len(fw)}, got {raw!r}", field="position")
        position = int(raw)
    try:
        indices, _ = fw.add_nft(text, position, source="body")
    except NftError as exc:
        return _error(400, str(exc), field="body", line=exc.line, column=exc.column)
    except ValueError as exc:
        return _error(400, str(exc), field="body")
    rows = fw.rule_counters()
    added = [{"index": i, "rule": rows[i]["rule"]} for i in indices]
    return _reply(201, {"added": added, "rules": len(fw)})


def _delete_rule(fw: Firewall, raw: str) -> dict[str, Any]:
    if not raw.isdigit():
        return _error(400, f"rule index must be a number, got {raw!r}", field="index")
    index = int(raw)
    try:
        removed = fw.delete(index)
    except IndexError as exc:
        return _error(404, str(exc), field="index")
    rule = None if removed is None else format_rule(removed)
    return _reply(200, {"deleted": {"index": index, "rule": rule}, "rules": len(fw)})
