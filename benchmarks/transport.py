"""Raw Kafka client throughput for one-reading messages: aiokafka against confluent-kafka (librdkafka), side by side.

What the service's transport costs per message, without the service: N one-reading JSON messages (the
ones `kafka_e2e.py` feeds the service: ~80 bytes, keyed by sensor id, 1,000 sensors, P partitions)
through the local broker, each client in turn, in `--rounds` interleaved rounds (the order alternates
from round to round), each measurement on a fresh topic; the table gives each one's median.

- produce, one `send` per record: aiokafka's `send()` (awaited in groups of 20,000, as the benchmarks'
  load generators do) against confluent-kafka's `produce()` (`poll(0)` every 1,000, `flush()` at the end);
  both idempotent, acks=all, linger 5 ms, 256 KiB batches, no compression. Time = first send → every
  record acknowledged.
- produce as the service does (`aiokafka, record batches`): the service's own `Delivery.deliver` (outputs
  appended to aiokafka's record batches, one per partition, in chunks of 5,000 outputs, each chunk
  acknowledged before the next: the service's batch), each output with the three source headers a score
  record carries.
- relay: the service's loop without pipelining, checkpoints or a group: each poll (up to 5,000 messages)
  is decoded, scored by the engine and its outputs built by the service's own code (`ScoringService`'s
  decoder, engine and output builder, as in `service_phases.py`), the outputs produced and every one
  acknowledged, then the batch's offsets committed, before the next poll. aiokafka: the service's
  `Delivery` (record batches); confluent-kafka: `produce()` per output (murmur2 partitioner, as Kafka's
  default), `flush()`, a synchronous `commit`. Time = first poll with records → the last commit: what
  swapping the transport under the service's own per-reading work would gain.
- consume: every record of a pre-produced topic from offset 0 (partitions assigned, no group), key and
  value read from each record as the service's decoder does: aiokafka's `getmany(max_records=5000)`
  against confluent-kafka's `consume(num_messages=5000)`. Time = first record returned → last.

Broker, benchmark and clients' background threads share the machine's cores (librdkafka's own threads
do its work outside the GIL): that is also how the service would run.

    .venv/bin/python benchmarks/transport.py --bootstrap 127.0.0.1:9092   # writes benchmarks/results/transport.*
    .venv/bin/python benchmarks/transport.py            # starts (and stops) its own broker on 29392
    .venv/bin/python benchmarks/transport.py --quick    # smoke run, writes to a temporary directory

confluent-kafka is optional (`pip install -e '.[bench]'`); without it only aiokafka's rows are measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import kafka_e2e  # noqa: E402 - sets the BLAS thread variables before numpy loads

LINGER_MS = 5
BATCH_BYTES = 262_144
POLL_RECORDS = 5_000
SERVICE_BATCH = 5_000
CONSUME_TIMEOUT = 0.01
"""confluent-kafka's `consume` waits this long for a full batch (aiokafka's `getmany` returns what it holds)."""


class Clock:
    """Wall time, this process's CPU time (all its threads: librdkafka's too) and the whole machine's busy CPU time
    (/proc/stat: the broker's share with it) from `start()` to `stop()`."""

    def start(self) -> Clock:
        self.wall, self.cpu, self.busy = time.perf_counter(), time.process_time(), machine_busy()
        return self

    def stop(self) -> tuple[float, float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu, machine_busy() - self.busy


def machine_busy() -> tuple[float, float, float]:
    """Seconds of CPU time the machine has spent busy (all cores, all processes) since boot."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def messages(n: int, sensors: int) -> list[tuple[bytes, bytes]]:
    return [kafka_e2e.reading(i % sensors, i // sensors) for i in range(n)]


def headers(i: int) -> list[tuple[str, bytes]]:
    """The three source headers a score record carries (every produced record here has them)."""
    return [("source_topic", b"in"), ("source_partition", b"0"), ("source_offset", str(i).encode())]


async def new_topic(bootstrap: str, partitions: int) -> str:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = kafka_e2e.unique("transport")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    await asyncio.sleep(0.5)
    return topic


# ----------------------------------------------------------------------------- produce


async def produce_aiokafka(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> tuple[float, float, float]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=LINGER_MS, max_batch_size=BATCH_BYTES)
    await producer.start()
    try:
        await (await producer.send(topic, b"{}", key=b"warm-up"))
        clock = Clock().start()
        futures = []
        for i, (key, value) in enumerate(msgs):
            futures.append(await producer.send(topic, value, key=key, headers=headers(i)))
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
        return clock.stop()
    finally:
        await producer.stop()


async def produce_service(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> tuple[float, float, float]:
    """The service's own path: `Delivery.deliver` of Output records, SERVICE_BATCH at a time."""
    from consumers.clients import make_producer
    from consumers.config import ServiceConfig
    from consumers.delivery import Delivery
    from consumers.metrics import ServiceStats
    from consumers.outputs import Output

    cfg = ServiceConfig(bootstrap_servers=bootstrap, input_topics=["unused"], scores_topic=topic,
                        alerts_topic=topic, dead_letter_topic=topic, group_id="unused", linger_ms=LINGER_MS)
    delivery = Delivery(cfg, ServiceStats(), heartbeat=lambda: None)
    delivery.producer = make_producer(cfg)
    await delivery.producer.start()
    try:
        await delivery.learn_limits()
        await delivery.deliver([Output(topic, b"warm-up", b"{}", [])])
        clock = Clock().start()
        for b in range(0, len(msgs), SERVICE_BATCH):
            # built in the loop, as the service builds its outputs
            await delivery.deliver([Output(topic, key, value, headers(b + j))
                                    for j, (key, value) in enumerate(msgs[b:b + SERVICE_BATCH])])
        return clock.stop()
    finally:
        await delivery.producer.stop()


def produce_confluent(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> tuple[float, float, float]:
    from confluent_kafka import KafkaException, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": LINGER_MS, "batch.size": BATCH_BYTES, "compression.type": "none",
                         "queue.buffering.max.messages": 1_000_000, "partitioner": "murmur2_random"})
    failures: list[object] = []

    def acked(err, _msg) -> None:
        if err is not None:
            failures.append(err)

    producer.produce(topic, b"{}", b"warm-up")
    producer.flush(30)
    clock = Clock().start()
    produce, poll = producer.produce, producer.poll
    for i, (key, value) in enumerate(msgs):
        try:
            produce(topic, value, key, on_delivery=acked, headers=headers(i))
        except BufferError:
            poll(0.01)
            produce(topic, value, key, on_delivery=acked, headers=headers(i))
        if i % 1000 == 999:
            poll(0)
    left = producer.flush(60)
    seconds = clock.stop()
    if left or failures:
        raise KafkaException(f"confluent-kafka: {left} unsent, {len(failures)} failed: {failures[:3]}")
    return seconds


# ----------------------------------------------------------------------------- consume


async def consume_aiokafka(bootstrap: str, topic: str, partitions: int, n: int) -> tuple[float, float, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                max_poll_records=POLL_RECORDS, max_partition_fetch_bytes=1_048_576)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got, clock = 0, None
        while got < n:
            records = await consumer.getmany(timeout_ms=1000, max_records=POLL_RECORDS)
            if records and clock is None:
                clock = Clock().start()
            for msgs in records.values():
                pairs = [(m.key, m.value) for m in msgs]
                got += len(pairs)
        assert clock is not None
        return clock.stop()
    finally:
        await consumer.stop()


def consume_confluent(bootstrap: str, topic: str, partitions: int, n: int) -> tuple[float, float, float]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": kafka_e2e.unique("transport"),
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "max.partition.fetch.bytes": 1_048_576})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        got, clock = 0, None
        while got < n:
            msgs = consumer.consume(num_messages=POLL_RECORDS, timeout=CONSUME_TIMEOUT)
            if msgs and clock is None:
                clock = Clock().start()
            for m in msgs:
                if m.error() is not None:
                    raise KafkaException(m.error())
            pairs = [(m.key(), m.value()) for m in msgs]
            got += len(pairs)
        assert clock is not None
        return clock.stop()
    finally:
        consumer.close()


# ----------------------------------------------------------------------------- relay: the service's work in between


class Record:
    """What the service reads of a consumed message (aiokafka's ConsumerRecord has these attributes)."""

    __slots__ = ("topic", "partition", "offset", "key", "value")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = topic, partition, offset, key, value


def scoring(bootstrap: str, out_topic: str, model):  # noqa: ANN201 - a ScoringService, never started
    """A `ScoringService` whose decoder, engine and output builder do the relay's per-batch work."""
    from consumers.config import ServiceConfig
    from consumers.service import ScoringService
    from detector.config import DetectorConfig

    cfg = ServiceConfig(bootstrap_servers=bootstrap, input_topics=["unused"], scores_topic=out_topic,
                        alerts_topic=out_topic, dead_letter_topic=out_topic, group_id=kafka_e2e.unique("relay"),
                        checkpoints_enabled=False, detector=DetectorConfig(channels=1, model=model.model_id))
    return ScoringService(cfg, model)


async def work(service, messages: list) -> list:
    """The service's per-batch CPU work, as `ScoringService._prepare` does it: decode, score, build the outputs."""
    decoded = service.decoder.decode([(m.key, m.value) for m in messages])
    result = await service._score(decoded)
    return service._outputs(messages, decoded, result)


async def relay_aiokafka(bootstrap: str, topic: str, partitions: int, n: int, model) -> tuple[float, float, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from consumers.clients import make_producer

    out = await new_topic(bootstrap, partitions)
    service = scoring(bootstrap, out, model)
    cfg = service.config
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=cfg.group_id, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=cfg.max_batch,
                                max_partition_fetch_bytes=1_048_576)
    await consumer.start()
    service.delivery.producer = make_producer(cfg)
    await service.delivery.producer.start()
    try:
        await service.delivery.learn_limits()
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got, clock = 0, None
        while got < n:
            records = await consumer.getmany(timeout_ms=1000, max_records=cfg.max_batch)
            if not records:
                continue
            clock = clock or Clock().start()
            messages = [m for tp in sorted(records) for m in records[tp]]
            await service.delivery.deliver(await work(service, messages))
            await consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in records.items()})
            got += len(messages)
        assert clock is not None
        return clock.stop()
    finally:
        await consumer.stop()
        await service.delivery.producer.stop()


def relay_confluent(bootstrap: str, topic: str, partitions: int, n: int, model) -> tuple[float, float, float]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

    out = asyncio.run(new_topic(bootstrap, partitions))
    service = scoring(bootstrap, out, model)
    cfg = service.config
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": cfg.group_id, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "max.partition.fetch.bytes": 1_048_576})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": cfg.linger_ms, "batch.size": BATCH_BYTES, "compression.type": "none",
                         "queue.buffering.max.messages": 1_000_000, "partitioner": "murmur2_random"})
    failures: list[object] = []

    def acked(err, _msg) -> None:
        if err is not None:
            failures.append(err)

    async def loop() -> tuple[float, float, float]:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        got, clock = 0, None
        while got < n:
            msgs = consumer.consume(num_messages=cfg.max_batch, timeout=CONSUME_TIMEOUT)
            if not msgs:
                continue
            clock = clock or Clock().start()
            for m in msgs:
                if m.error() is not None:
                    raise KafkaException(m.error())
            messages = [Record(m.topic(), m.partition(), m.offset(), m.key(), m.value()) for m in msgs]
            for o in await work(service, messages):
                producer.produce(o.topic, o.value, o.key, partition=-1 if o.partition is None else o.partition,
                                 headers=o.headers, on_delivery=acked)
            if producer.flush(60) or failures:
                raise KafkaException(f"{len(failures)} outputs failed: {failures[:3]}")
            ends: dict[tuple[str, int], int] = {}
            for m in messages:
                ends[(m.topic, m.partition)] = m.offset + 1
            consumer.commit(offsets=[TopicPartition(t, p, off) for (t, p), off in ends.items()], asynchronous=False)
            got += len(messages)
        assert clock is not None
        return clock.stop()

    try:
        return asyncio.run(loop())
    finally:
        consumer.close()


# ----------------------------------------------------------------------------- runs


def has_confluent() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


def measure(bootstrap: str, args: argparse.Namespace) -> dict:
    msgs = messages(args.messages, args.sensors)
    n, parts = len(msgs), args.partitions
    producers = {
        "aiokafka, send per record": lambda t: asyncio.run(produce_aiokafka(bootstrap, t, msgs)),
        "aiokafka, record batches (the service's Delivery)": lambda t: asyncio.run(produce_service(bootstrap, t, msgs)),
    }
    consumers = {"aiokafka": lambda t: asyncio.run(consume_aiokafka(bootstrap, t, parts, n + 1))}
    model = kafka_e2e.prepare_run(args.model)
    relays = {"aiokafka": lambda t: asyncio.run(relay_aiokafka(bootstrap, t, parts, n + 1, model))}
    if has_confluent():
        producers["confluent-kafka, produce per record"] = lambda t: produce_confluent(bootstrap, t, msgs)
        consumers["confluent-kafka"] = lambda t: consume_confluent(bootstrap, t, parts, n + 1)
        relays["confluent-kafka"] = lambda t: relay_confluent(bootstrap, t, parts, n + 1, model)
    runs: dict[str, list[tuple[float, float, float]]] = {f"produce: {k}": [] for k in producers}
    runs.update({f"consume: {k}": [] for k in consumers})
    runs.update({f"relay: {k}": [] for k in relays})
    for r in range(args.rounds):
        order = list(producers) if r % 2 == 0 else list(reversed(producers))
        topics = []
        for name in order:
            topic = asyncio.run(new_topic(bootstrap, parts))
            runs[f"produce: {name}"].append(producers[name](topic))
            topics.append(topic)
            print(f"  round {r + 1}: produce {name}: {line(n, runs[f'produce: {name}'][-1])}", flush=True)
        for k, name in enumerate(consumers if r % 2 == 0 else list(reversed(consumers))):
            runs[f"consume: {name}"].append(consumers[name](topics[k % len(topics)]))  # n + 1 records (a warm-up)
            print(f"  round {r + 1}: consume {name}: {line(n, runs[f'consume: {name}'][-1])}", flush=True)
        for k, name in enumerate(relays if r % 2 == 0 else list(reversed(relays))):
            runs[f"relay: {name}"].append(relays[name](topics[k % len(topics)]))
            print(f"  round {r + 1}: relay {name}: {line(n, runs[f'relay: {name}'][-1])}", flush=True)
    rows = []
    for measure_name, timings in runs.items():
        rows.append({"measure": measure_name, "median_per_s": statistics.median(n / w for w, _, _ in timings),
                     "runs_per_s": [n / w for w, _, _ in timings],
                     "process_cpu_us": statistics.median(c / n * 1e6 for _, c, _ in timings),
                     "machine_cpu_us": statistics.median(b / n * 1e6 for _, _, b in timings),
                     "timings": timings})
    return {"messages": n, "partitions": parts, "sensors": args.sensors, "rounds": args.rounds,
            "message_bytes": sum(len(v) for _, v in msgs) / n, "rows": rows}


def line(n: int, timing: tuple[float, float, float]) -> str:
    wall, cpu, busy = timing
    return (f"{n / wall:,.0f} messages/s, {cpu / n * 1e6:.1f} µs CPU of this process and {busy / n * 1e6:.1f} µs "
            "of the machine per message")


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Kafka clients, one reading per message: aiokafka and confluent-kafka side by side",
        "",
        f"- Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs, shared with the broker; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}); Python {m['python']}, aiokafka "
        f"{m['aiokafka']}, confluent-kafka {m['confluent_kafka']} (librdkafka {m['librdkafka']}); Kafka "
        f"{m['kafka']} single node (KRaft) from scripts/kafka.sh on 127.0.0.1",
        f"- Date: {m['date']}",
        f"- Reproduce: `{res['command']}`",
        f"- {res['messages']:,} messages of {res['message_bytes']:.0f} bytes ({res['sensors']:,} sensors, keyed by "
        f"sensor id) on {res['partitions']} partitions per measurement; median of {res['rounds']} interleaved "
        "round(s), each run in brackets",
        "",
        "| measure | messages/s (median) | runs | client process CPU µs/message | machine CPU µs/message |",
        "|---|---:|---|---:|---:|",
    ]
    for row in res["rows"]:
        runs = ", ".join(f"{x / 1e3:,.1f} k" for x in row["runs_per_s"])
        lines.append(f"| {row['measure']} | **{row['median_per_s']:,.0f}** | {runs} | {row['process_cpu_us']:.1f} | "
                     f"{row['machine_cpu_us']:.1f} |")
    lines += ["", "Client process CPU: this process's CPU time (every thread, librdkafka's included) over the timed "
              "window, per message; machine CPU: every process's (the broker's with it, and whatever else runs), "
              "from /proc/stat. See the module docstring of benchmarks/transport.py for what each row times.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (20,000 messages, one round); temporary directory")
    p.add_argument("--messages", type=int, default=None, help="messages per measurement (default 300000; quick 20000)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; quick 1)")
    p.add_argument("--sensors", type=int, default=1000, help="sensors (message keys; default 1000)")
    p.add_argument("--partitions", type=int, default=4, help="partitions (default 4)")
    kafka_e2e.add_run_arguments(p, port=29392, timeout_help="unused")
    args = p.parse_args(argv)
    args.messages = args.messages or (20_000 if args.quick else 300_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="transport-")) if args.quick else kafka_e2e.RESULTS
    import aiokafka

    extra = {"aiokafka": aiokafka.__version__, "confluent_kafka": None, "librdkafka": None,
             "kafka": kafka_e2e.machine_info()["kafka"]}
    if has_confluent():
        import confluent_kafka

        extra.update(confluent_kafka=confluent_kafka.version(), librdkafka=confluent_kafka.libversion()[0])
    else:
        print("confluent-kafka is not installed (pip install -e '.[bench]'): measuring aiokafka only", flush=True)
    info = kafka_e2e.machine.machine_info(**extra)
    with kafka_e2e.broker_for(args) as bootstrap:
        res = measure(bootstrap, args)
    res = {"machine": info, "command": kafka_e2e.command_line("transport.py", argv), **res}
    kafka_e2e.write_results(args.out, "transport", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
