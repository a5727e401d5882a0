"""Faults against a real local Kafka broker: kill -9, a broker restart, an instance joining and leaving; what
reaches the output topics, at_least_once and exactly_once side by side.

Starts its own broker with scripts/kafka.sh on ports of its own (default 29392/29393; its data directory is
per port, so it never touches another broker's), stops and starts it mid-run, and stops it with --clean at the
end; so it never uses a running broker. For each processing guarantee, on fresh topics (an input topic of P
partitions) and a fresh consumer group, with the same seeded fault schedule:

- a feeder produces N readings of M univariate sensors (one message each, keyed by sensor id, encoded as
  `hiddenstate produce` encodes them; one step of the whole fleet at a time, each acknowledged before the next)
  at a steady rate over `--duration` seconds. A seeded tenth of the sensors get a spike (+40 for 6 readings)
  after the warm-up, so alert episodes are raised and cleared.
- instance A, `hiddenstate serve` as a subprocess (`--transactional-id <group>-a`), restarted at once whenever
  it dies. The faults, in a seeded order, each at a seeded moment (relative to the start of the feed) but not
  before the previous fault has recovered:
  - K kills -9 of A: every other one from outside at its moment; the rest by A itself while a transaction is
    open: A is started with `HIDDENSTATE_CRASH_AT=produced:n` or `before_commit:n` (consumers/crash.py, a
    seeded n) and dies at the n-th batch's point, where exactly_once has outputs and changelog records (and,
    at `before_commit`, the offsets) in a transaction not committed, and at_least_once has the outputs
    acknowledged and the checkpoint not written (`produced`) or the changelog acknowledged and the offsets not
    committed (`before_commit`). With pipelining (the default) the next batch may be scored, not delivered, at
    that moment: it is consumed again after the restart.
  - one broker stop (SIGTERM, data kept; the feeder pauses) and start, `--outage` seconds apart;
  - a second instance B (`--transactional-id <group>-b`) joins the group, and later leaves it (SIGTERM).
  Recovery from a fault: from the fault (the kill, the broker answering again, B started, B's SIGTERM) until
  the group's committed offsets cover every reading acknowledged to the feeder up to 1 s after it.
- once fed and every reading committed, A (and B) get SIGTERM and every output topic is read from the
  beginning (with isolation.level=read_committed in exactly_once; the scores topic also read_uncommitted there,
  to count the aborted records it holds).

The table: inputs, distinct input offsets scored, missing (neither scored nor dead-lettered), duplicate score
records, alert episodes with their duplicate raises and clears, dead letters, committed offsets at the end, and
the recovery time after each fault. Exit status 1 unless nothing is missing in either mode and nothing is
duplicated in exactly_once. The logs of every `serve` process go to a temporary directory, printed at the end.

    .venv/bin/python benchmarks/chaos.py            # default run (~5 min), writes benchmarks/results/chaos.{json,md}
    .venv/bin/python benchmarks/chaos.py --quick    # ~3 min smoke run, writes to a temporary directory
    .venv/bin/python benchmarks/chaos.py --readings 60000 --sensors 500 --kills 6 --seed 7
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import collections  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.kafka_e2e import (  # noqa: E402
    RESULTS,
    T0,
    Broker,
    command_line,
    committed,
    create_topics,
    fast_producer,
    machine_info,
    unique,
    write_results,
)
from benchmarks.report import table_and_notes  # noqa: E402
from consumers.clients import quietly_stop  # noqa: E402
from consumers.commands.produce import TokenBucket, encode_readings  # noqa: E402
from detector.readings.files import Readings  # noqa: E402
from tests.kafka_helpers import header, read_topic, serve_command, start_serve  # noqa: E402

MODES = ("at_least_once", "exactly_once")
AFTER = 1.0
"""Recovery covers the readings acknowledged up to this many seconds after the fault (a feed step or more)."""
SPIKE, SPIKE_READINGS = 40.0, 6
CRASH_POINTS = ("produced", "before_commit")  # the two points of consumers/crash.py inside an open transaction
LABELS = {"outside": "kill -9 from outside", "in_transaction": "kill -9 in an open transaction",
          "broker": "broker stop + start", "join": "instance B joins", "leave": "instance B leaves"}


# ----------------------------------------------------------------------------- the readings


def fleet(n: int, sensors: int, seed: int) -> tuple[Readings, list[str]]:
    """`n` readings of `sensors` sensors, step by step (every sensor's reading of a step, then the next step):
    a noisy per-sensor sine, ts every 10 s; a seeded tenth of the sensors spike by +40 for 6 readings after the
    warm-up. Returns the readings and the spiked sensors."""
    rng = np.random.default_rng(seed)
    steps = -(-n // sensors)
    phases = rng.uniform(0, 2 * np.pi, sensors)
    values = 10 + 2 * np.sin(np.arange(steps)[:, None] / 8.0 + phases) + 0.1 * rng.standard_normal((steps, sensors))
    spiked = rng.choice(sensors, max(1, sensors // 10), replace=False)
    for s in spiked:  # after the warm-up (60 readings) and early enough to clear before the end
        start = int(rng.integers(max(70, steps // 2), steps - SPIKE_READINGS - 8))
        values[start:start + SPIKE_READINGS, s] += SPIKE
    ids = [f"s{s:04d}" for s in range(sensors)]
    order = np.arange(n)
    return Readings(sensor_ids=[ids[i % sensors] for i in order.tolist()], ts=T0 + 10.0 * (order // sensors),
                    values=values.reshape(-1)[:n, None].astype(np.float64), channel_names=["value"],
                    source="benchmarks/chaos.py"), [ids[s] for s in sorted(spiked)]


class Feeder:
    """Produces the messages one fleet step at a time at `rate` readings/s, each step acknowledged before the next.

    `ends`: the end offset per input partition of what is acknowledged so far. Holding `lock` pauses the feed
    between two steps (the broker fault holds it while the broker is down, and drops the producer).
    """

    def __init__(self, bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], step: int,
                 rate: float) -> None:
        self.bootstrap, self.topic, self.messages, self.step, self.rate = bootstrap, topic, messages, step, rate
        self.lock = asyncio.Lock()
        self.ends: dict[int, int] = {}
        self.producer = None
        self.started: float | None = None

    async def run(self) -> None:
        bucket = TokenBucket(self.rate)
        self.started = time.monotonic()
        try:
            for i in range(0, len(self.messages), self.step):
                chunk = self.messages[i:i + self.step]
                await bucket.take(len(chunk))
                async with self.lock:
                    if self.producer is None:
                        self.producer = fast_producer(self.bootstrap)
                        await self.producer.start()
                    futures = [await self.producer.send(self.topic, value, key=key) for key, value in chunk]
                    for meta in await asyncio.gather(*futures):
                        self.ends[meta.partition] = max(self.ends.get(meta.partition, 0), meta.offset + 1)
        finally:
            await self.drop_producer()

    async def drop_producer(self) -> None:
        """Close the producer (everything it sent is acknowledged); the next step starts a new one."""
        producer, self.producer = self.producer, None
        await quietly_stop(producer)


# ----------------------------------------------------------------------------- the faults


@dataclass
class Fault:
    """One fault of the schedule: `kind` (a key of LABELS), its moment in seconds after the feed starts, and for
    `in_transaction` the crash point (`produced:n`, `before_commit:n`)."""

    kind: str
    at: float
    crash_at: str | None = None


def schedule(seed: int, kills: int, duration: float) -> list[Fault]:
    """The faults in order: `kills` kills (every other one in an open transaction), a broker restart, B joining and
    later leaving, shuffled by `seed`. The in-transaction kills take `produced` and `before_commit` in turn, at a
    seeded batch; each follows a kill or the start (its process is armed when it starts, so nothing else may
    come between). Moments spread over 5-85 % of `duration`."""
    rng = random.Random(seed)
    kinds = ["in_transaction" if i % 2 else "outside" for i in range(kills)]
    rng.shuffle(kinds)
    order: list[str] = list(kinds)
    for other in ("broker", "join", "leave"):
        first = order.index("join") + 1 if other == "leave" else 0
        slots = [i for i in range(first, len(order) + 1) if i == len(order) or order[i] != "in_transaction"]
        order.insert(rng.choice(slots), other)
    gap = 0.8 * duration / len(order)
    faults = []
    points = iter(CRASH_POINTS * kills)  # the in-transaction kills take the two points in turn
    for i, kind in enumerate(order):
        crash_at = f"{next(points)}:{rng.randint(10, 30)}" if kind == "in_transaction" else None
        faults.append(Fault(kind, round(0.05 * duration + gap * (i + rng.uniform(0.2, 0.8)), 1), crash_at))
    return faults


class Instance:
    """One `hiddenstate serve` of the group as a subprocess, restarted by `supervise` whenever it dies."""

    def __init__(self, name: str, cmd: list[str], logs: Path) -> None:
        self.name, self.cmd, self.logs = name, cmd, logs
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.log: Path | None = None

    async def start(self, crash_at: str | None = None) -> None:
        self.runs += 1
        self.log = self.logs / f"serve-{self.name}-{self.runs}.log"
        env = {"HIDDENSTATE_CRASH_AT": crash_at} if crash_at else {}
        self.proc = await start_serve(self.cmd, self.log, **env)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, grace: float = 60.0) -> int | None:
        """SIGTERM, and SIGKILL if it has not exited within `grace` seconds; returns the exit status."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            await self.kill()
            return proc.returncode

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log is not None and self.log.exists() else ""


@dataclass
class Death:
    """A process of instance A ended: when (monotonic), the feeder's acknowledged ends then, and how."""

    at: float
    ends: dict[int, int]
    returncode: int | None
    crash_point_reached: bool


async def supervise(a: Instance, crash_plan: list[str | None], feeder: Feeder, deaths: asyncio.Queue,
                    stopping: asyncio.Event) -> None:
    """Keep instance A running: its j-th process is started with `crash_plan[j]` (None after the plan), and
    whenever one dies (but for the final stop) its `Death` goes to `deaths` and the next starts at once."""
    run = 0
    while not stopping.is_set():
        await a.start(crash_plan[run] if run < len(crash_plan) else None)
        run += 1
        assert a.proc is not None
        rc = await a.proc.wait()
        if stopping.is_set():
            return
        await deaths.put(Death(time.monotonic(), dict(feeder.ends), rc, "crash point" in a.tail(20_000)))


async def committed_now(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on `topic`; {} while the broker or the coordinator cannot answer."""
    from aiokafka.errors import KafkaError

    try:
        return await asyncio.wait_for(committed(bootstrap, group, topic), 10)
    except (KafkaError, OSError, TimeoutError):
        return {}


async def recovery(bootstrap: str, group: str, topic: str, feeder: Feeder, since: float,
                   timeout: float) -> float | None:
    """Seconds from `since` (a fault) until the committed offsets cover every reading acknowledged to the feeder up
    to `AFTER` seconds after it: so the service has scored readings sent after the fault (while the feed lasts),
    not just caught up with what it had before. None: not within `timeout`."""
    await asyncio.sleep(max(0.0, since + AFTER - time.monotonic()))
    target = dict(feeder.ends)
    while time.monotonic() - since < timeout:
        got = await committed_now(bootstrap, group, topic)
        if all(got.get(p, 0) >= end for p, end in target.items()):
            return time.monotonic() - since
        await asyncio.sleep(0.25)
    return None


# ----------------------------------------------------------------------------- one mode


async def one_mode(broker: Broker, mode: str, args: argparse.Namespace, readings: Readings, faults: list[Fault],
                   logs: Path) -> dict:
    """The feed and the faults against one processing guarantee; what the output topics hold at the end."""
    bootstrap = broker.bootstrap
    topics = await create_topics(bootstrap, args.partitions)
    group = unique(f"chaos-{mode}")
    mode_logs = logs / mode
    mode_logs.mkdir(parents=True, exist_ok=True)

    def instance(name: str) -> Instance:
        flags = ["--processing-guarantee", mode, "--transactional-id", f"{group}-{name}", "--client-id",
                 f"chaos-{name}", "--max-batch", str(args.max_batch), "--grace", "20"]
        return Instance(name, serve_command(bootstrap, topics, group, args.model, *flags), mode_logs)

    a, b = instance("a"), instance("b")
    messages = [(key, value) for key, value, _ in encode_readings(readings)]
    feeder = Feeder(bootstrap, topics["in"], messages, args.sensors, args.readings / args.duration)
    kills = [f for f in faults if f.kind in ("outside", "in_transaction")]
    deaths: asyncio.Queue = asyncio.Queue()
    stopping = asyncio.Event()
    supervisor = asyncio.create_task(supervise(a, [f.crash_at for f in kills], feeder, deaths, stopping))
    feeding = asyncio.create_task(feeder.run())
    records: list[dict] = []
    try:
        while feeder.started is None:
            await asyncio.sleep(0.05)
        for fault in faults:
            delay = feeder.started + fault.at - time.monotonic()
            if fault.kind != "in_transaction" and delay > 0:
                await asyncio.sleep(delay)
            note = ""
            if fault.kind in ("outside", "in_transaction"):
                if fault.kind == "outside":
                    await a.kill()
                try:
                    death = await asyncio.wait_for(deaths.get(), args.timeout)
                except TimeoutError:
                    raise RuntimeError(f"{mode}: {fault.kind} kill ({fault.crash_at}) never happened:\n"
                                       f"{a.tail()}") from None
                since = death.at
                if fault.kind == "in_transaction":
                    note = fault.crash_at + ("" if death.crash_point_reached else " (point not reached!)")
            elif fault.kind == "broker":
                async with feeder.lock:
                    await feeder.drop_producer()
                    down = time.monotonic()
                    await asyncio.to_thread(broker.stop, False)
                    await asyncio.sleep(args.outage)
                    await asyncio.to_thread(broker.start)
                    since = time.monotonic()
                note = f"broker down {since - down:.1f} s"
            elif fault.kind == "join":
                since = time.monotonic()
                await b.start()
            else:  # leave
                since = time.monotonic()
                rc = await b.stop()
                note = f"B exit status {rc}"
            seconds = await recovery(bootstrap, group, topics["in"], feeder, since, args.timeout)
            at = since - feeder.started
            records.append({"kind": fault.kind, "label": LABELS[fault.kind], "scheduled_at": fault.at,
                            "at": round(at, 1), "recovery_seconds": seconds, "note": note})
            shown = "not within the timeout" if seconds is None else f"{seconds:.1f} s"
            print(f"  {mode}: {LABELS[fault.kind]} at {at:.1f} s{f' ({note})' if note else ''}: recovered in "
                  f"{shown}", flush=True)
        await feeding
        ends = dict(feeder.ends)
        final = await recovery(bootstrap, group, topics["in"], feeder, time.monotonic(), args.timeout)
        if final is None:
            raise RuntimeError(f"{mode}: the group did not commit every reading within {args.timeout} s:\n{a.tail()}")
    finally:
        stopping.set()
        feeding.cancel()
        exits = {"a": await a.stop(), "b": await b.stop()}
        await asyncio.gather(supervisor, feeding, return_exceptions=True)
    eos = mode == "exactly_once"
    outputs = {k: await read_topic(bootstrap, topics[k], committed_only=eos) for k in ("scores", "alerts", "dlq")}
    all_scores = await read_topic(bootstrap, topics["scores"], committed_only=False) if eos else outputs["scores"]
    end_committed = await committed_now(bootstrap, group, topics["in"])
    tally = count_outputs(ends, [source(r) for r in outputs["scores"]], [source(r) for r in outputs["dlq"]],
                          [(header(r, "alert_id"), header(r, "kind")) for r in outputs["alerts"]],
                          [header(r, "reason") for r in outputs["dlq"]])
    return {"mode": mode, "group": group, "topics": topics, "faults": records, "ends": ends,
            "committed_at_end": sum(end_committed.get(p, 0) for p in ends),
            "committed_equals_end": all(end_committed.get(p) == e for p, e in ends.items()),
            "aborted_score_records": len(all_scores) - len(outputs["scores"]), "exit_status": exits,
            "processes_of_a": a.runs, **tally}


def source(record) -> tuple[int, int, int]:
    """An output's input coordinates from its headers: (partition, offset, index in a batched message or -1)."""
    index = header(record, "source_index")
    return (int(header(record, "source_partition")), int(header(record, "source_offset")),
            -1 if index is None else int(index))


def count_outputs(ends: dict[int, int], scores: list[tuple[int, int, int]], dead: list[tuple[int, int, int]],
                  alerts: list[tuple[str | None, str | None]], reasons: list[str | None]) -> dict:
    """Inputs, distinct scored, missing (neither scored nor dead-lettered), duplicate score records, alert episodes
    and duplicate raises/clears, dead letters by reason; from the outputs' input coordinates and alert keys."""
    wanted = {(p, o) for p, end in ends.items() for o in range(end)}
    scored = {(p, o) for p, o, _ in scores}
    dead_letters = {(p, o) for p, o, _ in dead}
    events = collections.Counter(alerts)
    return {
        "inputs": len(wanted),
        "distinct_scored": len(scored & wanted),
        "missing": len(wanted - scored - dead_letters),
        "duplicate_scores": len(scores) - len(set(scores)),
        "episodes": len({alert_id for alert_id, kind in events if kind == "raise"}),
        "duplicate_raises": sum(n - 1 for (_, kind), n in events.items() if kind == "raise"),
        "duplicate_clears": sum(n - 1 for (_, kind), n in events.items() if kind == "clear"),
        "most_copies_of_an_alert_event": max(events.values(), default=0),
        "dead_letters": len(dead),
        "dead_letter_reasons": dict(collections.Counter(reasons)),
    }


def passed(res: dict) -> bool:
    """Nothing missing in either mode; nothing duplicated (scores, alert events, dead letters) in exactly_once."""
    modes = {m["mode"]: m for m in res["modes"]}
    eos = modes.get("exactly_once")
    return all(m["missing"] == 0 and m["committed_equals_end"] for m in modes.values()) and (
        eos is None or (eos["duplicate_scores"] == eos["duplicate_raises"] == eos["duplicate_clears"]
                        == eos["dead_letters"] == 0))


# ----------------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    m, modes = res["machine"], res["modes"]
    c = res["config"]

    def row(label: str, value) -> list[str]:
        return [label, *(value(x) for x in modes)]

    def recovered(i: int):
        def cell(x: dict) -> str:
            f = x["faults"][i]
            seconds = "not recovered" if f["recovery_seconds"] is None else f"{f['recovery_seconds']:.1f} s"
            return f"{seconds} (at {f['at']:.0f} s{'; ' + f['note'] if f['note'] else ''})"
        return cell

    rows = [
        row("inputs (readings)", lambda x: f"{x['inputs']:,}"),
        row("distinct input offsets scored", lambda x: f"{x['distinct_scored']:,}"),
        row("**missing** (neither scored nor dead-lettered)", lambda x: f"**{x['missing']:,}**"),
        row("**duplicate score records**", lambda x: f"**{x['duplicate_scores']:,}**"),
        row("alert episodes (distinct raises)", lambda x: f"{x['episodes']}"),
        row("duplicate raises / clears", lambda x: f"{x['duplicate_raises']} / {x['duplicate_clears']}"),
        row("most copies of one alert event", lambda x: f"{x['most_copies_of_an_alert_event']}"),
        row("dead letters (reasons)", lambda x: f"{x['dead_letters']:,}" + (
            f" ({', '.join(f'{k} {v}' for k, v in x['dead_letter_reasons'].items())})" if x["dead_letters"] else "")),
        row("committed offsets at the end", lambda x: f"{x['committed_at_end']:,} of {x['inputs']:,}"),
        row("aborted score records (seen only read_uncommitted)",
            lambda x: f"{x['aborted_score_records']:,}" if x["mode"] == "exactly_once" else "–"),
        row("processes of instance A", lambda x: f"{x['processes_of_a']}"),
    ]
    for i, f in enumerate(modes[0]["faults"]):
        rows.append([f"recovery after fault {i + 1}: {f['label']}", *(recovered(i)(x) for x in modes)])
    notes = [
        f"{c['readings']:,} readings of {c['sensors']:,} sensors ({', '.join(res['spiked'][:4])}, ... "
        f"{len(res['spiked'])} of them spiked) on {c['partitions']} partitions, fed over {c['duration']:g} s "
        f"({c['readings'] / c['duration']:,.0f} readings/s, one fleet step at a time); `serve --max-batch "
        f"{c['max_batch']}`; fault schedule from seed {c['seed']}: {c['kills']} kills, broker outage "
        f"{c['outage']:g} s plus its start, B joining and leaving.",
        "Recovery: from the fault (the kill; the broker answering again; B started; B's SIGTERM) until the group's "
        "committed offsets cover every reading acknowledged to the feeder up to 1 s after it (so readings sent after the "
        "fault are scored, while the feed lasts). A kill -9 leaves the dead member "
        "in the group until its session times out (aiokafka's default 10 s): most of a kill's recovery.",
        "exactly_once read with isolation.level=read_committed; at_least_once duplicates come from the readings "
        "after the last commit (or checkpoint) of a killed process, scored again with the restored state: the same "
        "score and the same alert events, de-duplicated on the documented keys (docs/service.md); a reading whose "
        "state was checkpointed before the kill but not its offset is dead-lettered as `duplicate` instead.",
        f"Result: {'PASS' if res['passed'] else 'FAIL'} (0 missing in both modes, 0 duplicates in exactly_once).",
    ]
    lines = [
        "# Faults: kill -9, broker restart, an instance joining and leaving",
        "",
        f"- Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs, shared by the broker, the service processes and "
        f"the feeder; load average at start {', '.join(f'{v:.2f}' for v in m['load_average_at_start'])}); Python "
        f"{m['python']}, aiokafka {m['aiokafka']}; Kafka {m['kafka']} single node (KRaft) from scripts/kafka.sh",
        f"- Date: {m['date']}",
        f"- Reproduce: `{res['command']}`",
        "",
        *table_and_notes(["", *(x["mode"] for x in modes)], rows, notes),
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~3 min smoke run; writes to a temporary directory")
    p.add_argument("--readings", type=int, default=None, help="N readings (default 30000; quick 12000)")
    p.add_argument("--sensors", type=int, default=None, help="M sensors (default 200; quick 100)")
    p.add_argument("--kills", type=int, default=None, help="K kills -9 of instance A (default 4; quick 2)")
    p.add_argument("--seed", type=int, default=17, help="seed of the readings' spikes and the fault schedule")
    p.add_argument("--partitions", type=int, default=4, help="input partitions (default 4)")
    p.add_argument("--duration", type=float, default=None, help="seconds the feed lasts (default 100; quick 50)")
    p.add_argument("--outage", type=float, default=5.0, help="seconds the broker stays stopped (default 5)")
    p.add_argument("--max-batch", type=int, default=500, help="serve --max-batch (default 500)")
    p.add_argument("--modes", default=",".join(MODES), help=f"processing guarantees, comma-separated (default "
                                                            f"{','.join(MODES)})")
    p.add_argument("--model", default="gru-default", help="model (default gru-default)")
    p.add_argument("--port", type=int, default=29392, help="port of the benchmark's own broker (default 29392)")
    p.add_argument("--controller-port", type=int, default=29393, help="its controller port (default 29393)")
    p.add_argument("--timeout", type=float, default=180, help="most seconds one fault may take to recover")
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results; quick: temp)")
    args = p.parse_args(argv)
    args.readings = args.readings or (12_000 if args.quick else 30_000)
    args.sensors = args.sensors or (100 if args.quick else 200)
    args.kills = args.kills if args.kills is not None else (2 if args.quick else 4)
    args.duration = args.duration or (50.0 if args.quick else 100.0)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(args.modes) <= set(MODES) or not args.modes:
        p.error(f"--modes: {', '.join(MODES)}")
    if args.readings // args.sensors < 100:
        p.error("--readings must be at least 100 x --sensors (100 readings per sensor: warm-up, spike, clear)")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="chaos-")) if args.quick else RESULTS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("chaos.py", argv)
    print(command, flush=True)
    info = machine_info()
    readings, spiked = fleet(args.readings, args.sensors, args.seed)
    faults = schedule(args.seed, args.kills, args.duration)
    logs = Path(tempfile.mkdtemp(prefix="chaos-logs-"))
    print("faults: " + ", ".join(f"{f.kind}@{f.at:g}s" + (f"[{f.crash_at}]" if f.crash_at else "") for f in faults),
          flush=True)
    broker = Broker(args.port, args.controller_port)
    print(f"starting the broker on 127.0.0.1:{args.port} (scripts/kafka.sh)", flush=True)
    broker.start()
    if not broker.ours:
        raise SystemExit(f"a broker not started by this run answers on 127.0.0.1:{args.port}: chaos.py stops and "
                         "starts its broker, so it needs one of its own (--port)")
    try:
        modes = []
        for mode in args.modes:
            print(f"{mode}:", flush=True)
            modes.append(asyncio.run(one_mode(broker, mode, args, readings, faults, logs)))
    finally:
        broker.stop()
    res = {
        "machine": info,
        "command": command,
        "config": {k: getattr(args, k) for k in ("readings", "sensors", "kills", "seed", "partitions", "duration",
                                                   "outage", "max_batch", "model")},
        "schedule": [asdict(f) for f in faults],
        "spiked": spiked,
        "modes": modes,
        "logs": str(logs),
    }
    res["passed"] = passed(res)
    write_results(args.out, "chaos", res, markdown(res))
    print(f"serve logs in {logs}")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
