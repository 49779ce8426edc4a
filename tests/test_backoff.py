"""The one backoff policy: its delays, and the range check the sources share."""

from __future__ import annotations

import random

import pytest

from datasync.backoff import Backoff
from datasync.errors import ConfigError
from datasync.transport.etcd import EtcdSource
from datasync.transport.kafka import KafkaSource


def test_delays_double_up_to_the_cap_within_the_jitter() -> None:
    b = Backoff(initial=0.1, multiplier=2.0, maximum=0.5, jitter=0.5)
    rng = random.Random(1)
    for attempt, step in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (50, 0.5)]:
        assert b.step(attempt) == pytest.approx(step)
        assert step * 0.5 <= b.delay(attempt, rng) <= step


@pytest.mark.parametrize(
    ("kw", "bad"),
    [
        ({"initial": 0}, "initial"),
        ({"initial": 2, "maximum": 1}, "maximum"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.0}, "jitter"),
    ],
)
def test_bad_policy_names_the_field(kw: dict[str, float], bad: str) -> None:
    with pytest.raises(ConfigError, match=bad):
        Backoff(**kw)


@pytest.mark.parametrize(("first", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_sources_refuse_a_bad_range_in_their_own_names(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match=r"EtcdSource e1: need 0 < backoff_base <= backoff_cap"):
        EtcdSource("e1", backoff_base=first, backoff_cap=cap)
    with pytest.raises(
        ValueError, match=r"KafkaSource k1: need 0 < backoff_initial <= backoff_max"
    ):
        KafkaSource("k1", backoff_initial=first, backoff_max=cap)


def test_sources_take_a_good_range() -> None:
    assert EtcdSource("e1", backoff_base=0.5, backoff_cap=0.5).backoff.maximum == 0.5
    assert KafkaSource("k1", backoff_initial=0.2, backoff_max=1.0).backoff.initial == 0.2
