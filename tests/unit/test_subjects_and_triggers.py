"""NATS subjects, MQTT filters, trigger specs and the retry policy (pure parts)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfaas.core.delivery import Retry, parse_retry_after
from nfaas.core.spec import SpecError, spec_to_dict, validate_spec
from nfaas.core.subjects import (
    SubjectError,
    mqtt_filter_to_subjects,
    subject_covers,
    subject_matches,
    subjects_overlap,
    validate_subject,
)

TOKENS = st.sampled_from(["a", "b", "c"])
PATTERN_TOKENS = st.sampled_from(["a", "b", "c", "*"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(PATTERN_TOKENS, min_size=1, max_size=4))
    if draw(st.booleans()):
        tokens.append(">")
    return ".".join(tokens)


literals = st.lists(TOKENS, min_size=1, max_size=6).map(".".join)


@given(patterns(), patterns(), st.lists(literals, min_size=1, max_size=60))
def test_overlap_and_cover_agree_with_matching(a: str, b: str, samples: list[str]) -> None:
    for subject in samples:
        if subject_matches(a, subject) and subject_matches(b, subject):
            assert subjects_overlap(a, b)
        if subject_covers(a, b) and subject_matches(b, subject):
            assert subject_matches(a, subject)


@given(patterns(), patterns())
def test_overlap_is_witnessed_by_a_subject(a: str, b: str) -> None:
    """When two patterns overlap, some literal subject over the same alphabet is in both."""
    if not subjects_overlap(a, b):
        return
    longest = max(len(a.split(".")), len(b.split("."))) + 1
    witness = []
    for index in range(longest):
        x = a.split(".")[index] if index < len(a.split(".")) else ">"
        y = b.split(".")[index] if index < len(b.split(".")) else ">"
        concrete = [t for t in (x, y) if t not in ("*", ">")]
        witness.append(concrete[0] if concrete else "a")
        candidate = ".".join(witness)
        if subject_matches(a, candidate) and subject_matches(b, candidate):
            return
    raise AssertionError(f"{a} and {b} said to overlap, no witness found")


@pytest.mark.parametrize(
    ("subject", "rule"),
    [
        ("", "non-empty"),
        ("a..b", "token 2 is empty"),
        (".a", "token 1 is empty"),
        ("a.>.b", "'>' may only be the last"),
        ("a.b*", "whole tokens"),
        ("a b", "token 1"),
        ("nfaas.calls.x", "reserved"),
        ("$JS.API", "reserved"),
        ("_INBOX.x", "reserved"),
    ],
)
def test_bad_subjects_name_the_rule(subject: str, rule: str) -> None:
    with pytest.raises(SubjectError, match=rule.replace("*", r"\*").replace("(", r"\(")):
        validate_subject(subject)


def test_wildcards_can_be_refused() -> None:
    with pytest.raises(SubjectError, match="not allowed"):
        validate_subject("a.*", wildcards=False)


@pytest.mark.parametrize(
    ("mqtt", "nats"),
    [
        ("sensors/dev1/temp", ["sensors.dev1.temp"]),
        ("sensors/+/temp", ["sensors.*.temp"]),
        ("sensors/#", ["sensors", "sensors.>"]),
        ("#", [">"]),
    ],
)
def test_mqtt_filters_map_as_the_listener_does(mqtt: str, nats: list[str]) -> None:
    assert mqtt_filter_to_subjects(mqtt) == nats


@pytest.mark.parametrize(
    ("mqtt", "rule"),
    [
        ("a/#/b", "'#' may only be the last level"),
        ("a//b", "level 2 is empty"),
        ("/a", "level 1 is empty"),
        ("a/b+", "whole levels"),
        ("a/b.c", "cannot cross into NATS"),
    ],
)
def test_bad_mqtt_filters_name_the_level(mqtt: str, rule: str) -> None:
    with pytest.raises(SubjectError, match=rule):
        mqtt_filter_to_subjects(mqtt)


@given(st.lists(st.sampled_from(["a", "b", "+"]), min_size=1, max_size=5), st.booleans())
def test_every_well_formed_mqtt_filter_maps_to_valid_subjects(
    levels: list[str], hash_: bool
) -> None:
    topic = "/".join(levels + (["#"] if hash_ else []))
    for subject in mqtt_filter_to_subjects(topic):
        assert validate_subject(subject) == subject


def test_trigger_specs_round_trip_through_the_api_form() -> None:
    raw = {
        "triggers": [
            {"nats": "a.*", "batch": {"size": 10, "wait": "200ms"}},
            {"mqtt": "s/+/t"},
            {"topic": "telemetry", "from": "all"},
            {"topics": {"collect": "true"}},
            {"cron": "*/5 * * * *", "body": "tick"},
        ],
        "retry": {"attempts": 4, "backoff": "2s", "on_status": [500]},
        "queue": {"concurrency": 3},
    }
    spec = validate_spec("f", raw)
    again = spec_to_dict(spec)
    again.pop("name")
    assert validate_spec("f", again) == spec
    assert [t.kind for t in spec.triggers] == ["nats", "mqtt", "topic", "topics", "cron"]
    assert spec.triggers[1].subjects == ["s.*.t"]
    assert [t.start for t in spec.triggers] == ["new", "new", "all", "new", "new"]


@pytest.mark.parametrize(
    ("triggers", "field", "text"),
    [
        ([{"mqtt": "a/#/b"}], "triggers.0.mqtt", "'#' may only be the last level"),
        ([{"cron": "61 * * * *"}], "triggers.0.cron", "out of range"),
        ([{"nats": "a", "batch": {"size": 0}}], "triggers.0.batch.size", "from 1 to"),
        ([{"nats": "a", "mqtt": "b"}], "triggers.0", "exactly one"),
        ([{"nats": "a", "when": 1}], "triggers.0.when", "unknown key"),
        ([{"cron": "@hourly", "batch": {"size": 2}}], "triggers.0.batch", "one call at a time"),
        ([{"topic": "t", "from": "start"}], "triggers.0.from", "one of new, all"),
        ([{"cron": "@hourly", "from": "all"}], "triggers.0.from", "unknown key"),
        ("nats", "triggers", "a list"),
    ],
)
def test_bad_triggers_name_the_field(triggers: object, field: str, text: str) -> None:
    with pytest.raises(SpecError, match=text) as caught:
        validate_spec("f", {"triggers": triggers})
    assert caught.value.field == field


def test_triggers_need_a_handler() -> None:
    with pytest.raises(SpecError, match="has none"):
        validate_spec("f", {"runtime": "command", "command": ["x"], "triggers": [{"nats": "a"}]})


@given(st.integers(1, 20), st.floats(0.01, 10), st.floats(1, 4), st.floats(0, 1))
def test_backoff_grows_within_its_bounds(
    attempt: int, first: float, mult: float, jit: float
) -> None:
    retry = Retry(backoff=first, max_backoff=first * 50, multiplier=mult, jitter=jit)
    delay = retry.delay(attempt, rng=random.Random(attempt))
    base = min(first * mult ** (attempt - 1), first * 50)
    assert base * (1 - jit) - 1e-9 <= delay <= min(base * (1 + jit), first * 50) + 1e-9


def test_retry_after_wins_but_is_capped() -> None:
    retry = Retry(backoff=1.0, max_backoff=30.0)
    assert retry.delay(1, retry_after=7.0) == 7.0
    assert retry.delay(1, retry_after=600.0) == 30.0
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after("-3") is None
