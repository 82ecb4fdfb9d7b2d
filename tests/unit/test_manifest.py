"""Tests for the YAML manifest loader (nfaas.core.manifest)."""

from __future__ import annotations

import pickle
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfaas.core.manifest import (
    Manifest,
    ManifestError,
    ManifestFunction,
    load_manifest,
    parse_manifest,
)
from nfaas.core.spec import SPEC_KEYS, FunctionSpec, Limits, Scale

Mi = 1024**2

FULL = """\
version: "1.0"
functions:
  hello:
    handler: ./hello
    runtime: python
    isolation: process
    scale: {min: 0, max: 4, target_concurrency: 1, idle_timeout: 30s}
    limits: {memory: 128Mi, cpu: 0.5, timeout: 10s, max_body: 1Mi}
    env: {KEY: value}
    labels: {team: iot}
    public: true
"""


def parse(text: str, **kwargs: Any) -> Manifest:
    return parse_manifest(textwrap.dedent(text), "stack.yml", **kwargs)


def error(text: str, **kwargs: Any) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse(text, **kwargs)
    return info.value


def make_handler(directory: Path, with_file: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if with_file:
        (directory / "handler.py").write_text("def handle(req):\n    return req\n")
    return directory


# --- valid manifests -------------------------------------------------------------------------


def test_full_example_lands_in_spec() -> None:
    manifest = parse(FULL)
    assert manifest.path == Path("stack.yml")
    assert list(manifest.functions) == ["hello"]
    fn = manifest.functions["hello"]
    assert fn.handler_dir == Path("./hello")
    assert fn.spec == FunctionSpec(
        name="hello",
        scale=Scale(min=0, max=4, target_concurrency=1, idle_timeout=30.0),
        limits=Limits(memory=128 * Mi, cpu=0.5, timeout=10.0, max_body=Mi),
        env={"KEY": "value"},
        labels={"team": "iot"},
        public=True,
    )


def test_defaults_applied() -> None:
    fn = parse("functions:\n  tiny:\n    handler: tiny\n").functions["tiny"]
    assert fn.spec == FunctionSpec(name="tiny")
    assert fn.spec.limits.memory == 256 * Mi
    assert fn.spec.scale.idle_timeout == 60.0


def test_units_and_scalar_types() -> None:
    spec = (
        parse(
            """\
        functions:
          f:
            handler: f
            scale: {min: 2, idle_timeout: 5m}
            limits: {memory: 1Gi, cpu: 500m, timeout: 1500ms, max_body: 64Ki, cpu_time: 1h}
            env: {N: 4, F: 1.5, S: "4"}
        """
        )
        .functions["f"]
        .spec
    )
    assert spec.scale == Scale(min=2, max=4, idle_timeout=300.0)
    assert spec.limits.memory == 1024**3
    assert spec.limits.cpu == 0.5
    assert spec.limits.timeout == 1.5
    assert spec.limits.max_body == 64 * 1024
    assert spec.limits.cpu_time == 3600.0
    assert spec.env == {"N": "4", "F": "1.5", "S": "4"}


def test_function_order_preserved_and_provider_ignored() -> None:
    manifest = parse(
        """\
        version: 1.0
        provider: {name: openfaas, gateway: "http://127.0.0.1:8080"}
        functions:
          zeta: {handler: z}
          alpha: {handler: a}
          mid: {handler: m}
        """
    )
    assert list(manifest.functions) == ["zeta", "alpha", "mid"]


def test_anchors_aliases_and_merge_keys() -> None:
    manifest = parse(
        """\
        functions:
          a: &base
            handler: shared
            limits: &lim {memory: 64Mi}
          b:
            <<: *base
            public: true
          c:
            handler: c
            limits: *lim
        """
    )
    a, b, c = (manifest.functions[n].spec for n in "abc")
    assert a.limits.memory == b.limits.memory == c.limits.memory == 64 * Mi
    assert manifest.functions["b"].handler_dir == Path("shared")
    assert (a.public, b.public) == (False, True)


def test_merge_key_errors_point_at_the_anchor() -> None:
    err = error(
        """\
        provider:
          defaults: &d
            handler: a
            scale:
              max: 0
        functions:
          a:
            <<: *d
        """
    )
    assert (err.line, err.key) == (5, "functions.a.scale.max")


def test_load_manifest_resolves_handlers(tmp_path: Path) -> None:
    make_handler(tmp_path / "fns" / "hello")
    path = tmp_path / "stack.yml"
    path.write_text("functions:\n  hello:\n    handler: ./fns/hello\n")
    manifest = load_manifest(path)
    assert manifest.path == path.resolve()
    assert manifest.functions["hello"] == ManifestFunction(
        spec=FunctionSpec(name="hello"), handler_dir=(tmp_path / "fns" / "hello").resolve()
    )
    assert load_manifest(str(path)) == manifest


def test_parse_manifest_with_base_dir(tmp_path: Path) -> None:
    make_handler(tmp_path / "h")
    fn = parse("functions:\n  f:\n    handler: h\n", base_dir=tmp_path).functions["f"]
    assert fn.handler_dir == (tmp_path / "h").resolve()


def test_without_base_dir_no_filesystem_checks() -> None:
    fn = parse("functions:\n  f:\n    handler: /definitely/not/here\n").functions["f"]
    assert fn.handler_dir == Path("/definitely/not/here")


# --- the error type --------------------------------------------------------------------------


def test_error_formatting_and_pickling() -> None:
    assert str(ManifestError("m.yml", 3, "functions.a", "bad")) == "m.yml:3: functions.a: bad"
    assert str(ManifestError("m.yml", None, "functions.a", "bad")) == "m.yml: functions.a: bad"
    assert str(ManifestError("m.yml", 3, "", "bad")) == "m.yml:3: bad"
    assert str(ManifestError("m.yml", None, "", "bad")) == "m.yml: bad"
    err = ManifestError("m.yml", 3, "k", "bad")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.file, copy.line, copy.key, copy.message) == ("m.yml", 3, "k", "bad")


# --- errors: (manifest, expected line, expected key, message fragment) ------------------------

ERROR_CASES = [
    pytest.param("functions:\n  a: [\n", 3, "", "invalid YAML", id="syntax-eof"),
    pytest.param("functions:\n  a: b\n c: d\n", 3, "", "invalid YAML", id="syntax-indent"),
    pytest.param("a: 1\n---\nb: 2\n", 2, "", "single document", id="two-documents"),
    pytest.param("a: \x07\n", 1, "", "U+0007", id="control-char"),
    pytest.param("- functions\n", 1, "", "top level", id="top-level-list"),
    pytest.param("just text\n", 1, "", "top level", id="top-level-scalar"),
    pytest.param(
        "version: '1'\nfunctoins:\n  a: {handler: a}\n", 2, "functoins", "unknown", id="top-key"
    ),
    pytest.param("version: [1]\nfunctions: {}\n", 1, "version", "version", id="version-type"),
    pytest.param("provider: openfaas\nfunctions:\n", 1, "provider", "mapping", id="provider"),
    pytest.param("version: '1.0'\n", 1, "functions", "missing", id="no-functions"),
    pytest.param("version: '1.0'\nfunctions:\n", 2, "functions", "no functions", id="null-fns"),
    pytest.param("functions: {}\n", 1, "functions", "no functions", id="empty-functions"),
    pytest.param("functions:\n  - a\n", 2, "functions", "mapping", id="functions-list"),
    pytest.param(
        "functions:\n  a: {handler: a}\nversion: 1\nfunctions:\n  b: {handler: b}\n",
        4,
        "functions",
        "duplicate key 'functions' (first defined on line 1)",
        id="dup-top",
    ),
    pytest.param(
        "functions:\n  a: {handler: a}\n  a: {handler: b}\n",
        3,
        "functions.a",
        "duplicate",
        id="dup-function",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    env:\n      X: 1\n      Y: 2\n      X: 3\n",
        7,
        "functions.a.env.X",
        "duplicate",
        id="dup-env",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    handler: b\n",
        4,
        "functions.a.handler",
        "duplicate",
        id="dup-handler",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    labels:\n      1: x\n",
        5,
        "functions.a.labels",
        "keys must be strings",
        id="int-key",
    ),
    pytest.param("functions:\n  true: {handler: a}\n", 2, "functions", "strings", id="bool-key"),
    pytest.param("functions:\n  2048: {handler: a}\n", 2, "functions", "quote it", id="num-name"),
    pytest.param("functions:\n  ? [a]\n  : {}\n", 2, "functions", "strings", id="seq-key"),
    pytest.param("functions:\n  a: 1\n", 2, "functions.a", "mapping", id="function-scalar"),
    pytest.param(
        "functions:\n  a:\n  b: {handler: b}\n", 2, "functions.a", "got null", id="function-null"
    ),
    pytest.param("functions:\n  Hello: {handler: a}\n", 2, "functions.Hello", "name", id="name"),
    pytest.param(
        "functions:\n  a: {handler: a}\n  -bad-: {handler: a}\n",
        3,
        "functions.-bad-",
        "invalid function name",
        id="name-second",
    ),
    pytest.param(
        "functions:\n  a:\n    runtime: python\n",
        2,
        "functions.a.handler",
        "missing required key 'handler'",
        id="handler-missing",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: [x]\n",
        3,
        "functions.a.handler",
        "directory path",
        id="handler-list",
    ),
    pytest.param(
        "functions:\n  a:\n    runtime: python\n    handler:\n      - x\n",
        5,
        "functions.a.handler",
        "directory path",
        id="handler-block-list",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: ''\n", 3, "functions.a.handler", "path", id="handler-empty"
    ),
    pytest.param(
        "functions:\n  a:\n    handler:\n    public: true\n",
        3,
        "functions.a.handler",
        "got null",
        id="handler-null",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    runtime: node\n",
        4,
        "functions.a.runtime",
        "unsupported runtime",
        id="runtime",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    public: 'yes'\n",
        4,
        "functions.a.public",
        "true or false",
        id="public",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    timeout: 3s\n",
        4,
        "functions.a.timeout",
        "unknown key 'timeout'",
        id="unknown-function-key",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    scale:\n      min: 0\n      max: 0\n",
        6,
        "functions.a.scale.max",
        "between 1 and 1000",
        id="scale-max",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    scale: {min: 5, max: 2}\n",
        4,
        "functions.a.scale.max",
        "must be >= min",
        id="scale-max-below-min",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    scale:\n      mx: 3\n",
        5,
        "functions.a.scale.mx",
        "unknown key",
        id="scale-unknown",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    scale:\n\n      - 1\n",
        6,
        "functions.a.scale",
        "expected a mapping",
        id="scale-list-on-next-line",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    scale:\n    public: true\n",
        4,
        "functions.a.scale",
        "expected a mapping",
        id="scale-null",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    limits:\n      cpu: 1\n      memory: 1Mi\n",
        6,
        "functions.a.limits.memory",
        "at least 16Mi",
        id="memory-small",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    limits:\n      timeout: soon\n",
        5,
        "functions.a.limits.timeout",
        "duration",
        id="timeout",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    limits:\n      timeout: >-\n        ten\n"
        "        seconds\n",
        5,
        "functions.a.limits.timeout",
        "duration",
        id="folded-value",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    env:\n      X:\n        - 1\n",
        6,
        "functions.a.env.X",
        "string value",
        id="env-value",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    env:\n      '': x\n",
        5,
        "functions.a.env.",
        "non-empty",
        id="env-empty-key",
    ),
    pytest.param(
        "functions:\n  a:\n    handler: !!int zz\n", 3, "functions.a.handler", "int", id="bad-int"
    ),
    pytest.param(
        "functions:\n  a:\n    handler: !shell ls\n",
        3,
        "functions.a.handler",
        "unsupported YAML tag",
        id="custom-tag",
    ),
    pytest.param("x: !!set {a, b}\n", 1, "x", "unsupported YAML tag", id="set-tag"),
    pytest.param("x: &a\n  - *a\n", 1, "x.0", "recursive", id="recursive-alias"),
    pytest.param("x:\n  <<: 3\n", 2, "x.<<", "merge", id="bad-merge"),
    pytest.param(
        "functions:\n  a:\n    handler: a\n    limits: {memory: " + "9" * 400 + "Mi}\n",
        4,
        "functions.a.limits.memory",
        "too large",
        id="overflow",
    ),
    pytest.param(
        "functions:\n  fw:\n    handler: fw\n    runtime: nf\n    scale: {max: 1}\n"
        "    ports:\n      wan: afpacket:veth0\n      lan: afpacket:veth1?blocks=x\n",
        8,
        "functions.fw.ports.lan",
        "option blocks: invalid literal",
        id="nf-port-option",
    ),
    pytest.param(
        "functions:\n  fw:\n    handler: fw\n    runtime: nf\n    ports:\n      t: tap:t0\n",
        6,
        "functions.fw.ports.t",
        "needs ?multi_queue=1",
        id="nf-tap-scaled",
    ),
    pytest.param(
        "functions:\n  fw:\n    handler: fw\n    runtime: nf\n    isolation: microvm\n"
        "    ports: {a: 'pcap:x.pcap'}\n",
        5,
        "functions.fw.isolation",
        "cannot cross into a microVM",
        id="nf-microvm",
    ),
    pytest.param(
        "functions:\n  f:\n    handler: f\n    ports: {a: 'pcap:x.pcap'}\n",
        4,
        "functions.f.ports",
        "ports are for runtime: nf",
        id="ports-without-nf",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), ERROR_CASES)
def test_errors(text: str, line: int, key: str, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "stack.yml")
    err = info.value
    assert (err.line, err.key) == (line, key), str(err)
    assert err.file == "stack.yml"
    assert fragment in err.message
    assert str(err).startswith(f"stack.yml:{line}: ")


def test_empty_manifest() -> None:
    for text in ("", "\n", "# only a comment\n"):
        err = error(text)
        assert (err.line, err.key) == (None, "")
        assert "empty" in err.message


def test_deep_nesting_is_a_manifest_error() -> None:
    for text in (
        "[" * 5000,
        "a: " + "[" * 100 + "]" * 100,
        "a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200)),
    ):
        with pytest.raises(ManifestError, match="nested"):
            parse(text)


def test_alias_bomb_stays_cheap() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 30):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    err = error("\n".join(lines) + "\n")
    assert (err.line, err.key) == (1, "a0")  # the unknown key, found without expanding 10**30


def test_handler_filesystem_checks(tmp_path: Path) -> None:
    make_handler(tmp_path / "empty", with_file=False)
    (tmp_path / "file").write_text("not a directory")
    text = "functions:\n  a:\n    runtime: python\n    handler: {}\n"
    for handler, fragment in [
        ("missing", "not found"),
        ("file", "not found"),
        ("empty", "no handler.py"),
    ]:
        err = error(text.format(handler), base_dir=tmp_path)
        assert (err.line, err.key) == (4, "functions.a.handler")
        assert fragment in err.message


def test_load_manifest_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(ManifestError) as info:
        load_manifest(missing)
    assert (info.value.file, info.value.line) == (str(missing), None)
    assert "cannot read" in info.value.message

    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path)  # a directory

    binary = tmp_path / "bin.yml"
    binary.write_bytes(b"functions:\n  a: \xff\xfe\n")
    with pytest.raises(ManifestError, match="UTF-8"):
        load_manifest(binary)

    stack = tmp_path / "stack.yml"
    stack.write_text("functions:\n  a:\n    handler: ./a\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(stack)  # load_manifest always checks the handler directory
    assert str(info.value).startswith(f"{stack}:3: functions.a.handler: ")


# --- property tests --------------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def durations(draw: st.DrawFn) -> tuple[Any, float]:
    """(raw manifest value, seconds) pairs, always > 0."""
    n = draw(st.integers(1, 10_000))
    return draw(
        st.sampled_from(
            [
                (n, float(n)),
                (f"{n}s", float(n)),
                (f"{n}ms", n * 0.001),
                (f"{n}m", n * 60.0),
                (f"{n}h", n * 3600.0),
                (n / 8, n / 8),
            ]
        )
    )


@st.composite
def sizes(draw: st.DrawFn, minimum: int) -> tuple[Any, int]:
    n = draw(st.integers(16, 4096))
    return draw(
        st.sampled_from(
            [
                (f"{n}Mi", n * Mi),
                (f"{n * 1024}Ki", n * Mi),
                (f"{n + 1}M", (n + 1) * 1000**2),
                (f"{n}G", n * 1000**3),
                (n * Mi + minimum, n * Mi + minimum),
            ]
        )
    )


@st.composite
def function_cases(draw: st.DrawFn, name: str) -> tuple[dict[str, Any], FunctionSpec]:
    """A raw manifest entry and the FunctionSpec it must turn into."""
    raw: dict[str, Any] = {"handler": f"./{name}"}
    expected: dict[str, Any] = {"name": name}
    if draw(st.booleans()):
        raw["runtime"] = "python"
    if draw(st.booleans()):
        raw["isolation"] = "process"
    if draw(st.booleans()):
        raw["public"] = expected["public"] = draw(st.booleans())
    if draw(st.booleans()):
        lo = draw(st.integers(0, 1000))
        scale_raw: dict[str, Any] = {"min": lo}
        scale = {"min": lo, "max": max(4, lo)}
        if draw(st.booleans()):
            scale_raw["max"] = scale["max"] = draw(st.integers(max(lo, 1), 1000))
        if draw(st.booleans()):
            scale_raw["target_concurrency"] = scale["target_concurrency"] = draw(
                st.integers(1, 10_000)
            )
        if draw(st.booleans()):
            scale_raw["idle_timeout"], scale["idle_timeout"] = draw(durations())
        raw["scale"], expected["scale"] = scale_raw, Scale(**scale)
    if draw(st.booleans()):
        limits_raw: dict[str, Any] = {}
        limits: dict[str, Any] = {}
        if draw(st.booleans()):
            limits_raw["memory"], limits["memory"] = draw(sizes(16 * Mi))
        if draw(st.booleans()):
            limits_raw["max_body"], limits["max_body"] = draw(sizes(1))
        for key in ("timeout", "cpu_time"):
            if draw(st.booleans()):
                limits_raw[key], limits[key] = draw(durations())
        if draw(st.booleans()):
            millis = draw(st.integers(1, 64_000))
            limits_raw["cpu"], limits["cpu"] = draw(
                st.sampled_from([(f"{millis}m", millis / 1000), (millis / 1000, millis / 1000)])
            )
        if draw(st.booleans()):
            limits_raw["open_files"] = limits["open_files"] = draw(st.integers(16, 1 << 20))
        if draw(st.booleans()):
            limits_raw["processes"] = limits["processes"] = draw(st.integers(1, 1 << 16))
        raw["limits"], expected["limits"] = limits_raw, Limits(**limits)
    for key in ("env", "labels"):
        if draw(st.booleans()):
            values = st.one_of(TEXT, st.integers(-(10**12), 10**12))
            mapping = draw(st.dictionaries(TEXT.filter(bool), values, max_size=4))
            raw[key] = mapping
            expected[key] = {k: str(v) for k, v in mapping.items()}
    return raw, FunctionSpec(**expected)


@st.composite
def manifests(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, FunctionSpec]]:
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    cases = {name: draw(function_cases(name)) for name in names}
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["version"] = "1.0"
    doc["functions"] = {name: raw for name, (raw, _) in cases.items()}
    return doc, {name: spec for name, (_, spec) in cases.items()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=manifests(), flow=st.sampled_from([False, True, None]))
def test_property_valid_specs_round_trip(
    case: tuple[dict[str, Any], dict[str, FunctionSpec]], flow: bool | None
) -> None:
    doc, expected = case
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=flow)
    manifest = parse_manifest(text)
    assert list(manifest.functions) == list(expected)
    for name, spec in expected.items():
        assert manifest.functions[name].spec == spec
        assert manifest.functions[name].handler_dir == Path(f"./{name}")


# Unknown-key insertion. A document is a list of entries: (key, scalar text), (key, [entries])
# or a comment / blank line; the inserted entry is recognised by identity while rendering.

Entry = tuple[str, Any]
ALLOWED = {
    "top": {"version", "provider", "functions"},
    "function": SPEC_KEYS | {"handler"},
    "scale": set(Scale.__struct_fields__),
    "limits": set(Limits.__struct_fields__),
}


def _plain_string_key(key: str) -> bool:
    try:
        return yaml.safe_load(f"{key}: 1") == {key: 1}
    except yaml.YAMLError:
        return False


UNKNOWN_KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,15}", fullmatch=True).filter(
    _plain_string_key
)
JUNK = st.lists(st.sampled_from(["# a comment", "", "   # indented comment"]), max_size=2)


def _render(entries: list[Any], indent: int, marker: object, out: list[str]) -> int | None:
    found = None
    for entry in entries:
        if isinstance(entry, str):  # comment or blank line
            out.append(entry)
            continue
        key, value = entry
        if entry is marker:
            found = len(out) + 1
        if isinstance(value, list):
            out.append(" " * indent + f"{key}:")
            inner = _render(value, indent + 2, marker, out)
            found = found or inner
        else:
            out.append(" " * indent + f"{key}: {value}".rstrip())
    return found


@st.composite
def manifests_with_unknown_key(draw: st.DrawFn) -> tuple[str, int, str]:
    level = draw(st.sampled_from(sorted(ALLOWED)))
    key = draw(UNKNOWN_KEYS.filter(lambda k: k not in ALLOWED[level]))
    value = draw(st.sampled_from(["1", "x", "true", "{a: 1}", "[1, 2]", "", "'quoted'"]))
    inserted: Entry = (key, value)

    def block(entries: list[Any]) -> list[Any]:
        """Interleave comments and blank lines."""
        out: list[Any] = []
        for entry in entries:
            out.extend(draw(JUNK))
            out.append(entry)
        return out

    names = draw(st.lists(NAMES.filter(_plain_string_key), min_size=1, max_size=3, unique=True))
    target = draw(st.sampled_from(names))
    functions: list[Any] = []
    blocks: dict[str, list[Any]] = {}
    for name in names:
        body: list[Any] = [("handler", f"./{name}")]
        if draw(st.booleans()):
            body.append(("runtime", "python"))
        scale = block(draw(st.sampled_from([[], [("min", "0"), ("max", "3")], [("max", "2")]])))
        limits = block(
            draw(st.sampled_from([[], [("memory", "128Mi")], [("cpu", "500m"), ("timeout", "2s")]]))
        )
        if scale or (name == target and level == "scale"):
            body.append(("scale", scale))
        if limits or (name == target and level == "limits"):
            body.append(("limits", limits))
        if draw(st.booleans()):
            body.append(("env", [("A", "b")]))
        body = block(draw(st.permutations(body)))
        if name == target:
            blocks = {"function": body, "scale": scale, "limits": limits}
        functions.append((name, body))
    top: list[Any] = block(
        [*draw(st.sampled_from([[], [("version", '"1.0"')]])), ("functions", functions)]
    )
    blocks["top"] = top
    chosen = blocks[level]
    chosen.insert(draw(st.integers(0, len(chosen))), inserted)

    lines: list[str] = []
    line = _render(top, 0, inserted, lines)
    assert line is not None
    expected_key = key if level == "top" else f"functions.{target}.{key}"
    if level in ("scale", "limits"):
        expected_key = f"functions.{target}.{level}.{key}"
    return "\n".join(lines) + "\n", line, expected_key


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=manifests_with_unknown_key())
def test_property_unknown_key_points_at_its_line(case: tuple[str, int, str]) -> None:
    text, line, key = case
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "stack.yml")
    err = info.value
    assert (err.line, err.key) == (line, key), f"{err}\n{text}"
    assert "unknown" in err.message
    assert text.splitlines()[line - 1].lstrip().startswith(f"{key.rsplit('.', 1)[-1]}:")


# fmt: off
YAML_BITS = st.sampled_from(
    [
        "functions:",
        "version: 1",
        "provider:",
        "hello:",
        "handler: ./h",
        "scale:",
        "limits:",
        "max: 0",
        "min: 5",
        "memory: 1Mi",
        "cpu: 500m",
        "timeout: 9" * 3,
        "env:",
        "A: 1",
        "public: yes",
        "runtime: go",
        "\n",
        "\n  ",
        "\n    ",
        "  ",
        "- ",
        "? ",
        ": ",
        ", ",
        "{",
        "}",
        "[",
        "]",
        "&a ",
        "*a",
        "<<: *a",
        "!!int ",
        "!!str ",
        "!foo ",
        "!!binary ",
        "'",
        '"',
        "#",
        "---",
        "...",
        "|\n",
        ">-\n",
        "~",
        "null",
        "true",
        "1.5",
        "0x1F",
        "\t",
        "%YAML",
        "\\",
        "\r",
        "é",
        "\x00",
        "\ufeff",
        "9" * 400 + "Mi",
        ".nan",
        "2001-01-01",
    ]
)


def _check_only_manifest_errors(text: str) -> None:
    try:
        result = parse_manifest(text, "fuzz.yml")
    except ManifestError as err:
        assert err.file == "fuzz.yml"
        assert err.message
        assert (
            err.line is None
            or 1 <= err.line <= len(re.split(r"\r\n|[\r\n\x85\u2028\u2029]", text)) + 1
        )
        assert str(err).startswith("fuzz.yml")
    else:
        assert isinstance(result, Manifest)
        assert result.functions


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_property_arbitrary_text_only_raises_manifest_error(text: str) -> None:
    _check_only_manifest_errors(text)


@settings(max_examples=200, deadline=None)
@given(text=st.lists(YAML_BITS, max_size=40).map("".join))
def test_property_yamlish_text_only_raises_manifest_error(text: str) -> None:
    _check_only_manifest_errors(text)
