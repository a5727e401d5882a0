"""End to end through a real local Kafka broker: readings/s of `hiddenstate serve`, and produce→score latency.

Starts its own broker with scripts/kafka.sh on a port of its own (default 29192/29193; stopped with
--clean at the end), or uses `--bootstrap HOST:PORT` as is. Two phases, each on fresh topics and a
fresh consumer group:

(a) Throughput: N readings of S univariate sensors (one reading per message, keyed by sensor id,
    in time order per sensor) are produced beforehand to an input topic of P partitions. Then the
    `ScoringService` of consumers/service.py runs in this process from offset 0 until the group's
    committed offsets reach the end of every partition. readings/s = N / (time of the last commit −
    time of the first poll that returned records); the figure including connect and group join is
    reported too. Every reading is scored, produced to the scores topic, acknowledged (acks=all)
    and committed, exactly as in production. `--batch-per-message N`: (a) sends N consecutive
    readings of one sensor per message (the service's batched format, `{"sensor_id", "readings"}`).
(b) Latency: with the service running and its partitions assigned, a separate load process offers
    R readings/s for D seconds (paced against the wall clock) and reads the scores topic. Each
    reading's send time (also in the message as `sent_at`) is matched to its score through the
    score's `source_partition`/`source_offset` headers; latency = time the score was received −
    time the reading was sent. The first `warm-up` seconds are left out; p50/p90/p99/max in ms.

    .venv/bin/python benchmarks/kafka_e2e.py            # default run (< ~3 min), writes benchmarks/results/
    .venv/bin/python benchmarks/kafka_e2e.py --quick    # ~30 s smoke run, writes to a temporary directory
    .venv/bin/python benchmarks/kafka_e2e.py --batch-per-message 100 --readings 1000000 --max-batch 100
    .venv/bin/python benchmarks/kafka_e2e.py --batch-per-message 100 --columnar --score-records per_message \
        --readings 2000000 --max-batch 1000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import multiprocessing as mp  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import orjson  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import machine  # noqa: E402
SCRIPT = ROOT / "scripts" / "kafka.sh"
RESULTS = ROOT / "benchmarks" / "results"
T0 = 1_700_000_000.0


# ----------------------------------------------------------------------------- broker


class Broker:
    """scripts/kafka.sh on our own ports; stopped (with --clean) only if this run started it."""

    def __init__(self, port: int, controller_port: int) -> None:
        self.env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller_port)}
        self.ours = False
        self.bootstrap = f"127.0.0.1:{port}"

    def start(self) -> str:
        proc = subprocess.run([str(SCRIPT), "start"], env=self.env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"scripts/kafka.sh start failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        self.bootstrap = proc.stdout.strip().splitlines()[-1]
        self.ours = "already" not in proc.stderr and "not started by this script" not in proc.stderr
        return self.bootstrap

    def stop(self, clean: bool = True) -> None:
        """Stop the broker if this run started it; `clean`: delete its data too (else a `start` brings it back)."""
        if self.ours:
            subprocess.run([str(SCRIPT), "stop", *(["--clean"] if clean else [])], env=self.env, capture_output=True,
                           text=True, timeout=120)


@contextlib.contextmanager
def broker_for(args: argparse.Namespace) -> Iterator[str]:
    """The bootstrap to use: `--bootstrap` as given, else a broker started here (and stopped after)."""
    if args.bootstrap:
        yield args.bootstrap
        return
    broker = Broker(args.port, args.controller_port)
    print(f"starting the broker on 127.0.0.1:{args.port} (scripts/kafka.sh)", flush=True)
    try:
        yield broker.start()
    finally:
        broker.stop()


def prepare_run(model_name: str):  # noqa: ANN201 - a detector Model
    """One torch thread, the service's garbage-collector setting, quiet client logs, and the model to serve
    (an untrained GRU if it cannot load): the service runs in this process, set up as `hiddenstate serve` is."""
    import torch

    from consumers.process import tune_gc
    from detector.model.store import load_model, untrained

    torch.set_num_threads(1)
    tune_gc()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # transient on a fresh broker (e.g. the group coordinator still loading); a real failure raises
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return load_model(model_name)
    except Exception:  # noqa: BLE001 - speed does not depend on the weights
        return untrained(32, 1)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_topics(bootstrap: str, partitions: int) -> dict[str, str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topics = {k: unique(f"bench-{k}") for k in ("in", "scores", "alerts", "dlq")}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topics["in"], partitions, 1), NewTopic(topics["scores"], partitions, 1),
                                   NewTopic(topics["alerts"], 1, 1), NewTopic(topics["dlq"], 1, 1)])
    finally:
        await admin.close()
    await asyncio.sleep(0.5)  # let the metadata settle
    return topics


def reading(sensor: int, step: int, sent_at: float | None = None) -> tuple[bytes, bytes]:
    """Sensor `s{sensor}`'s `step`-th reading: a noisy per-sensor sine, ts every 10 s."""
    sid = f"s{sensor:05d}"
    value = 10.0 + 2.0 * np.sin(step / 8.0 + sensor * 0.37) + 0.05 * ((step * 7919 + sensor * 104729) % 17 - 8)
    doc: dict[str, object] = {"sensor_id": sid, "ts": T0 + 10.0 * step, "value": float(value)}
    if sent_at is not None:
        doc["sent_at"] = sent_at
    return sid.encode(), orjson.dumps(doc)


def batched_messages(n: int, sensors: int, per_message: int, columnar: bool = False):
    """(key, value, readings) of `n` readings in messages of `per_message` consecutive readings of one sensor
    (`columnar`: as `{"sensor_id", "ts": [...], "value": [...]}`)."""
    steps = -(-n // sensors)
    for first in range(0, steps, per_message):
        for sensor in range(sensors):
            sid = f"s{sensor:05d}"
            block = [orjson.loads(reading(sensor, step)[1]) for step in range(first, min(first + per_message, steps))
                     if step * sensors + sensor < n]
            if block and columnar:
                doc = {"sensor_id": sid, "ts": [d["ts"] for d in block], "value": [d["value"] for d in block]}
                yield sid.encode(), orjson.dumps(doc), len(block)
            elif block:
                readings = [{"ts": d["ts"], "value": d["value"]} for d in block]
                yield sid.encode(), orjson.dumps({"sensor_id": sid, "readings": readings}), len(readings)


def fast_producer(bootstrap: str):
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=262_144)


# ----------------------------------------------------------------------------- service


def service_config(bootstrap: str, topics: dict[str, str], args: argparse.Namespace, **overrides: object):
    """The service's settings for a run on `topics`: the defaults, `args`' batching options, then `overrides`
    (`learning` is the detector's)."""
    from consumers.config import ServiceConfig
    from detector.config import DetectorConfig

    learning = overrides.pop("learning", "off")
    kw: dict[str, object] = {"max_batch": args.max_batch} if args.max_batch else {}
    kw["score_records"] = args.score_records
    if args.batch_per_message > 1:  # ~45 bytes a reading in the envelope
        kw.update(max_message_bytes=max(65_536, 64 * args.batch_per_message), max_readings_per_message=max(
            10_000, args.batch_per_message))
    return ServiceConfig(
        bootstrap_servers=bootstrap, input_topics=[topics["in"]], scores_topic=topics["scores"],
        alerts_topic=topics["alerts"], dead_letter_topic=topics["dlq"], group_id=unique("bench-group"),
        metrics_address="127.0.0.1", metrics_port=0,
        detector=DetectorConfig(channels=1, model=args.model, learning=learning),
        **{**kw, **overrides},
    )


def instrument(service) -> dict[str, float | None]:
    """Record the time of the first batch and of the latest batch's end: its offsets (or transaction) committed
    (wrapping the instance's methods)."""
    marks: dict[str, float | None] = {"first_batch": None, "last_commit": None}
    process, deliver = service.process, service._deliver

    async def timed_process(records, polled_at=None):
        if marks["first_batch"] is None:
            marks["first_batch"] = time.perf_counter() if polled_at is None else polled_at
        await process(records, polled_at)

    async def timed_deliver(batch):
        unfinished = await deliver(batch)
        marks["last_commit"] = time.perf_counter()
        return unfinished

    service.process, service._deliver = timed_process, timed_deliver
    return marks


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    from tests.kafka_helpers import committed_offsets  # the tests' helper; imported late, as aiokafka is

    return await committed_offsets(bootstrap, group, topic)


async def wait_for_commits(bootstrap: str, group: str, topic: str, ends: dict[int, int], task: asyncio.Task,
                           timeout: float, what: str = "") -> None:
    """Until `group` has committed `ends` on `topic`; raises if the service's `task` ends first or time runs out."""
    from aiokafka.errors import KafkaError

    prefix = f"{what}: " if what else ""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            got = await committed(bootstrap, group, topic)
        except KafkaError as exc:  # the group coordinator may still be loading
            if not exc.retriable:
                raise
            got = {}
        if got and all(got.get(p, 0) >= e for p, e in ends.items()):
            return
        if task.done():
            task.result()
            raise RuntimeError(f"{prefix}the service stopped before committing everything")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{prefix}committed {got}, wanted {ends} after {timeout} s")
        await asyncio.sleep(0.2)


def command_line(script: str, argv: list[str] | None) -> str:
    """How to rerun this benchmark: `argv`, or this process's own arguments."""
    shown = sys.argv[1:] if argv is None else argv
    return " ".join([".venv/bin/python", f"benchmarks/{script}", *map(shlex.quote, shown)])


def write_results(out: Path, name: str, res: dict, text: str) -> None:
    """Print the markdown report and write it and the JSON as `out/<name>.{md,json}`."""
    print()
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    print(f"wrote {out / f'{name}.json'} and {out / f'{name}.md'}")


# ----------------------------------------------------------------------------- (a) throughput


async def throughput(bootstrap: str, args: argparse.Namespace, model) -> dict:
    from consumers.service import ScoringService

    topics = await create_topics(bootstrap, args.partitions)
    n, sensors = args.readings, args.sensors
    producer = fast_producer(bootstrap)
    await producer.start()
    started = time.perf_counter()
    futures = []
    ends: dict[int, int] = {}
    if args.batch_per_message > 1:
        messages = batched_messages(n, sensors, args.batch_per_message, args.columnar)
    else:
        messages = (reading(i % sensors, i // sensors) + (1,) for i in range(n))
    n_messages = 0
    try:
        for key, value, _ in messages:
            n_messages += 1
            futures.append(await producer.send(topics["in"], value, key=key))
            if len(futures) >= 20_000:
                for meta in await asyncio.gather(*futures):
                    ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
                futures = []
        for meta in await asyncio.gather(*futures):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    finally:
        await producer.stop()
    produce_seconds = time.perf_counter() - started
    print(f"  pre-produced {n:,} readings in {produce_seconds:.1f} s ({n / produce_seconds:,.0f}/s) "
          f"over {len(ends)} partitions", flush=True)

    cfg = service_config(bootstrap, topics, args)
    service = ScoringService(cfg, model)
    marks = instrument(service)
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    await service.start()
    task = asyncio.create_task(service.run())
    try:
        await wait_for_commits(bootstrap, cfg.group_id, topics["in"], ends, task, args.timeout)
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 60)
        await service.close()
    cpu_seconds = time.process_time() - cpu_start
    first, last = marks["first_batch"], marks["last_commit"]
    assert first is not None and last is not None
    stats = service.stats
    return {
        "readings": n,
        "messages": n_messages,
        "readings_per_message": n / n_messages,
        "sensors": sensors,
        "partitions": args.partitions,
        "max_batch": cfg.max_batch,
        "columnar": args.columnar,
        "score_records": cfg.score_records,
        "score_messages": stats.score_messages,
        "produce_seconds": produce_seconds,
        "producer_readings_per_s": n / produce_seconds,
        "seconds": last - first,
        "readings_per_s": n / (last - first),
        "seconds_with_join": last - t_start,
        "readings_per_s_with_join": n / (last - t_start),
        "join_seconds": first - t_start,
        "service_cpu_share": cpu_seconds / (time.perf_counter() - t_start),
        "scored": stats.scored,
        "dead_lettered": sum(stats.dead_lettered.values()),
        "batches": stats.batches,
        "mean_batch": stats.messages / max(stats.batches, 1),
    }


# ----------------------------------------------------------------------------- (b) latency


async def _offer_and_measure(bootstrap: str, topics: dict[str, str], rate: float, duration: float,
                             sensors: int, partitions: int, drain: float) -> dict:
    """The load process: offer `rate` readings/s for `duration` s, read the scores, match them to sends."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=5, max_poll_records=5000)
    await consumer.start()
    tps = [TopicPartition(topics["scores"], p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    producer = fast_producer(bootstrap)
    await producer.start()

    sent_at: dict[tuple[int, int], float] = {}
    received: dict[tuple[int, int], float] = {}
    done_producing = asyncio.Event()
    total = int(rate * duration)

    async def read_scores() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for records in batch.values():
                for r in records:
                    h = dict(r.headers or ())
                    received[(int(h["source_partition"]), int(h["source_offset"]))] = now
            if done_producing.is_set() and len(received) >= total:
                return

    async def offer() -> None:
        pending: list[tuple[float, asyncio.Future]] = []

        async def settle() -> None:
            for t, meta in zip([p[0] for p in pending], await asyncio.gather(*[p[1] for p in pending])):
                sent_at[(meta.partition, meta.offset)] = t
            pending.clear()

        start = time.time()
        i = 0
        while i < total:
            due = min(total, int((time.time() - start) * rate) + 1)
            while i < due:
                now = time.time()
                key, value = reading(i % sensors, i // sensors, sent_at=now)
                pending.append((now, await producer.send(topics["in"], value, key=key)))
                i += 1
            if len(pending) >= 2000:
                await settle()
            await asyncio.sleep(0.001)
        await settle()
        done_producing.set()

    reader = asyncio.create_task(read_scores())
    offer_started = time.time()
    await offer()
    offered_seconds = time.time() - offer_started
    try:
        await asyncio.wait_for(reader, drain)
    except asyncio.TimeoutError:
        pass
    await producer.stop()
    await consumer.stop()

    warm = offer_started + min(2.0, duration / 5)
    lat = [(received[k] - t) * 1000.0 for k, t in sent_at.items() if t >= warm and k in received]
    arr = np.asarray(lat)
    return {
        "offered": total,
        "offered_seconds": offered_seconds,
        "achieved_rate": total / offered_seconds,
        "scored": len(received),
        "missing": total - len(set(sent_at) & set(received)),
        "measured": int(arr.size),
        "warmup_seconds": min(2.0, duration / 5),
        "p50_ms": float(np.percentile(arr, 50)) if arr.size else None,
        "p90_ms": float(np.percentile(arr, 90)) if arr.size else None,
        "p99_ms": float(np.percentile(arr, 99)) if arr.size else None,
        "max_ms": float(arr.max()) if arr.size else None,
        "mean_ms": float(arr.mean()) if arr.size else None,
    }


def _load_process(conn, *a) -> None:
    try:
        conn.send(asyncio.run(_offer_and_measure(*a)))
    except BaseException as exc:  # noqa: BLE001 - report to the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


async def latency(bootstrap: str, args: argparse.Namespace, model, **overrides: object) -> dict:
    """(b) at `args.rate` for `args.duration` s; `overrides`: service settings on top of `service_config`'s."""
    from consumers.service import ScoringService

    topics = await create_topics(bootstrap, args.partitions)
    cfg = service_config(bootstrap, topics, args, **overrides)
    service = ScoringService(cfg, model)
    await service.start()
    task = asyncio.create_task(service.run())
    try:
        deadline = time.perf_counter() + 60
        while len(service.assigned_partitions or ()) < args.partitions:
            if time.perf_counter() > deadline:
                raise TimeoutError("the service was not assigned its partitions within 60 s")
            await asyncio.sleep(0.1)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_load_process, args=(child, bootstrap, topics, args.rate, args.duration,
                                                       args.sensors, args.partitions, 30.0))
        proc.start()
        child.close()
        result = await asyncio.to_thread(parent.recv)
        await asyncio.to_thread(proc.join, 30)
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 60)
        await service.close()
    if "error" in result:
        raise RuntimeError(f"load process: {result['error']}")
    result.update(rate=args.rate, duration=args.duration, sensors=args.sensors, partitions=args.partitions,
                  max_batch=cfg.max_batch, linger_ms=cfg.linger_ms, poll_timeout_ms=cfg.poll_timeout_ms,
                  max_batch_delay_ms=cfg.max_batch_delay_ms, pipelining=cfg.pipelining,
                  learning=cfg.detector.learning,
                  mean_batch=service.stats.messages / max(service.stats.batches, 1))
    return result


# ----------------------------------------------------------------------------- report


def machine_info() -> dict:
    import aiokafka
    import torch

    return machine.machine_info(torch=torch.__version__, aiokafka=aiokafka.__version__,
                                kafka=os.environ.get("KAFKA_VERSION", "4.4.0"))


def markdown(res: dict) -> str:
    m, a, b = res["machine"], res["throughput"], res["latency"]
    lines = [
        "# Kafka end to end",
        "",
        f"- Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs, shared by the broker, the service and the load "
        f"generator; load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}); "
        f"Python {m['python']}, torch {m['torch']} (1 thread), aiokafka {m['aiokafka']}; Kafka {m['kafka']} single "
        "node (KRaft) from scripts/kafka.sh on 127.0.0.1",
        f"- Date: {m['date']}",
        f"- Model: {res['model']}",
        f"- Reproduce: `{res['command']}`",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| (a) throughput, first poll → last commit | **{a['readings_per_s']:,.0f} readings/s** "
        f"({a['readings']:,} readings in {a['seconds']:.1f} s) |",
        f"| (a) including connect + group join ({a['join_seconds']:.1f} s) | {a['readings_per_s_with_join']:,.0f} "
        "readings/s |",
        f"| (a) service process CPU (all its threads) ÷ wall time | {a.get('service_cpu_share', float('nan')):.0%} |",
        f"| (a) pre-produce rate (one aiokafka producer, for reference) | {a['producer_readings_per_s']:,.0f} "
        "readings/s |",
        f"| (b) offered rate | {b['rate']:,.0f} readings/s for {b['duration']:g} s (achieved "
        f"{b['achieved_rate']:,.0f}/s) |",
        f"| (b) produce → score latency p50 | **{b['p50_ms']:.1f} ms** |",
        f"| (b) p90 / p99 / max | {b['p90_ms']:.1f} / **{b['p99_ms']:.1f}** / {b['max_ms']:.1f} ms |",
        "",
        f"- (a): {a['readings']:,} readings in {a['messages']:,} messages ({a['readings_per_message']:g} per message"
        f"{', as columns' if a.get('columnar') else ''}) "
        f"of {a['sensors']:,} univariate sensors, keyed by sensor id, "
        f"on {a['partitions']} partitions, produced beforehand; the `ScoringService` (max_batch {a['max_batch']}, "
        f"mean batch {a['mean_batch']:.0f} messages, {a['batches']} batches) consumed them from offset 0, scored "
        f"every one ({a['scored']:,} scores in {a.get('score_messages', a['scored']):,} score records, "
        f"`score_records = \"{a.get('score_records', 'per_reading')}\"`; {a['dead_lettered']} dead letters), "
        "produced the scores (acks=all) "
        "and committed. Time = first poll with records → the commit that reached the end offsets.",
        f"- (b): a separate process offered the readings ({b['sensors']:,} sensors, {b['partitions']} partitions) "
        "paced against the wall clock, and read the scores topic; latency = score received − reading sent, matched "
        f"by the scores' source_partition/source_offset headers. {b['measured']:,} readings measured after "
        f"{b['warmup_seconds']:g} s warm-up; {b['missing']} unmatched. Service defaults: linger_ms "
        f"{b['linger_ms']}, poll_timeout_ms {b['poll_timeout_ms']}, max_batch {b['max_batch']}.",
    ]
    if b["missing"] or b["rate"] > a["readings_per_s"]:
        lines.append(
            f"- **Warning**: the offered rate is above what (a) sustained, or {b['missing']} readings had no score "
            "within 30 s after the last send: the service fell behind, so the latency grew with the run and the "
            "percentiles (of matched readings only) are a lower bound. Offer less than (a)'s rate."
        )
    lines.append("")
    return "\n".join(lines)


def add_run_arguments(p: argparse.ArgumentParser, port: int, timeout_help: str) -> None:
    """The options every broker benchmark has: model, its own broker's ports (or a running one), timeout, output."""
    p.add_argument("--model", default="gru-default", help="model (default gru-default)")
    p.add_argument("--port", type=int, default=port, help=f"broker port for scripts/kafka.sh (default {port})")
    p.add_argument("--controller-port", type=int, default=port + 1, help=f"controller port (default {port + 1})")
    p.add_argument("--bootstrap", help="use this running broker instead of starting one")
    p.add_argument("--timeout", type=float, default=300, help=timeout_help)
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results; quick: temp)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~30 s smoke run; writes to a temporary directory")
    p.add_argument("--readings", type=int, default=None, help="readings for (a) (default 200000; quick 30000)")
    p.add_argument("--sensors", type=int, default=1000, help="sensors (default 1000)")
    p.add_argument("--partitions", type=int, default=4, help="input (and scores) partitions (default 4)")
    p.add_argument("--rate", type=float, default=None, help="offered readings/s for (b) (default 2000; quick 1000)")
    p.add_argument("--duration", type=float, default=None, help="seconds of offered load for (b) (default 20; quick 5)")
    p.add_argument("--max-batch", type=int, default=None, help="service max_batch (default: the service's, 5000)")
    p.add_argument("--batch-per-message", type=int, default=1, metavar="N",
                   help="(a): N readings of one sensor per message (default 1)")
    p.add_argument("--columnar", action="store_true",
                   help="with --batch-per-message: messages as columns ({sensor_id, ts: [...], value: [...]})")
    p.add_argument("--score-records", choices=["per_reading", "per_message"], default="per_reading",
                   help="the service's score_records (default per_reading)")
    add_run_arguments(p, port=29192, timeout_help="give up on (a) after this many seconds")
    args = p.parse_args(argv)
    if args.readings is None:
        args.readings = 30_000 if args.quick else 200_000
    if args.rate is None:
        args.rate = 1_000.0 if args.quick else 2_000.0
    if args.duration is None:
        args.duration = 5.0 if args.quick else 20.0
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="kafka_e2e-")) if args.quick else RESULTS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = prepare_run(args.model)
    info = machine_info()
    with broker_for(args) as bootstrap:
        print("(a) throughput", flush=True)
        a = asyncio.run(throughput(bootstrap, args, model))
        print(f"  {a['readings_per_s']:,.0f} readings/s ({a['readings']:,} in {a['seconds']:.1f} s; "
              f"{a['readings_per_s_with_join']:,.0f}/s with {a['join_seconds']:.1f} s connect+join)", flush=True)
        print(f"(b) latency at {args.rate:,.0f} readings/s for {args.duration:g} s", flush=True)
        b = asyncio.run(latency(bootstrap, args, model))
        print(f"  p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms (achieved {b['achieved_rate']:,.0f}/s, "
              f"{b['missing']} unmatched)", flush=True)
        if b["missing"] or args.rate > a["readings_per_s"]:
            print("  warning: offered more than the service sustains; latency is a backlog, see the notes", flush=True)
    res = {
        "machine": info,
        "model": model.model_id,
        "command": command_line("kafka_e2e.py", argv),
        "throughput": a,
        "latency": b,
    }
    write_results(args.out, "kafka_e2e", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
