"""The shared source contract suite, run against the Kafka source on tansu."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from datasync.transport.kafka import KafkaPublisher, KafkaSource
from tests.source_contract import SourceContract

from .conftest import TansuBroker

pytestmark = pytest.mark.kafka


@dataclass
class KafkaHarness:
    source: KafkaSource
    publisher: KafkaPublisher
    name: str = "kafka"
    # Each record of a Kafka "txn" has its own offset, hence its own revision.
    atomic_txn: bool = False
    # prev_value is only known for keys this watch saw change, not for older ones.
    prev_values: bool = False


class TestKafkaContract(SourceContract):
    # transport/kafka.py iterates a str given as its prefixes (not this change's file): strict,
    # so the day it validates them with datasync.api.validate_prefixes this marker must go.
    @pytest.mark.xfail(strict=True, reason="transport/kafka.py does not reject a str yet")
    async def test_a_str_where_prefixes_are_expected_is_an_error(
        self, harness: Any, prefix: str
    ) -> None:
        await super().test_a_str_where_prefixes_are_expected_is_an_error(harness, prefix)

    @pytest.fixture
    async def harness(self, tansu: TansuBroker, topic: str) -> AsyncIterator[KafkaHarness]:
        source = KafkaSource("kafka", tansu.bootstrap, topic, poll_timeout=0.1)
        publisher = KafkaPublisher(tansu.bootstrap, topic)
        yield KafkaHarness(source, publisher)
        await source.close()
        await publisher.close()
