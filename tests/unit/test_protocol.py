"""The worker frame protocol: any split of the byte stream yields the same messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfaas.worker.protocol import (
    HEADER,
    Error,
    FrameBuffer,
    Invoke,
    Loaded,
    Ping,
    ProtocolError,
    Result,
    decode,
    encode,
)

headers = st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=4)
messages = st.one_of(
    st.builds(
        Invoke,
        st.integers(0, 2**32),
        st.sampled_from(["GET", "POST"]),
        st.text(max_size=20),
        st.text(max_size=20),
        headers,
        st.binary(max_size=300),
    ),
    st.builds(
        Result, st.integers(0, 2**32), st.integers(100, 599), headers, st.binary(max_size=300)
    ),
    st.builds(Error, st.integers(0, 2**32), st.text(max_size=20), st.text(max_size=50)),
    st.builds(Loaded, st.integers(0, 2**32), st.booleans(), st.text(max_size=30), st.floats(0, 10)),
    st.builds(Ping, st.integers(0, 2**32)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_any_split_of_the_stream_decodes_the_same_messages(batch, data) -> None:
    stream = b"".join(encode(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    buffer = FrameBuffer()
    out = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out += buffer.feed(stream[previous:cut])
        previous = cut
    assert out == batch


def test_garbage_payload_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode(b"\xc1\xc1")


def test_oversized_frame_is_refused_before_buffering_it() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameBuffer().feed(HEADER.pack(2**31) + b"x")
