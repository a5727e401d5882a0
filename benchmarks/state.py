"""Durable state through a real local Kafka broker: exactly_once vs at_least_once throughput, and restore time.

Starts its own broker with scripts/kafka.sh on a port of its own (default 29292/29293; stopped with
--clean at the end), or uses `--bootstrap HOST:PORT` as is.

(a) Throughput by processing guarantee. N readings of S univariate sensors (one per message, keyed
    by sensor id) are produced once to an input topic of P partitions. Then the `ScoringService` of
    consumers/service.py reads all of them from offset 0, once per mode, each time as a fresh
    consumer group (so with its own changelog and transactional id): `at_least_once` without
    checkpoints (`checkpoints_enabled=false`: the cost of the changelog itself), `at_least_once`
    (default: outputs acked → changelog acked → offsets committed) and `exactly_once` (one
    transaction per batch). readings/s = N / (end of the last batch − first poll that returned
    records). The modes run interleaved for `--rounds` rounds, so the drift of a shared machine hits
    each alike; the table gives each mode's median and its ratio to `at_least_once`'s median.
(b) Restore. R sensor states (the model's real state records, `Engine.export_state`, one per sensor
    as in a compacted changelog) are written to a changelog topic of P partitions; a
    `ScoringService` joins a fresh group on an input topic of P partitions, is assigned all of them
    and restores them before scoring. Restore time = `hiddenstate_restore_duration_seconds` of that
    restore (read every changelog partition to its end, import the states into the engine). Done
    `--restore-rounds` times on the same changelog; reported as the median, and per 100k sensors.

    .venv/bin/python benchmarks/state.py            # default run (~10 min), writes benchmarks/results/state.{json,md}
    .venv/bin/python benchmarks/state.py --quick    # ~1 min smoke run, writes to a temporary directory
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.kafka_e2e import (  # noqa: E402
    add_run_arguments,
    RESULTS,
    broker_for,
    command_line,
    create_topics,
    fast_producer,
    machine_info,
    instrument,
    prepare_run,
    reading,
    unique,
    wait_for_commits,
    write_results,
)

MODES = ("at_least_once, no checkpoints", "at_least_once", "exactly_once")
BASELINE = "at_least_once"


# ----------------------------------------------------------------------------- (a) throughput


async def produce_stream(bootstrap: str, topic: str, n: int, sensors: int) -> dict[int, int]:
    """Readings 0..n-1 (sensor i % sensors, step i // sensors) into `topic`; returns the end offsets."""
    producer = fast_producer(bootstrap)
    await producer.start()
    ends: dict[int, int] = {}
    try:
        futures = []
        for i in range(n):
            key, value = reading(i % sensors, i // sensors)
            futures.append(await producer.send(topic, value, key=key))
            if len(futures) >= 20_000 or i == n - 1:
                for meta in await asyncio.gather(*futures):
                    ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
                futures = []
    finally:
        await producer.stop()
    return ends


def mode_config(bootstrap: str, topics: dict[str, str], mode: str, max_batch: int, args: argparse.Namespace):
    from consumers.config import ServiceConfig
    from detector.config import DetectorConfig

    return ServiceConfig(
        bootstrap_servers=bootstrap, input_topics=[topics["in"]], scores_topic=topics["scores"],
        alerts_topic=topics["alerts"], dead_letter_topic=topics["dlq"], group_id=unique("bench-state"),
        metrics_address="127.0.0.1", metrics_port=0, detector=DetectorConfig(channels=1, model=args.model),
        checkpoints_enabled=mode != "at_least_once, no checkpoints",
        processing_guarantee="exactly_once" if mode == "exactly_once" else "at_least_once", max_batch=max_batch,
    )


async def one_pass(bootstrap: str, topics: dict[str, str], ends: dict[int, int], mode: str, max_batch: int,
                   args: argparse.Namespace, model) -> dict:
    """The service reads the whole input topic once in `mode`; returns its readings/s and counts."""

    from consumers.service import ScoringService

    cfg = mode_config(bootstrap, topics, mode, max_batch, args)
    service = ScoringService(cfg, model)
    marks = instrument(service)  # a batch ends once its offsets (or transaction) are committed
    await service.start()
    task = asyncio.create_task(service.run())
    try:
        await wait_for_commits(bootstrap, cfg.group_id, topics["in"], ends, task, args.timeout, what=mode)
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 60)
        await service.close()
    n = sum(ends.values())
    seconds = marks["last_commit"] - marks["first_batch"]
    ck = service.checkpoint_stats
    return {
        "mode": mode,
        "max_batch": max_batch,
        "readings": n,
        "seconds": seconds,
        "readings_per_s": n / seconds,
        "batches": service.stats.batches,
        "mean_batch": service.stats.consumed / max(service.stats.batches, 1),
        "scored": service.stats.scored,
        "commit_failures": service.stats.commit_failures,
        "checkpoint_records": ck.records,
        "checkpoint_mib": ck.bytes / 2**20,
    }


async def warm_up_transactions(bootstrap: str) -> None:
    """One transaction, untimed: a fresh broker creates its transaction log on first use, which would otherwise
    land in the first timed exactly_once run."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("bench-warm-up"))
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(unique("bench-warm-up"), b"warm-up")
    finally:
        await producer.stop()


async def throughput(bootstrap: str, args: argparse.Namespace, model) -> dict:
    topics = await create_topics(bootstrap, args.partitions)
    await warm_up_transactions(bootstrap)
    started = time.perf_counter()
    ends = await produce_stream(bootstrap, topics["in"], args.readings, args.sensors)
    print(f"  pre-produced {args.readings:,} readings in {time.perf_counter() - started:.1f} s over "
          f"{len(ends)} partitions", flush=True)
    runs: list[dict] = []
    for r in range(args.rounds):
        for max_batch in args.max_batch:
            for mode in MODES:
                res = await one_pass(bootstrap, topics, ends, mode, max_batch, args, model)
                res["round"] = r + 1
                runs.append(res)
                print(f"  round {r + 1} max_batch {max_batch:5d} {mode:30s} {res['readings_per_s']:8,.0f} "
                      f"readings/s ({res['seconds']:.1f} s, mean batch {res['mean_batch']:.0f})", flush=True)
    table = []
    for max_batch in args.max_batch:
        medians = {m: statistics.median(x["readings_per_s"] for x in runs
                                        if x["mode"] == m and x["max_batch"] == max_batch) for m in MODES}
        for m in MODES:
            table.append({"max_batch": max_batch, "mode": m, "median_readings_per_s": medians[m],
                          "ratio_to_at_least_once": medians[m] / medians[BASELINE]})
    return {"readings": args.readings, "sensors": args.sensors, "partitions": args.partitions,
            "rounds": args.rounds, "runs": runs, "table": table}


# ----------------------------------------------------------------------------- (b) restore


def sensor_states(model, n: int) -> tuple[list[str], list[bytes]]:
    """n sensors' real state records after a few readings each (the engine, no Kafka)."""
    from detector.config import DetectorConfig
    from detector.engine import Engine

    engine = Engine.for_model(model, DetectorConfig(channels=1), 1)
    ids = [f"dev-{i:07d}" for i in range(n)]
    rng = np.random.default_rng(0)
    for step in range(3):
        engine.step(ids, np.full(n, 1_700_000_000.0 + 10 * step), 10 + rng.standard_normal((n, 1)))
    return ids, engine.export_state(ids)


async def write_changelog(bootstrap: str, topic: str, partitions: int, ids: list[str], records: list[bytes]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    await asyncio.sleep(0.5)
    producer = fast_producer(bootstrap)
    await producer.start()
    try:
        futures = []
        for i, (sid, rec) in enumerate(zip(ids, records)):
            futures.append(await producer.send(topic, rec, key=sid.encode(), partition=i % partitions))
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def one_restore(bootstrap: str, changelog: str, args: argparse.Namespace, model, expected: int) -> dict:
    from consumers.config import ServiceConfig
    from consumers.service import ScoringService
    from detector.config import DetectorConfig

    topics = await create_topics(bootstrap, args.partitions)
    cfg = ServiceConfig(
        bootstrap_servers=bootstrap, input_topics=[topics["in"]], scores_topic=topics["scores"],
        alerts_topic=topics["alerts"], dead_letter_topic=topics["dlq"], group_id=unique("bench-restore"),
        changelog_topic=changelog, metrics_address="127.0.0.1", metrics_port=0,
        detector=DetectorConfig(channels=1, model=args.model), restore_timeout_seconds=args.timeout,
    )
    service = ScoringService(cfg, model)
    await service.start()
    task = asyncio.create_task(service.run())
    try:
        deadline = time.perf_counter() + args.timeout
        while service.checkpoint_stats.restores == 0:
            if task.done():
                task.result()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no restore within {args.timeout} s")
            await asyncio.sleep(0.05)
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 60)
        await service.close()
    stats = service.checkpoint_stats
    if stats.restored != expected or stats.refused or stats.model_changed:
        raise RuntimeError(f"restore: {stats.restored} restored of {expected}, {stats.refused} refused, "
                           f"{stats.model_changed} model_changed")
    return {"seconds": service.checkpoint_metrics.restore_duration._sum, "restored": stats.restored,
            "sensors_in_pool": len(service.engine.pool)}


async def restore(bootstrap: str, args: argparse.Namespace, model) -> dict:
    n = args.restore_sensors
    started = time.perf_counter()
    ids, records = sensor_states(model, n)
    nbytes = sum(len(r) for r in records)
    changelog = unique("bench-changelog")
    await write_changelog(bootstrap, changelog, args.partitions, ids, records)
    print(f"  wrote {n:,} sensor states ({nbytes / 2**20:.1f} MiB) to {changelog} in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    runs = []
    for r in range(args.restore_rounds):
        res = await one_restore(bootstrap, changelog, args, model, n)
        runs.append(res)
        print(f"  restore {r + 1}: {res['restored']:,} sensors in {res['seconds']:.2f} s", flush=True)
    median = statistics.median(x["seconds"] for x in runs)
    return {"sensors": n, "partitions": args.partitions, "mib": nbytes / 2**20, "bytes_per_record": nbytes / n,
            "runs": runs, "median_seconds": median, "seconds_per_100k": median / n * 1e5}


# ----------------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    m, a, b = res["machine"], res["throughput"], res["restore"]
    restores = ", ".join(f"{x['seconds']:.2f}" for x in b["runs"])
    lines = [
        "# Durable state: processing guarantees and restore",
        "",
        f"- Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs, shared by the broker and the service; load "
        f"average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}); Python {m['python']}, "
        f"torch {m['torch']} (1 thread), aiokafka {m['aiokafka']}; Kafka {m['kafka']} single node (KRaft) from "
        "scripts/kafka.sh on 127.0.0.1",
        f"- Date: {m['date']}",
        f"- Model: {res['model']}",
        f"- Reproduce: `{res['command']}`",
        "",
        f"## (a) Throughput by processing guarantee ({a['readings']:,} readings, {a['sensors']:,} sensors, "
        f"{a['partitions']} partitions, median of {a['rounds']} interleaved rounds)",
        "",
        "| max_batch | mode | readings/s (median) | × at_least_once | runs (readings/s) | changelog per run |",
        "|---:|---|---:|---:|---|---:|",
    ]
    for row in a["table"]:
        runs = [x for x in a["runs"] if x["mode"] == row["mode"] and x["max_batch"] == row["max_batch"]]
        per_run = ", ".join(f"{x['readings_per_s']:,.0f}" for x in runs)
        ck = runs[-1]
        changelog = (f"{ck['checkpoint_records']:,} records, {ck['checkpoint_mib']:.1f} MiB"
                     if ck["checkpoint_records"] else "—")
        lines.append(f"| {row['max_batch']} | {row['mode']} | **{row['median_readings_per_s']:,.0f}** | "
                     f"{row['ratio_to_at_least_once']:.2f} | {per_run} | {changelog} |")
    lines += [
        "",
        f"## (b) Restore ({b['sensors']:,} sensors, {b['mib']:.1f} MiB of state records, "
        f"{b['bytes_per_record']:.0f} B each, {b['partitions']} partitions)",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| restore time (median of {len(b['runs'])}: {restores} s) | **{b['median_seconds']:.2f} s** |",
        f"| per 100k sensors | **{b['seconds_per_100k']:.2f} s** |",
        "",
        "- (a): the same pre-produced topic read from offset 0 by a fresh group per run; time = first poll with "
        "records → end of the batch that committed the last offsets. Every reading scored and produced (acks=all); "
        "with checkpoints the changed sensors' states go to the group's changelog at each batch; exactly_once puts "
        "outputs, changelog and offsets in one transaction per batch.",
        "- (b): time from the start of reading the changelog partitions to the states in the engine, as "
        "`hiddenstate_restore_duration_seconds` reports it; one record per sensor, as a compacted changelog holds "
        "(records not yet compacted away are read too and add time in proportion).",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~1 min smoke run; writes to a temporary directory")
    p.add_argument("--readings", type=int, default=None, help="readings for (a) (default 100000; quick 8000)")
    p.add_argument("--sensors", type=int, default=1000, help="sensors for (a) (default 1000)")
    p.add_argument("--partitions", type=int, default=4, help="input and changelog partitions (default 4)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the modes (default 3; quick 1)")
    p.add_argument("--max-batch", default="5000,500",
                   help="service max_batch values, comma-separated (default 5000,500)")
    p.add_argument("--restore-sensors", type=int, default=None,
                   help="sensor states for (b) (default 100000; quick 20000)")
    p.add_argument("--restore-rounds", type=int, default=None, help="restores measured (default 3; quick 1)")
    add_run_arguments(p, port=29292, timeout_help="give up on one run after this many seconds")
    args = p.parse_args(argv)
    args.max_batch = [int(x) for x in args.max_batch.split(",")]
    if args.readings is None:
        args.readings = 8_000 if args.quick else 100_000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.restore_sensors is None:
        args.restore_sensors = 20_000 if args.quick else 100_000
    if args.restore_rounds is None:
        args.restore_rounds = 1 if args.quick else 3
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="state-")) if args.quick else RESULTS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = prepare_run(args.model)
    info = machine_info()
    with broker_for(args) as bootstrap:
        print("(a) throughput by processing guarantee", flush=True)
        a = asyncio.run(throughput(bootstrap, args, model))
        print(f"(b) restore of {args.restore_sensors:,} sensors", flush=True)
        b = asyncio.run(restore(bootstrap, args, model))
    res = {
        "machine": info,
        "model": model.model_id,
        "command": command_line("state.py", argv),
        "throughput": a,
        "restore": b,
    }
    write_results(args.out, "state", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
