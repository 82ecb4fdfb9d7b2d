"""Loading of YAML function manifests (in the spirit of OpenFaaS ``stack.yml``).

A manifest looks like::

    version: "1.0"          # optional
    provider: {...}         # optional, accepted and ignored
    functions:
      hello:
        handler: ./hello    # directory relative to the manifest, must contain handler.py
        runtime: python
        scale: {min: 0, max: 4, idle_timeout: 30s}
        limits: {memory: 128Mi, timeout: 10s}

The YAML is *composed* (not loaded) so that every node keeps its position; errors are
:class:`ManifestError` naming the file, the 1-based line of the offending key (or of its value
when the value is what is wrong) and the dotted key path, e.g.
``stack.yml:7: functions.hello.scale.max: must be between 1 and 1000, got 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from nfaas.core.spec import (
    MANIFEST_ONLY_KEYS,
    FunctionSpec,
    SpecError,
    validate_name,
    validate_spec,
)

TOP_LEVEL_KEYS = ("version", "provider", "functions")
HANDLER_FILE = "handler.py"

_TAG = "tag:yaml.org,2002:"
_MAP_TAG = _TAG + "map"
_SEQ_TAG = _TAG + "seq"
_MERGE_TAG = _TAG + "merge"
_SCALAR_TAGS = {_TAG + t for t in ("null", "bool", "int", "float", "str", "timestamp")}
_MAX_DEPTH = 64


class ManifestError(ValueError):
    """A manifest that cannot be used; ``str()`` is ``file:line: key: message``."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def __str__(self) -> str:
        return self._format()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.file, self.line, self.key, self.message))


@dataclass(frozen=True)
class ManifestFunction:
    spec: FunctionSpec
    handler_dir: Path


@dataclass(frozen=True)
class Manifest:
    path: Path
    functions: dict[str, ManifestFunction]


def load_manifest(path: str | Path) -> Manifest:
    """Read and parse a manifest file; handler directories are resolved next to it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            str(path), None, "", f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise ManifestError(
            str(path), None, "", f"cannot read manifest: {exc.strerror or exc}"
        ) from None
    manifest = parse_manifest(text, str(path), base_dir=path.parent)
    return Manifest(path=path.resolve(), functions=manifest.functions)


def parse_manifest(
    text: str, filename: str = "<manifest>", base_dir: Path | None = None
) -> Manifest:
    """Parse manifest text.

    Handler directories are checked (and resolved) against ``base_dir`` when it is given;
    without it no filesystem access happens and ``handler_dir`` is the path as written.
    """
    root = _compose(text, filename)
    if root is None:
        raise ManifestError(filename, None, "", "manifest is empty; expected a 'functions' mapping")
    top, loc = _Converter(filename).convert(root, ())
    if not isinstance(top, dict):
        raise ManifestError(
            filename, loc.line, "", f"expected a mapping at the top level, got {_describe(top)}"
        )
    for key, (key_line, _) in loc.children.items():
        if key not in TOP_LEVEL_KEYS:
            raise ManifestError(
                filename,
                key_line,
                key,
                f"unknown top-level key {key!r} (allowed: {', '.join(sorted(TOP_LEVEL_KEYS))})",
            )
    if "version" in top:
        version = top["version"]
        if isinstance(version, bool) or not isinstance(version, str | int | float):
            raise ManifestError(
                filename,
                _value_line(loc, "version"),
                "version",
                f'expected a version string such as "1.0", got {_describe(version)}',
            )
    if "provider" in top and not isinstance(top["provider"], dict):
        raise ManifestError(
            filename,
            _value_line(loc, "provider"),
            "provider",
            f"expected a mapping, got {_describe(top['provider'])}",
        )
    if "functions" not in top:
        raise ManifestError(filename, loc.line, "functions", "missing required key 'functions'")
    functions = top["functions"]
    functions_line, functions_loc = loc.children["functions"]
    if functions is None or functions == {}:
        raise ManifestError(filename, functions_line, "functions", "no functions defined")
    if not isinstance(functions, dict):
        raise ManifestError(
            filename,
            functions_loc.value_line(functions_line),
            "functions",
            f"expected a mapping of function names to definitions, got {_describe(functions)}",
        )
    parsed = {
        name: _function(filename, base_dir, name, raw, *functions_loc.children[name])
        for name, raw in functions.items()
    }
    return Manifest(path=Path(filename), functions=parsed)


# --- internals -----------------------------------------------------------------------------


@dataclass
class _Loc:
    """Where a converted node sits: its own line and, per child, (key line, child location)."""

    line: int
    empty: bool = False  # an empty plain scalar: its mark may point past the line of its key
    children: dict[str, tuple[int, _Loc]] = field(default_factory=dict)

    def value_line(self, key_line: int) -> int:
        return key_line if self.empty else self.line


def _value_line(loc: _Loc, key: str) -> int:
    key_line, child = loc.children[key]
    return child.value_line(key_line)


def _compose(text: str, filename: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        parts = [p for p in (exc.context, exc.problem) if p]
        message = "; ".join(parts) if parts else str(exc)
        line = mark.line + 1 if mark is not None else None
        raise ManifestError(filename, line, "", f"invalid YAML: {message}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character
        shown = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        raise ManifestError(
            filename, line, "", f"invalid YAML: special character {shown} is not allowed"
        ) from None
    except yaml.YAMLError as exc:
        raise ManifestError(filename, None, "", f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ManifestError(filename, None, "", "invalid YAML: nested too deeply") from None


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class _Converter:
    """Composed YAML nodes -> plain Python values plus a parallel tree of line numbers.

    Rejects duplicate keys, non-string keys, unknown tags and recursive aliases. Aliased
    nodes are converted once (so alias bombs stay cheap); merge keys (``<<``) are honoured.
    """

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.constructor = SafeConstructor()
        self.done: dict[int, tuple[Any, _Loc]] = {}
        self.active: set[int] = set()

    def error(self, line: int, path: tuple[str, ...], message: str) -> ManifestError:
        return ManifestError(self.filename, line, ".".join(path), message)

    def convert(self, node: Node, path: tuple[str, ...], depth: int = 0) -> tuple[Any, _Loc]:
        done = self.done.get(id(node))
        if done is not None:
            return done
        line = node.start_mark.line + 1
        if id(node) in self.active:
            raise self.error(line, path, "recursive alias: a node contains itself")
        if depth > _MAX_DEPTH:
            raise self.error(line, path, f"nested more than {_MAX_DEPTH} levels deep")
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                result = self._mapping(node, path, depth)
            elif isinstance(node, SequenceNode):
                result = self._sequence(node, path, depth)
            else:
                value = self._scalar(node, path)
                empty = isinstance(node, ScalarNode) and node.value == "" and node.style is None
                result = (value, _Loc(line, empty=empty))
        finally:
            self.active.discard(id(node))
        self.done[id(node)] = result
        return result

    def _scalar(self, node: Node, path: tuple[str, ...]) -> Any:
        line = node.start_mark.line + 1
        if node.tag == _MERGE_TAG:  # a bare "<<" outside key position is just text
            return str(node.value)
        if node.tag not in _SCALAR_TAGS:
            raise self.error(line, path, f"unsupported YAML tag {node.tag!r}")
        try:
            return self.constructor.construct_object(node)
        except Exception as exc:  # the scalar constructors raise all sorts on bad input
            kind = node.tag[len(_TAG) :]
            reason = str(exc).splitlines()[0] if isinstance(exc, ValueError) else ""
            message = f"invalid {kind} {node.value!r}" + (f": {reason}" if reason else "")
            raise self.error(line, path, message) from None

    def _sequence(self, node: SequenceNode, path: tuple[str, ...], depth: int) -> tuple[Any, _Loc]:
        if node.tag != _SEQ_TAG:
            raise self.error(node.start_mark.line + 1, path, f"unsupported YAML tag {node.tag!r}")
        items: list[Any] = []
        loc = _Loc(node.start_mark.line + 1)
        for index, item_node in enumerate(node.value):
            item, item_loc = self.convert(item_node, (*path, str(index)), depth + 1)
            items.append(item)
            loc.children[str(index)] = (item_node.start_mark.line + 1, item_loc)
        return items, loc

    def _mapping(self, node: MappingNode, path: tuple[str, ...], depth: int) -> tuple[Any, _Loc]:
        if node.tag != _MAP_TAG:
            raise self.error(node.start_mark.line + 1, path, f"unsupported YAML tag {node.tag!r}")
        explicit: dict[str, tuple[Any, int, _Loc]] = {}
        merged: list[tuple[dict[str, Any], _Loc]] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_sources(value_node, path, depth))
                continue
            if not isinstance(key_node, ScalarNode):
                raise self.error(key_line, path, "mapping keys must be strings, got a collection")
            key = self._scalar(key_node, path)
            if not isinstance(key, str):
                raise self.error(
                    key_line,
                    path,
                    f"mapping keys must be strings, got {_describe(key)}; quote it if it is a name",
                )
            if key in explicit:
                first = explicit[key][1]
                raise self.error(
                    key_line, (*path, key), f"duplicate key {key!r} (first defined on line {first})"
                )
            value, value_loc = self.convert(value_node, (*path, key), depth + 1)
            explicit[key] = (value, key_line, value_loc)
        # Merge semantics as in PyYAML: merged keys come first, earlier sources win,
        # explicit keys override.
        result: dict[str, Any] = {}
        loc = _Loc(node.start_mark.line + 1)
        for source, source_loc in merged:
            for key, value in source.items():
                if key not in result:
                    result[key] = value
                    loc.children[key] = source_loc.children[key]
        for key, (value, key_line, value_loc) in explicit.items():
            result[key] = value
            loc.children[key] = (key_line, value_loc)
        return result, loc

    def _merge_sources(
        self, node: Node, path: tuple[str, ...], depth: int
    ) -> list[tuple[dict[str, Any], _Loc]]:
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        sources = []
        for source in nodes:
            if not isinstance(source, MappingNode):
                raise self.error(
                    source.start_mark.line + 1,
                    (*path, "<<"),
                    "a merge key ('<<') needs a mapping or a list of mappings",
                )
            sources.append(self.convert(source, (*path, "<<"), depth + 1))
        return sources


def _function(
    filename: str, base_dir: Path | None, name: str, raw: Any, key_line: int, loc: _Loc
) -> ManifestFunction:
    prefix = f"functions.{name}"

    def fail(line: int, key: str, message: str) -> ManifestError:
        return ManifestError(filename, line, f"{prefix}.{key}" if key else prefix, message)

    try:
        validate_name(name)
    except SpecError as exc:
        raise fail(key_line, "", exc.message) from None
    if not isinstance(raw, dict):
        raise fail(
            loc.value_line(key_line),
            "",
            f"expected a mapping (the function's definition), got {_describe(raw)}",
        )
    spec_raw = {k: v for k, v in raw.items() if k not in MANIFEST_ONLY_KEYS}
    try:
        # Passing MANIFEST_ONLY_KEYS only makes "unknown key" messages list them as allowed;
        # they were removed from the mapping above.
        spec = validate_spec(name, spec_raw, extra_keys=set(MANIFEST_ONLY_KEYS))
    except SpecError as exc:
        raise fail(_spec_error_line(exc, key_line, loc), ".".join(exc.path), exc.message) from None
    except ArithmeticError as exc:  # e.g. OverflowError from an absurdly long number
        raise fail(key_line, "", f"invalid value: {exc}") from None

    if "handler" not in raw:
        raise fail(
            key_line, "handler", "missing required key 'handler' (a directory with handler.py)"
        )
    handler = raw["handler"]
    handler_line = _value_line(loc, "handler")
    if not isinstance(handler, str) or not handler.strip():
        raise fail(handler_line, "handler", f"expected a directory path, got {_describe(handler)}")
    if base_dir is None:
        return ManifestFunction(spec=spec, handler_dir=Path(handler))
    handler_dir = base_dir / handler
    if not handler_dir.is_dir():
        raise fail(handler_line, "handler", f"handler directory not found: {handler_dir}")
    if spec.runtime != "command" and not (handler_dir / HANDLER_FILE).is_file():
        raise fail(handler_line, "handler", f"no {HANDLER_FILE} in handler directory {handler_dir}")
    return ManifestFunction(spec=spec, handler_dir=handler_dir.resolve())


def _spec_error_line(exc: SpecError, key_line: int, loc: _Loc) -> int:
    """The line a SpecError's path points at, relative to a function entry.

    An unknown or malformed key points at the key; a bad value at the value. If the path
    does not exist in the file (a default made the value invalid), the nearest existing
    parent key's line is used.
    """
    if exc.path == ("name",):
        return key_line
    line, current = key_line, loc
    for part in exc.path:
        child = current.children.get(part)
        if child is None:
            return line
        line, current = child
    if exc.message.startswith(("unknown key", "keys must")):
        return line
    return current.value_line(line)
