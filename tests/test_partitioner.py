"""Outputs sent as record batches go to the partition Kafka's default partitioner gives their key."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from consumers.partitioner import KeyPartitions


def test_remembered_partitions_are_the_default_partitioners_across_batches_topics_and_partition_counts():
    kafka, chosen = DefaultPartitioner(), KeyPartitions()
    keys = [f"sensor-{i}".encode() for i in range(120)]
    for count in (4, 4, 6, 4):  # the same keys batch after batch; partitions added, then a topic of 4 again
        parts = list(range(count))
        for topic in ("scores", "alerts"):
            got = [chosen.of(topic, k, parts) for k in keys]
            assert got == [kafka(k, parts, parts) for k in keys], (topic, count)


def test_past_its_limit_the_table_begins_again_and_still_answers_right():
    kafka, chosen = DefaultPartitioner(), KeyPartitions(limit=50)
    keys = [f"sensor-{i}".encode() for i in range(120)]
    for _ in range(2):
        assert [chosen.of("scores", k, [0, 1, 2]) for k in keys] == [kafka(k, [0, 1, 2], [0, 1, 2]) for k in keys]
    assert len(chosen._chosen) <= 50


def test_a_key_of_none_gets_one_of_the_topics_partitions():
    chosen = KeyPartitions()
    assert {chosen.of("scores", None, [0, 1, 2]) for _ in range(200)} <= {0, 1, 2}
