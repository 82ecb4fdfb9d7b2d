"""The Internet checksum (RFC 1071), scalar and vectorised, and its incremental update (RFC 1624).

Sums here are "unfolded": plain integers (or uint64 arrays) holding the sum of big-endian
16-bit words; `fold` turns them into the 16-bit one's-complement sum and `finish` into the
value that goes into a header's checksum field.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "as_words",
    "finish",
    "finish_array",
    "fold",
    "fold_array",
    "incremental_update",
    "internet_checksum",
    "pseudo_header_sum",
    "segment_sums",
    "word_sum",
]

U64 = NDArray[np.uint64]


def word_sum(data: bytes | bytearray | memoryview) -> int:
    """Unfolded sum of `data` as big-endian 16-bit words (an odd last byte is zero-padded)."""
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\0"
    return int(np.frombuffer(raw, dtype=">u2").sum(dtype=np.uint64))


def fold(total: int) -> int:
    """Fold an unfolded sum into 16 bits with end-around carry."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def finish(total: int) -> int:
    """Checksum field value (one's complement of the folded sum)."""
    return ~fold(total) & 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of `data`, starting from the unfolded sum `initial` (pseudo header)."""
    return finish(initial + word_sum(data))


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Unfolded sum of the IPv4 (4-byte addresses) or IPv6 (16-byte) pseudo header."""
    return word_sum(src) + word_sum(dst) + protocol + (length >> 16) + (length & 0xFFFF)


def fold_array(total: ArrayLike) -> NDArray[np.uint16]:
    """Vectorised `fold` of uint64 unfolded sums."""
    t = np.asarray(total, dtype=np.uint64)
    for _ in range(4):  # 64 -> 16 bits needs at most four rounds
        t = (t & np.uint64(0xFFFF)) + (t >> np.uint64(16))
    return t.astype(np.uint16)


def finish_array(total: ArrayLike) -> NDArray[np.uint16]:
    """Vectorised `finish`: checksum field values from unfolded sums."""
    return ~fold_array(total)


def incremental_update(
    checksum: ArrayLike, old_words: ArrayLike, new_words: ArrayLike
) -> NDArray[np.uint16]:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for 16-bit words m -> m'.

    `old_words` / `new_words` are (n,) or (n, k) arrays of 16-bit words that changed in each
    packet (k words per packet, e.g. 2 for an IPv4 address, 8 for an IPv6 address).
    """
    hc = np.asarray(checksum).astype(np.uint64)
    old = np.asarray(old_words).astype(np.uint64)
    new = np.asarray(new_words).astype(np.uint64)
    delta = (np.uint64(0xFFFF) - old) + new  # ~m + m' in one's-complement terms
    if delta.ndim > hc.ndim:
        delta = delta.sum(axis=-1, dtype=np.uint64)
    total = (np.uint64(0xFFFF) - hc) + delta
    return ~fold_array(total)


def _strided_range_sums(
    view: NDArray[np.uint8], lo: NDArray[np.int64], hi: NDArray[np.int64]
) -> U64:
    """sum(view[lo[i]:hi[i]]) for every i (0 for empty ranges), with np.add.reduceat."""
    size = view.shape[0]
    out = np.zeros(lo.shape[0], np.uint64)
    if size == 0 or lo.shape[0] == 0:
        return out
    hi = np.minimum(hi, size)
    lo_c = np.minimum(lo, size - 1)
    hi_c = np.minimum(hi, size - 1)
    idx = np.empty(2 * lo.shape[0], np.int64)
    idx[0::2] = lo_c
    idx[1::2] = hi_c
    sums = np.add.reduceat(view, idx, dtype=np.uint64)[0::2]
    out = np.where(lo_c < hi_c, sums, np.uint64(0))
    # reduceat cannot take `size` as an end index: add the last element by hand.
    tail = (hi == size) & (lo < hi)
    out[tail] += np.uint64(view[size - 1])
    return out


def segment_sums(data: NDArray[np.uint8], starts: ArrayLike, ends: ArrayLike) -> U64:
    """Unfolded word sums of the byte ranges `data[starts[i]:ends[i]]`, all at once.

    Each range is read as big-endian 16-bit words from its own start, so bytes at the same
    parity as the start are high bytes. No per-packet loop: two reduceat passes over the
    even- and odd-position byte views.
    """
    s = np.asarray(starts, dtype=np.int64)
    e = np.maximum(np.asarray(ends, dtype=np.int64), s)
    even, odd = data[0::2], data[1::2]
    # Positions 2k lie in [s, e) for k in [ceil(s/2), ceil(e/2)); 2k+1 for k in [s//2, e//2).
    even_sum = _strided_range_sums(even, (s + 1) // 2, (e + 1) // 2)
    odd_sum = _strided_range_sums(odd, s // 2, e // 2)
    starts_even = (s % 2) == 0
    high = np.where(starts_even, even_sum, odd_sum)
    low = np.where(starts_even, odd_sum, even_sum)
    return high * np.uint64(256) + low


def as_words(values: NDArray[Any], width: int) -> NDArray[np.uint16]:
    """Split big-endian unsigned integers of `width` bytes into (n, width/2) 16-bit words."""
    vals = np.asarray(values).astype(f">u{width}")
    return vals.view(">u2").reshape(-1, width // 2).astype(np.uint16)
