"""The vectorised flow table behaves like a dict of key -> (value, last seen), batch by batch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from nfaas.nf.flowtable import FlowTable, mix64

# Small keys collide on their home slots in a small table; a few huge ones check the top bit.
KEYS = st.one_of(
    st.integers(0, 40), st.sampled_from([2**63, 2**64 - 1, 2**64 - 2, 12345678901234567890])
)
BATCH = st.lists(KEYS, max_size=24)


class FlowTableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = FlowTable(capacity=8)
        self.model: dict[int, tuple[int, float]] = {}
        self.now = 0.0

    @rule(keys=BATCH, data=st.data())
    def insert(self, keys: list[int], data: st.DataObject) -> None:
        values = data.draw(
            st.lists(st.integers(-(2**63), 2**63 - 1), min_size=len(keys), max_size=len(keys))
        )
        stored = self.table.insert(np.array(keys, np.uint64), np.array(values, np.int64), self.now)
        assert stored.all()
        for key, value in zip(keys, values, strict=True):
            self.model[key] = (value, self.now)

    @rule(keys=BATCH)
    def delete(self, keys: list[int]) -> None:
        present = self.table.delete(np.array(keys, np.uint64))
        expected = [self.model.pop(key, None) is not None for key in keys]
        assert present.tolist() == expected

    @rule(keys=BATCH, touch=st.booleans())
    def lookup(self, keys: list[int], touch: bool) -> None:
        values, found = self.table.lookup(
            np.array(keys, np.uint64), now=self.now if touch else None
        )
        for key, value, hit in zip(keys, values.tolist(), found.tolist(), strict=True):
            assert hit == (key in self.model)
            assert value == (self.model[key][0] if hit else -1)
            if hit and touch:
                self.model[key] = (value, self.now)

    @rule(keys=BATCH, ttl=st.floats(0, 5))
    def lookup_live(self, keys: list[int], ttl: float) -> None:
        _, found = self.table.lookup(np.array(keys, np.uint64), now=self.now, ttl=ttl)
        for key, hit in zip(keys, found.tolist(), strict=True):
            live = key in self.model and self.now - self.model[key][1] <= ttl
            assert hit == live
            if live:
                self.model[key] = (self.model[key][0], self.now)

    @rule(step=st.floats(0, 3))
    def advance(self, step: float) -> None:
        self.now += step

    @precondition(lambda self: self.model)
    @rule(ttl=st.floats(0, 4))
    def expire(self, ttl: float) -> None:
        keys, values = self.table.expire(self.now, ttl)
        gone = {k: v for k, (v, seen) in self.model.items() if self.now - seen > ttl}
        assert dict(zip(keys.tolist(), values.tolist(), strict=True)) == gone
        for key in gone:
            del self.model[key]

    @invariant()
    def same_contents(self) -> None:
        assert len(self.table) == len(self.model)
        keys, values, seen = self.table.items()
        assert {
            k: (v, s) for k, v, s in zip(keys.tolist(), values.tolist(), seen.tolist(), strict=True)
        } == self.model
        assert len(self.table) <= self.table.max_load * self.table.capacity


FlowTableMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
TestFlowTableAgainstDict = FlowTableMachine.TestCase


def test_grows_and_keeps_every_key() -> None:
    table = FlowTable(capacity=8)
    keys = np.arange(100_000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    table.insert(keys, np.arange(keys.size), now=1.0)
    assert len(table) == keys.size and table.capacity >= 2 * keys.size
    values, found = table.lookup(keys)
    assert found.all() and (values == np.arange(keys.size)).all()
    assert not table.lookup(keys + np.uint64(1))[1].any()


def test_last_write_wins_within_a_batch() -> None:
    table = FlowTable()
    table.insert(np.array([5, 7, 5, 5], np.uint64), np.array([1, 2, 3, 4]), now=0.0)
    assert table.lookup(np.array([5, 7], np.uint64))[0].tolist() == [4, 2]


def test_tombstones_do_not_break_probe_chains() -> None:
    table = FlowTable(capacity=64)
    keys = np.arange(30, dtype=np.uint64)
    table.insert(keys, keys.astype(np.int64), now=0.0)
    table.delete(keys[::2])
    values, found = table.lookup(keys)
    assert found.tolist() == [k % 2 == 1 for k in range(30)]
    assert (values[found] == keys[found].astype(np.int64)).all()
    # Churn through many delete/insert cycles: tombstones get cleaned, size stays bounded.
    for round_ in range(50):
        fresh = np.arange(1000 + round_ * 15, 1000 + round_ * 15 + 15, dtype=np.uint64)
        table.insert(fresh, 1, now=0.0)
        table.delete(fresh)
    assert len(table) == 15 and table.capacity == 64


def test_max_entries_refuses_new_keys_but_updates_old_ones() -> None:
    table = FlowTable(max_entries=3)
    assert table.insert(np.array([1, 2], np.uint64), 0, now=0.0).all()
    stored = table.insert(np.array([9, 1, 8, 7, 8], np.uint64), np.array([1, 1, 1, 1, 1]), now=1.0)
    # 9 is admitted (first new key in batch order), then the table is full: 8 and 7 refused.
    assert stored.tolist() == [True, True, False, False, False]
    assert len(table) == 3 and 9 in table and 8 not in table
    assert table.lookup(np.array([1], np.uint64))[0].tolist() == [1]


def test_expire_with_a_ttl_per_value() -> None:
    table = FlowTable()
    table.insert(np.array([1, 2, 3], np.uint64), np.array([10, 20, 30]), now=0.0)
    keys, values = table.expire(15.0, lambda v: v.astype(np.float64))  # ttl = value
    assert sorted(keys.tolist()) == [1] and values.tolist() == [10]
    keys, _ = table.expire(25.0, lambda v: v.astype(np.float64))
    assert keys.tolist() == [2] and len(table) == 1


def test_mix64_is_a_bijection_on_a_sample() -> None:
    keys = np.arange(1 << 16, dtype=np.uint64)
    assert np.unique(mix64(keys)).size == keys.size


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (np.array([1, -2]), "non-negative"),
        (np.array([1.5]), "integers"),
        (np.zeros((2, 2), np.uint64), "1-d"),
    ],
)
def test_bad_keys_are_named(keys: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlowTable().lookup(keys)


def test_ttl_lookup_needs_now() -> None:
    with pytest.raises(ValueError, match="ttl needs now"):
        FlowTable().lookup(np.array([1], np.uint64), ttl=1.0)
