"""`hiddenstate produce`: replay CSV or JSON-lines files into a Kafka topic, in the service's input format.

    hiddenstate produce pump7.csv --bootstrap 127.0.0.1:9092 --topic sensor-readings --rate 1000

Files are read exactly as `replay` and `train` read them (`detector.readings.files.read_readings`)
and sent in timestamp order, one file after the other. Each reading becomes one JSON
message keyed by its sensor id (so that a sensor's readings stay in one partition, in order):

    {"sensor_id": "pump-7", "ts": 1700000000.5, "value": 3.2}              one channel
    {"sensor_id": "pump-7", "ts": 1700000000.5, "values": {"a": 1, "b": 2}}  several, by column name

With `--batch-per-message N`, up to N consecutive readings of one sensor go in one message
(the service's batched format), still keyed by the sensor id:

    {"sensor_id": "pump-7", "readings": [{"ts": 1700000000.5, "value": 3.2}, {"ts": 1700000001.5, ...}]}

and with `--columnar` as columns, the cheapest form for the service to decode:

    {"sensor_id": "pump-7", "ts": [1700000000.5, 1700000001.5], "value": [3.2, 3.3]}

`--rate` paces the readings with a token bucket (readings per second; 0, the default, sends
as fast as the broker takes them). `--loop` replays the files until interrupted, shifting
the timestamps of every pass past the previous one so the service does not reject them as
duplicates. Prints a summary: messages, readings, seconds. A broker that cannot be reached
within `--connect-timeout` seconds is an error (exit status 2).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from consumers.config import load_service_config
from consumers.errors import ProduceError
from detector.errors import HiddenstateError, InputFileError
from detector.readings.files import Readings, read_readings

DEFAULT_TOPIC = "sensor-readings"
ACK_WINDOW = 20_000
"""Most messages sent but not yet acknowledged; the producer waits for acks beyond this."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="CSV or JSON-lines files (.gz allowed)")
    parser.add_argument(
        "--bootstrap", metavar="HOST:PORT[,...]",
        help="bootstrap servers (default: bootstrap_servers of --config's [service] table or "
             "HIDDENSTATE_BOOTSTRAP_SERVERS, as `serve` reads them; else 127.0.0.1:9092)",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file whose [service] bootstrap_servers to use")
    parser.add_argument("--topic", default=DEFAULT_TOPIC,
                        help=f"topic to write the readings to (default {DEFAULT_TOPIC})")
    parser.add_argument("--rate", type=float, default=0.0, metavar="READINGS_PER_S",
                        help="readings per second, paced by a token bucket (default 0: as fast as possible)")
    parser.add_argument("--batch-per-message", type=int, default=1, metavar="N",
                        help="up to N readings of one sensor per message (default 1: one reading per message)")
    parser.add_argument("--columnar", action="store_true",
                        help="with --batch-per-message: write each message's readings as columns (ts, value arrays)")
    parser.add_argument("--time-column", help="timestamp column or key (default: detected)")
    parser.add_argument("--sensor-column",
                        help="sensor id column or key (default: sensor_id if present, else the file's name)")
    parser.add_argument("--columns", help="value columns, comma-separated (default: every numeric column but labels)")
    parser.add_argument("--loop", action="store_true",
                        help="replay the files again and again (timestamps shifted each pass) until interrupted")
    parser.add_argument("--connect-timeout", type=float, default=15.0, metavar="SECONDS",
                        help="give up if the broker cannot be reached this long (default 15)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


@dataclass
class ProduceSummary:
    messages: int
    readings: int
    seconds: float
    passes: int
    skipped: int

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else math.inf

    def line(self, topic: str) -> str:
        passes = f" in {self.passes} passes" if self.passes > 1 else ""
        skipped = f"; {self.skipped} unreadable row(s) left out" if self.skipped else ""
        return (f"produced {self.messages} messages ({self.readings} readings){passes} to {topic} "
                f"in {self.seconds:.2f} s ({self.rate:,.0f} readings/s){skipped}")


class TokenBucket:
    """`rate` tokens per second, at most `capacity` saved up; `take(n)` waits until n are there."""

    def __init__(self, rate: float, capacity: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        # a tenth of a second of readings: smooth, but few enough wake-ups at high rates
        self.capacity = max(1.0, capacity if capacity is not None else rate / 10.0)
        self.tokens = 0.0
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, n: float = 1.0) -> None:
        while True:
            self._refill()
            if self.tokens >= n or (n > self.capacity and self.tokens >= self.capacity):
                self.tokens -= n
                return
            await asyncio.sleep(max((min(n, self.capacity) - self.tokens) / self.rate, 0.0005))


def encode_readings(
    readings: Readings, shift: float = 0.0, per_message: int = 1, columnar: bool = False
) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, value, readings in it) per message, in the service's input format; `shift` seconds added to every ts.

    per_message > 1: each sensor's readings are gathered, in order, into `{"sensor_id", "readings": [...]}`
    messages of up to `per_message` readings (`columnar`: `{"sensor_id", "ts": [...], "value(s)": ...}`);
    a message goes out when full, the rest at the end.
    """
    names = readings.channel_names
    single = len(names) == 1
    ts = (readings.ts + shift).tolist()
    values = readings.values.tolist()
    keys: dict[str, bytes] = {}
    pending: dict[str, list[dict[str, object]]] = {}
    for sensor, stamp, row in zip(readings.sensor_ids, ts, values):
        key = keys.get(sensor)
        if key is None:
            key = keys[sensor] = sensor.encode("utf-8")
        # NaN (a cell that was not a number) goes out as null: the service dead-letters it, as replay rejects it
        doc: dict[str, object] = {"ts": stamp} if per_message > 1 else {"sensor_id": sensor, "ts": stamp}
        if single:
            doc["value"] = None if math.isnan(row[0]) else row[0]
        else:
            doc["values"] = {n: (None if math.isnan(v) else v) for n, v in zip(names, row)}
        if per_message == 1:
            yield key, orjson.dumps(doc), 1
            continue
        batch = pending.setdefault(sensor, [])
        batch.append(doc)
        if len(batch) >= per_message:
            del pending[sensor]
            yield key, _envelope(sensor, batch, names, columnar), len(batch)
    for sensor, batch in pending.items():
        yield keys[sensor], _envelope(sensor, batch, names, columnar), len(batch)


def _envelope(sensor: str, batch: list[dict[str, object]], names: Sequence[str], columnar: bool) -> bytes:
    """One sensor's batched message: its reading objects under `readings`, or the same readings as columns."""
    if not columnar:
        return orjson.dumps({"sensor_id": sensor, "readings": batch})
    doc: dict[str, object] = {"sensor_id": sensor, "ts": [r["ts"] for r in batch]}
    if len(names) == 1:
        doc["value"] = [r["value"] for r in batch]
    else:
        doc["values"] = {n: [r["values"][n] for r in batch] for n in names}  # type: ignore[index]
    return orjson.dumps(doc)


def load_files(paths: Sequence[Path], time_column: str | None, sensor_column: str | None,
               value_columns: Sequence[str] | None) -> list[Readings]:
    """The files as read by `read_readings`, each in timestamp order (stable: a sorted file keeps its order)."""
    files = []
    for path in paths:
        readings = read_readings(path, time_column, sensor_column, value_columns)
        order = np.argsort(readings.ts, kind="stable")
        if np.any(order != np.arange(order.size)):
            readings = readings.take(order)
        files.append(readings)
    return files


def pass_shift(files: Sequence[Readings]) -> float:
    """How far each --loop pass moves the timestamps: the span of all files plus one typical step."""
    ts = np.concatenate([f.ts for f in files])
    span = float(ts.max() - ts.min()) if ts.size else 0.0
    steps = np.diff(np.unique(ts))
    step = float(np.median(steps)) if steps.size else 1.0
    return span + max(step, 1e-3)


async def _start_producer(bootstrap: str, timeout: float):
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: BaseException | None = None
    while True:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                    request_timeout_ms=max(int(timeout * 1000), 5000))
        remaining = deadline - loop.time()
        try:
            await asyncio.wait_for(producer.start(), timeout=max(remaining, 0.1))
            return producer
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            last = exc
            try:
                await producer.stop()
            except Exception:  # noqa: BLE001 - closing a producer that never started
                pass
        if loop.time() + 0.5 >= deadline:
            reason = str(last) or type(last).__name__
            raise ProduceError(f"cannot reach Kafka at {bootstrap} within {timeout:g} s ({reason}); "
                               "is the broker running? (scripts/kafka.sh start)")
        await asyncio.sleep(0.5)


async def produce_files(
    paths: Sequence[str | Path],
    bootstrap: str,
    topic: str,
    rate: float = 0.0,
    time_column: str | None = None,
    sensor_column: str | None = None,
    value_columns: Sequence[str] | None = None,
    loop: bool = False,
    connect_timeout: float = 15.0,
    max_passes: int | None = None,
    progress: bool = False,
    summary: ProduceSummary | None = None,
    per_message: int = 1,
    columnar: bool = False,
) -> ProduceSummary:
    """Produce the readings of `paths` to `topic`; returns what was sent once every message is acknowledged.

    With `loop`, passes repeat until cancelled (or `max_passes`); the summary counts what was acknowledged.
    A `summary` passed in is kept up to date as acknowledgements come in (for a summary after an interrupt).
    """
    from aiokafka.errors import KafkaError

    if rate < 0 or not math.isfinite(rate):
        raise ProduceError(f"--rate must be a non-negative number, not {rate}")
    if per_message < 1:
        raise ProduceError(f"--batch-per-message must be at least 1, not {per_message}")
    if not paths:
        raise InputFileError("give at least one file to produce")
    files = load_files([Path(p) for p in paths], time_column, sensor_column, value_columns)
    skipped = sum(len(f.skipped) for f in files)
    shift_per_pass = pass_shift(files) if loop else 0.0
    producer = await _start_producer(bootstrap, connect_timeout)
    bucket = TokenBucket(rate) if rate > 0 else None
    sent = 0
    out = summary if summary is not None else ProduceSummary(0, 0, 0.0, 0, 0)
    out.skipped = skipped
    passes = 0
    pending: list[asyncio.Future] = []
    started = time.monotonic()
    last_print = started

    def counter(n: int):
        def count(future: asyncio.Future) -> None:
            if not future.cancelled() and future.exception() is None:
                out.messages += 1
                out.readings += n
        return count

    async def settle(futures: list[asyncio.Future]) -> None:
        try:
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise ProduceError(f"Kafka at {bootstrap} refused a message for {topic}: {exc}") from None

    try:
        while True:
            for readings in files:
                for key, value, n in encode_readings(readings, passes * shift_per_pass, per_message, columnar):
                    if bucket is not None:
                        await bucket.take(n)
                    try:
                        future = await producer.send(topic, value, key=key)
                    except KafkaError as exc:
                        raise ProduceError(f"cannot send to {topic} at {bootstrap}: {exc}") from None
                    future.add_done_callback(counter(n))
                    pending.append(future)
                    sent += n
                    if len(pending) >= ACK_WINDOW:
                        await settle(pending)
                        pending = []
                    if progress and time.monotonic() - last_print >= 5.0:
                        last_print = time.monotonic()
                        print(f"  {sent} readings sent ({sent / (last_print - started):,.0f}/s)", file=sys.stderr)
            passes += 1
            out.passes = passes
            if not loop or (max_passes is not None and passes >= max_passes):
                break
        await settle(pending)
    finally:
        try:  # flushes what is still buffered (also after an interrupt)
            await asyncio.wait_for(producer.stop(), timeout=max(connect_timeout, 5.0))
        except (KafkaError, asyncio.TimeoutError):
            pass
        out.seconds = time.monotonic() - started
    return out


def run(args: argparse.Namespace) -> int:
    import logging

    # aiokafka logs every failed connection attempt and auto-created topic; the summary or the error says enough
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    summary = ProduceSummary(0, 0, 0.0, 0, 0)
    try:
        if args.batch_per_message < 1:
            raise ProduceError(f"--batch-per-message must be at least 1, not {args.batch_per_message}")
        if args.columnar and args.batch_per_message == 1:
            raise ProduceError("--columnar writes batches: give --batch-per-message N with N above 1 too")
        if args.connect_timeout <= 0:
            raise ProduceError("--connect-timeout must be positive")
        bootstrap = load_service_config(args.config, bootstrap_servers=args.bootstrap).bootstrap_servers
        asyncio.run(produce_files(
            args.files, bootstrap, args.topic, rate=args.rate, time_column=args.time_column,
            sensor_column=args.sensor_column, value_columns=columns, loop=args.loop,
            connect_timeout=args.connect_timeout, progress=not args.quiet, summary=summary,
            per_message=args.batch_per_message, columnar=args.columnar,
        ))
    except KeyboardInterrupt:
        print(f"interrupted; {summary.line(args.topic)} (acknowledged so far)")
        return 130
    except HiddenstateError as exc:
        print(f"hiddenstate produce: error: {exc}", file=sys.stderr)
        return 2
    print(summary.line(args.topic))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hiddenstate produce", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
