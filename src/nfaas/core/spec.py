"""The function spec: what a manifest entry or an API deploy request describes, validated.

Validation reports the *path* of the offending key (e.g. ``scale.max``) so callers can point
at it: the manifest loader turns a path into a file and line, the API into a field name.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import msgspec

from nfaas.core.delivery import DEFAULT_RETRY_ON, Queue, Retry
from nfaas.core.porturl import CAPTURE_KINDS, PortSpecError, parse_port_url
from nfaas.core.triggers import Trigger, TriggerError, parse_triggers
from nfaas.core.units import parse_duration, parse_size

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
RUNTIMES = ("python", "nf", "command")
PORT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
ISOLATIONS = ("process", "container", "microvm")


class SpecError(ValueError):
    """A bad key or value; ``path`` names it, e.g. ("scale", "max")."""

    def __init__(self, path: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message

    @property
    def field(self) -> str:
        return ".".join(self.path)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.path else self.message


class Scale(msgspec.Struct, frozen=True):
    min: int = 0
    max: int = 4
    target_concurrency: int = 1
    idle_timeout: float = 60.0
    pause_after: float = 0.0  # freeze an idle instance after this long; 0: never


class Limits(msgspec.Struct, frozen=True):
    memory: int = 256 * 1024**2
    cpu: float = 1.0
    timeout: float = 30.0
    max_body: int = 1024**2
    cpu_time: float = 3600.0
    open_files: int = 1024
    processes: int = 64


class Volume(msgspec.Struct, frozen=True):
    """A directory that outlives the function's instances (see docs/volumes.md)."""

    path: str  # where instances see it (container tier); the process tier cannot remap it


# Where a volume cannot go: the kernel's and the sandbox's own trees (the container tier's
# /code and /tmp, which is also HOME), the interpreter's read-only /usr and its aliases.
RESERVED_VOLUME_PATHS = (
    "/proc",
    "/sys",
    "/dev",
    "/code",
    "/tmp",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
)
MAX_VOLUME_PATH = 1024


class FunctionSpec(msgspec.Struct, frozen=True):
    name: str
    runtime: str = "python"
    isolation: str = "process"
    scale: Scale = Scale()
    limits: Limits = Limits()
    env: dict[str, str] = {}
    labels: dict[str, str] = {}
    public: bool = False
    network: str = "none"  # "bridged": a veth on the node's bridge (container tier)
    ports: dict[str, str] = {}  # runtime nf: the graph's port name -> port URL
    command: tuple[str, ...] = ()  # runtime command: the program and its arguments
    triggers: tuple[Trigger, ...] = ()
    retry: Retry = Retry()  # async calls and trigger messages
    queue: Queue = Queue()
    volume: Volume | None = None  # a persistent directory shared by the function's instances


def validate_name(name: object, path: tuple[str, ...] = ("name",)) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(
            path,
            f"invalid function name {name!r}: use lowercase letters, digits and '-', "
            "1-63 characters, starting and ending with a letter or digit",
        )
    return name


def _int(path: tuple[str, ...], value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"expected an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise SpecError(path, f"must be {bound}, got {value}")
    return value


def _positive(path: tuple[str, ...], value: object, parse: Callable[[object], Any]) -> Any:
    try:
        parsed = parse(value)
    except ValueError as exc:
        raise SpecError(path, str(exc)) from None
    if not math.isfinite(parsed) or parsed <= 0:
        raise SpecError(path, f"must be a finite number greater than zero, got {value!r}")
    return parsed


def _cpu(value: object) -> float:
    if isinstance(value, str) and value.endswith("m") and value[:-1].isdigit():
        return int(value[:-1]) / 1000
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected cores such as 0.5 or 500m, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"expected cores such as 0.5 or 500m, got {value!r}") from None


def _mapping(path: tuple[str, ...], value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(path: tuple[str, ...], raw: Mapping[str, Any], allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            raise SpecError(
                (*path, str(key)),
                f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})",
            )


def _str_map(path: tuple[str, ...], value: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, item in _mapping(path, value).items():
        if not isinstance(key, str) or not key:
            raise SpecError((*path, str(key)), "keys must be non-empty strings")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise SpecError((*path, key), f"expected a string value, got {item!r}")
        out[key] = str(item)
    return out


def _scale(path: tuple[str, ...], raw: Mapping[str, Any]) -> Scale:
    _check_keys(path, raw, {"min", "max", "target_concurrency", "idle_timeout", "pause_after"})
    d = Scale()
    lo = _int((*path, "min"), raw.get("min", d.min), 0, 1000)
    hi = _int((*path, "max"), raw.get("max", max(d.max, lo)), 1, 1000)
    if hi < lo:
        raise SpecError((*path, "max"), f"max ({hi}) must be >= min ({lo})")
    target = _int((*path, "target_concurrency"), raw.get("target_concurrency", 1), 1, 10000)
    idle = _positive(
        (*path, "idle_timeout"), raw.get("idle_timeout", d.idle_timeout), parse_duration
    )
    pause = 0.0  # 0 (or absent): never pause
    if raw.get("pause_after") not in (None, 0, 0.0, "0", "0s"):
        pause = _positive((*path, "pause_after"), raw["pause_after"], parse_duration)
    return Scale(min=lo, max=hi, target_concurrency=target, idle_timeout=idle, pause_after=pause)


def _limits(path: tuple[str, ...], raw: Mapping[str, Any]) -> Limits:
    d = Limits()
    _check_keys(path, raw, set(Limits.__struct_fields__))
    memory = _positive((*path, "memory"), raw.get("memory", d.memory), parse_size)
    if memory < 16 * 1024**2:
        raise SpecError((*path, "memory"), f"must be at least 16Mi, got {raw.get('memory')!r}")
    return Limits(
        memory=memory,
        cpu=_positive((*path, "cpu"), raw.get("cpu", d.cpu), _cpu),
        timeout=_positive((*path, "timeout"), raw.get("timeout", d.timeout), parse_duration),
        max_body=_positive((*path, "max_body"), raw.get("max_body", d.max_body), parse_size),
        cpu_time=_positive((*path, "cpu_time"), raw.get("cpu_time", d.cpu_time), parse_duration),
        open_files=_int((*path, "open_files"), raw.get("open_files", d.open_files), 16, 1 << 20),
        processes=_int((*path, "processes"), raw.get("processes", d.processes), 1, 1 << 16),
    )


# Keys a manifest entry may carry beyond the spec itself (client-side only).
MANIFEST_ONLY_KEYS = {"handler"}
SPEC_KEYS = {
    "runtime",
    "isolation",
    "scale",
    "limits",
    "env",
    "labels",
    "public",
    "network",
    "ports",
    "command",
    "triggers",
    "retry",
    "queue",
    "volume",
}
NETWORKS = ("none", "bridged")


def validate_spec(
    name: str, raw: Mapping[str, Any], extra_keys: Collection[str] = ()
) -> FunctionSpec:
    """Build a FunctionSpec from a plain mapping; raise SpecError naming the bad key."""
    validate_name(name)
    raw = _mapping((), raw)
    _check_keys((), raw, SPEC_KEYS | set(extra_keys))
    runtime = raw.get("runtime", "python")
    if runtime not in RUNTIMES:
        raise SpecError(
            ("runtime",), f"unsupported runtime {runtime!r} (supported: {', '.join(RUNTIMES)})"
        )
    isolation = raw.get("isolation", "process")
    if isolation not in ISOLATIONS:
        raise SpecError(
            ("isolation",),
            f"unsupported isolation {isolation!r} (supported: {', '.join(ISOLATIONS)})",
        )
    network = raw.get("network", "none")
    if network not in NETWORKS:
        raise SpecError(
            ("network",), f"unsupported network {network!r} (supported: {', '.join(NETWORKS)})"
        )
    if network == "bridged" and isolation != "container":
        raise SpecError(("network",), "network: bridged needs isolation: container")
    public = raw.get("public", False)
    if not isinstance(public, bool):
        raise SpecError(("public",), f"expected true or false, got {public!r}")
    scale = _scale(("scale",), _mapping(("scale",), raw.get("scale", {})))
    ports = _ports(raw.get("ports"), runtime, isolation, scale)
    command = _command(raw.get("command"), runtime)
    if runtime == "command" and isolation == "microvm":
        raise SpecError(
            ("isolation",),
            "runtime command needs isolation process or container: the guest image holds "
            "only the python worker, not the node's programs",
        )
    try:
        triggers = tuple(parse_triggers(raw.get("triggers")))
    except TriggerError as exc:
        path = tuple(p for p in ("triggers", *exc.key.split(".")) if p)
        raise SpecError(path, exc.message) from None
    if triggers and runtime != "python":
        raise SpecError(("triggers",), f"triggers invoke handlers; a {runtime} function has none")
    return FunctionSpec(
        name=name,
        runtime=runtime,
        isolation=isolation,
        scale=scale,
        limits=_limits(("limits",), _mapping(("limits",), raw.get("limits", {}))),
        env=_str_map(("env",), raw.get("env", {})),
        labels=_str_map(("labels",), raw.get("labels", {})),
        public=public,
        network=network,
        ports=ports,
        command=command,
        triggers=triggers,
        retry=_retry(("retry",), _mapping(("retry",), raw.get("retry", {}))),
        queue=_queue(("queue",), _mapping(("queue",), raw.get("queue", {}))),
        volume=_volume(("volume",), raw.get("volume"), isolation),
    )


def _volume(path: tuple[str, ...], raw: object, isolation: str) -> Volume | None:
    """``volume: {path: /data}``: absent (or null) means none."""
    if raw is None:
        return None
    raw = _mapping(path, raw)
    _check_keys(path, raw, set(Volume.__struct_fields__))
    if isolation == "microvm":
        raise SpecError(
            path,
            "volumes are for isolation process or container: a microVM's guest has no way "
            "to reach the node's directories",
        )
    if "path" not in raw:
        raise SpecError((*path, "path"), "required: where instances see the volume, e.g. /data")
    return Volume(path=_volume_path((*path, "path"), raw["path"]))


def _volume_path(path: tuple[str, ...], value: object) -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"expected an absolute path such as /data, got {value!r}")
    if not value.startswith("/"):
        raise SpecError(path, f"must be an absolute path, got {value!r}")
    if len(value) > MAX_VOLUME_PATH:
        raise SpecError(path, f"must be at most {MAX_VOLUME_PATH} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise SpecError(path, f"must not contain control characters, got {value!r}")
    # normpath keeps a leading "//" (POSIX leaves its meaning to the implementation)
    normal = "/" + posixpath.normpath(value).lstrip("/")
    if normal != value:
        raise SpecError(path, f"must be a normalised path ({normal!r}), got {value!r}")
    if value == "/":
        raise SpecError(path, "cannot be / (the sandbox's root)")
    for reserved in RESERVED_VOLUME_PATHS:
        if value == reserved or value.startswith(reserved + "/"):
            raise SpecError(
                path, f"{value!r} is inside {reserved}, which the sandbox itself provides"
            )
    return value


def _command(raw: object, runtime: str) -> tuple[str, ...]:
    """runtime command: a program and its arguments, as a list (or one string, split)."""
    if runtime != "command":
        if raw:
            raise SpecError(("command",), "command is for runtime: command functions")
        return ()
    if isinstance(raw, str):
        import shlex

        try:
            raw = shlex.split(raw)
        except ValueError as exc:
            raise SpecError(("command",), f"cannot split {raw!r}: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise SpecError(("command",), "runtime command needs command: [program, args...]")
    for index, arg in enumerate(raw):
        if isinstance(arg, bool) or not isinstance(arg, str | int | float):
            raise SpecError(("command", str(index)), f"expected a string, got {arg!r}")
        if "\0" in str(arg):
            raise SpecError(("command", str(index)), "arguments cannot contain NUL")
    if not str(raw[0]):
        raise SpecError(("command", "0"), "the program name is empty")
    return tuple(str(arg) for arg in raw)


def _retry(path: tuple[str, ...], raw: Mapping[str, Any]) -> Retry:
    _check_keys(path, raw, set(Retry.__struct_fields__))
    d = Retry()
    statuses = raw.get("on_status", list(DEFAULT_RETRY_ON))
    if not isinstance(statuses, list | tuple):
        raise SpecError((*path, "on_status"), f"expected a list of HTTP statuses, got {statuses!r}")
    for index, status in enumerate(statuses):
        _int((*path, "on_status", str(index)), status, 400, 599)
    backoff = _positive((*path, "backoff"), raw.get("backoff", d.backoff), parse_duration)
    max_backoff = _positive(
        (*path, "max_backoff"), raw.get("max_backoff", d.max_backoff), parse_duration
    )
    if max_backoff < backoff:
        raise SpecError((*path, "max_backoff"), f"must be >= backoff ({backoff:g}s)")
    return Retry(
        attempts=_int((*path, "attempts"), raw.get("attempts", d.attempts), 1, 100),
        on_status=tuple(statuses),
        backoff=backoff,
        max_backoff=max_backoff,
        multiplier=_number((*path, "multiplier"), raw.get("multiplier", d.multiplier), 1.0, 10.0),
        jitter=_number((*path, "jitter"), raw.get("jitter", d.jitter), 0.0, 1.0),
    )


def _number(path: tuple[str, ...], value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise SpecError(path, f"expected a number from {lo:g} to {hi:g}, got {value!r}")
    return float(value)


def _queue(path: tuple[str, ...], raw: Mapping[str, Any]) -> Queue:
    _check_keys(path, raw, set(Queue.__struct_fields__))
    return Queue(concurrency=_int((*path, "concurrency"), raw.get("concurrency", 0), 0, 10000))


def _ports(raw: object, runtime: str, isolation: str, scale: Scale) -> dict[str, str]:
    """An NF function's ports: names the graph uses, URLs the node opens."""
    if runtime != "nf":
        if raw:
            raise SpecError(("ports",), "ports are for runtime: nf functions")
        return {}
    if isolation == "microvm":
        raise SpecError(
            ("isolation",),
            "runtime nf needs isolation process or container: the node hands the instance "
            "its ports' sockets, which cannot cross into a microVM",
        )
    if not raw:
        raise SpecError(("ports",), "runtime nf needs at least one port (name: URL)")
    ports = _str_map(("ports",), raw)
    for name, url in ports.items():
        path = ("ports", name)
        if not PORT_NAME_RE.match(name):
            raise SpecError(
                path,
                f"invalid port name {name!r}: lowercase letters, digits and '_', "
                "starting with a letter, at most 32 characters",
            )
        try:
            kind, target, options = parse_port_url(url)
        except PortSpecError as exc:
            raise SpecError(path, str(exc)) from None
        if kind in CAPTURE_KINDS and (target.startswith("/") or ".." in target.split("/")):
            raise SpecError(
                path,
                f"capture path {target!r} must be relative, without '..': capture "
                "files live in the node's captures/<namespace>/ directory",
            )
        if scale.max > 1 and kind in CAPTURE_KINDS:
            raise SpecError(
                path, f"a {kind} port cannot be shared by instances: set scale.max to 1"
            )
        if scale.max > 1 and kind == "tap" and not options.get("multi_queue"):
            raise SpecError(
                path,
                "a tap port shared by several instances needs ?multi_queue=1 "
                "(or set scale.max to 1)",
            )
    return ports


def spec_to_dict(spec: FunctionSpec) -> dict[str, Any]:
    """The spec as validate_spec accepts it (what a client sends to the API)."""
    data: dict[str, Any] = msgspec.to_builtins(spec)
    data["triggers"] = [trigger.to_manifest() for trigger in spec.triggers]
    data["command"] = list(spec.command)
    return data


def spec_from_json(data: bytes | str) -> FunctionSpec:
    return msgspec.json.decode(data, type=FunctionSpec)
