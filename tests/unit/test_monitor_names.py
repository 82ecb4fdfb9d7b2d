"""Monitoring topic names ``<useCase>.<expId>.<site>.<type>.<metric>``: the validator
(nfaas.monitor.mon.parse_topic) accepts exactly the valid ones and names the rule and the part
every other one breaks. Also the answer parser of mon's small HTTP/1.1 client, which every
monitoring function uses (it reads what uvicorn sends: content-length or chunked bodies)."""

from __future__ import annotations

import io
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nfaas.core.subjects import validate_subject
from nfaas.monitor.mon import (
    MAX_LENGTH,
    PARTS,
    RESERVED_USE_CASES,
    STORE_PREFIX,
    TYPES,
    TopicName,
    TopicNameError,
    parse_topic,
    read_response,
)

ALPHABET = string.ascii_letters + string.digits + "_-"
tokens = st.text(ALPHABET, min_size=1, max_size=24)
types = st.sampled_from(TYPES)


@st.composite
def valid_parts(draw: st.DrawFn) -> list[str]:
    use_case = draw(tokens.filter(lambda t: t not in RESERVED_USE_CASES))
    return [use_case, draw(tokens), draw(tokens), draw(types), draw(tokens)]


def rejects(name: object) -> TopicNameError:
    with pytest.raises(TopicNameError) as caught:
        parse_topic(name)
    return caught.value


# --- what is accepted -------------------------------------------------------------------------


@given(valid_parts())
def test_valid_names_parse_into_their_five_parts(parts: list[str]) -> None:
    name = ".".join(parts)
    topic = parse_topic(name)
    assert topic == TopicName(*parts)
    assert topic.name == name
    assert topic.store == STORE_PREFIX + name


@given(valid_parts())
def test_a_valid_name_and_its_store_are_subjects_the_platform_accepts(parts: list[str]) -> None:
    topic = parse_topic(".".join(parts))
    validate_subject(topic.name, wildcards=False)
    validate_subject(topic.store, wildcards=False)
    assert len(topic.store) <= 200  # the platform's limit for a topic name


def test_the_seed_s_three_metric_types_are_accepted() -> None:
    for kind in ("kpi", "application_metric", "infrastructure_metric"):
        assert parse_topic(f"uc1.exp42.site-a.{kind}.cpu_usage").type == kind


def test_labels_carry_every_part() -> None:
    labels = parse_topic("smart_city.e7.turin.kpi.latency").labels()
    assert labels == {
        "monitoring.use_case": "smart_city",
        "monitoring.experiment": "e7",
        "monitoring.site": "turin",
        "monitoring.type": "kpi",
        "monitoring.metric": "latency",
    }


# --- what is rejected, and the error names the rule and the part -----------------------------


@given(st.lists(tokens, min_size=0, max_size=9).filter(lambda p: len(p) != 5))
def test_a_wrong_number_of_parts_breaks_the_parts_rule(parts: list[str]) -> None:
    name = ".".join(parts)
    assume(len(name) <= MAX_LENGTH)
    error = rejects(name)
    assert error.rule == "parts"
    assert f"has {len(name.split('.'))} dot-separated part(s); it needs 5" in str(error)


@given(valid_parts(), st.integers(0, 4))
def test_an_empty_part_is_named(parts: list[str], index: int) -> None:
    parts[index] = ""
    error = rejects(".".join(parts))
    assert (error.rule, error.part) == ("empty", PARTS[index])
    assert f"part {index + 1} <{PARTS[index]}> is empty" in str(error)


@given(
    valid_parts(),
    st.sampled_from([0, 1, 2, 4]),
    st.characters(exclude_characters=ALPHABET + ".", exclude_categories=("Cs",)),
    st.data(),
)
def test_a_character_outside_the_alphabet_is_named_with_its_part_and_position(
    parts: list[str], index: int, bad: str, data: st.DataObject
) -> None:
    where = data.draw(st.integers(0, len(parts[index])))
    parts[index] = parts[index][:where] + bad + parts[index][where:]
    error = rejects(".".join(parts))
    assert (error.rule, error.part, error.value) == ("charset", PARTS[index], parts[index])
    assert f"has {bad!r} at position {where + 1}" in str(error)


@given(valid_parts(), tokens.filter(lambda t: t not in TYPES))
def test_a_type_outside_the_three_is_named(parts: list[str], kind: str) -> None:
    parts[3] = kind
    error = rejects(".".join(parts))
    assert (error.rule, error.part, error.value) == ("type", "type", kind)
    assert "is not one of kpi, application_metric, infrastructure_metric" in str(error)


@pytest.mark.parametrize("use_case", RESERVED_USE_CASES)
def test_use_cases_the_platform_reserves_are_refused(use_case: str) -> None:
    error = rejects(f"{use_case}.e1.s1.kpi.m")
    assert (error.rule, error.part) == ("reserved", "useCase")


def test_a_name_longer_than_the_store_allows_breaks_the_length_rule() -> None:
    name = "uc.e.s.kpi." + "m" * (MAX_LENGTH - 10)
    assert len(name) == MAX_LENGTH + 1
    error = rejects(name)
    assert error.rule == "length"
    assert f"at most {MAX_LENGTH}" in str(error)
    assert parse_topic(name[:-1]).metric == "m" * (MAX_LENGTH - 11)


@pytest.mark.parametrize("value", [None, 5, b"uc.e.s.kpi.m", ["uc", "e"]])
def test_a_name_that_is_not_a_string_breaks_the_string_rule(value: object) -> None:
    assert rejects(value).rule == "string"


@given(st.text(max_size=80))
def test_any_text_is_either_a_valid_name_or_an_error_naming_a_rule(text: str) -> None:
    try:
        topic = parse_topic(text)
    except TopicNameError as error:
        assert error.rule in {"length", "parts", "empty", "charset", "type", "reserved"}
        body = error.to_json()
        assert body["rule"] == error.rule and body["topic"] == text
        if error.rule not in ("length", "parts"):
            assert body["part"] in PARTS
    else:
        assert topic.name == text


def test_the_first_broken_rule_is_reported_in_part_order() -> None:
    error = rejects("u c..s.bad.m")  # useCase has a space, expId is empty, type is wrong
    assert (error.rule, error.part) == ("charset", "useCase")


# --- mon's HTTP answers -----------------------------------------------------------------------


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, rest = b"", body
    for size in sizes:
        if not rest:
            break
        piece, rest = rest[: max(size, 1)], rest[max(size, 1) :]
        out += f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n"
    if rest:
        out += f"{len(rest):X}\r\n".encode() + rest + b"\r\n"
    return out + b"0\r\nx-trailer: 1\r\n\r\n"


@given(st.binary(max_size=3000), st.lists(st.integers(1, 700), max_size=8))
def test_a_chunked_answer_is_read_whole_and_the_next_one_after_it(
    body: bytes, sizes: list[int]
) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: a/b\r\n\r\n"
    after = b"HTTP/1.1 204 No Content\r\nserver: x\r\n\r\n"
    reader = io.BytesIO(head + chunked(body, sizes) + after)
    assert read_response(reader, "GET") == (
        200,
        {"transfer-encoding": "chunked", "content-type": "a/b"},
        body,
        True,
    )
    assert read_response(reader, "DELETE") == (204, {"server": "x"}, b"", True)


@given(st.binary(max_size=2000))
def test_a_sized_answer_is_read_to_its_length(body: bytes) -> None:
    raw = b"HTTP/1.1 201 Created\r\ncontent-length: %d\r\n\r\n" % len(body) + body + b"extra"
    status, _, data, keep = read_response(io.BytesIO(raw), "POST")
    assert (status, data, keep) == (201, body, True)


def test_a_connection_close_answer_ends_the_connection() -> None:
    raw = b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\nthe rest"
    assert read_response(io.BytesIO(raw), "GET") == (
        502,
        {"connection": "close"},
        b"the rest",
        False,
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_a_cut_or_garbled_answer_is_an_error_not_a_short_body(raw: bytes) -> None:
    with pytest.raises((ConnectionError, ValueError)):
        read_response(io.BytesIO(raw), "GET")
