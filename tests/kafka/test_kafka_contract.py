"""The shared source contract suite, run against the Kafka source on tansu."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

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
    @pytest.fixture
    async def harness(self, tansu: TansuBroker, topic: str) -> AsyncIterator[KafkaHarness]:
        source = KafkaSource("kafka", tansu.bootstrap, topic, poll_timeout=0.1)
        publisher = KafkaPublisher(tansu.bootstrap, topic)
        yield KafkaHarness(source, publisher)
        await source.close()
        await publisher.close()
