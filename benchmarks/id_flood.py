"""Memory under a flood of new sensor ids: 1M distinct ids, each seen once, through the service's scoring path.

A hostile or broken producer can invent a new sensor id per message. Every new id costs a state slot,
so memory must be bounded by `detector.capacity` (least recently seen sensors are evicted and counted),
not by the number of ids ever seen. This drives a real `ScoringService`'s decode -> engine -> outputs
path (what one Kafka poll does, minus the broker: the outputs are built, then dropped) with batches of
`--batch` one-reading messages, every message a new sensor id, and prints the process's resident
memory (VmRSS) before, along the way and after, with the pool's evictions.

    .venv/bin/python benchmarks/id_flood.py                         # 1M ids, capacity 100k; writes results/id_flood.{json,md}
    .venv/bin/python benchmarks/id_flood.py --ids 2e6 --capacity 1e5
    .venv/bin/python benchmarks/id_flood.py --quick                 # 100k ids, capacity 10k; temporary directory

Checkpoints and the HTTP endpoints are off (there is no broker); with checkpoints on, the set of
sensors changed since the last checkpoint is cleared at every commit.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import orjson  # noqa: E402
import torch  # noqa: E402
from aiokafka.structs import ConsumerRecord  # noqa: E402

from consumers.config import ServiceConfig  # noqa: E402
from consumers.service import ScoringService  # noqa: E402
from detector.config import DetectorConfig  # noqa: E402
from detector.errors import ModelError  # noqa: E402
from detector.model.store import load_model, untrained  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py, next to this script)

RESULTS = Path(__file__).resolve().parent / "results"
T0 = 1_700_000_000.0


def memory_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB: resident now, and the peak."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def batch_of(first: int, count: int, offset: int) -> list[ConsumerRecord]:
    """`count` one-reading messages, each of a sensor id never seen before."""
    records = []
    for i in range(first, first + count):
        sensor = f"flood-{i:09d}"
        value = orjson.dumps({"sensor_id": sensor, "ts": T0 + i * 1e-3, "value": float(i % 97)})
        records.append(ConsumerRecord("sensor-readings", 0, offset + i - first, 0, 0, None, value, None, 0,
                                      len(value), []))
    return records


def run(ids: int, capacity: int, batch: int, samples: int) -> dict:
    torch.set_num_threads(1)
    load = os.getloadavg()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        model = load_model("gru-default")
    except ModelError:
        model = untrained(32, 1)
    cfg = ServiceConfig(checkpoints_enabled=False, metrics_enabled=False,
                        detector=DetectorConfig(channels=1, capacity=capacity))
    service = ScoringService(cfg, model)
    loop = asyncio.new_event_loop()

    def step(records: list[ConsumerRecord]) -> int:
        decoded = service.decoder.decode([(r.key, r.value) for r in records])
        result = loop.run_until_complete(service._score(decoded))
        return len(service._outputs(records, decoded, result))

    step(batch_of(-1, 1, 0))  # the engine exists from here on: its fixed cost is part of "before"
    gc.collect()
    before, _ = memory_mib()
    rows = [{"ids": 0, "rss_mib": round(before, 1)}]
    every = max(batch, ids // samples)
    started = time.perf_counter()
    outputs = 0
    done = 0
    while done < ids:
        n = min(batch, ids - done)
        outputs += step(batch_of(done, n, done))
        done += n
        if done % every < batch or done == ids:
            pool = service.engine.pool
            rss, _ = memory_mib()
            rows.append({"ids": done, "rss_mib": round(rss, 1), "sensors": len(pool), "allocated": pool.allocated,
                         "evicted": pool.stats.evicted_capacity, "owners": len(service.ownership.owner)})
    elapsed = time.perf_counter() - started
    gc.collect()
    after, peak = memory_mib()
    pool = service.engine.pool
    loop.close()
    return {
        "ids": ids, "capacity": capacity, "batch": batch, "seconds": round(elapsed, 2),
        "readings_per_s": round(ids / elapsed), "scored": service.stats.scored,
        "dead_lettered": sum(service.stats.dead_lettered.values()), "outputs": outputs,
        "rss_before_mib": round(before, 1), "rss_after_mib": round(after, 1), "rss_peak_mib": round(peak, 1),
        "sensors_held": len(pool), "slots_allocated": pool.allocated, "evicted_capacity": pool.stats.evicted_capacity,
        "evicted_idle": pool.stats.evicted_idle, "pool_bytes_per_sensor": pool.bytes_per_sensor,
        "owner_map": len(service.ownership.owner), "model": model.model_id, "date": date, "loadavg": load,
        "samples": rows,
    }


def report(r: dict, command: str) -> str:
    growth = r["rss_after_mib"] - r["rss_before_mib"]
    lines = [
        "# Memory under a flood of new sensor ids",
        "",
        f"- Machine: {cpu_model()} ({os.cpu_count()} logical CPUs, shared; load average at start "
        f"{', '.join(f'{x:.2f}' for x in r['loadavg'])}); Python {platform.python_version()}, "
        f"torch {torch.__version__} (1 thread)",
        f"- Date: {r['date']}",
        f"- Model: {r['model']}",
        f"- Reproduce: `{command}`",
        "",
        f"{r['ids']:,} one-reading messages, each of a new sensor id, through a `ScoringService`'s decode -> "
        f"engine -> outputs path in batches of {r['batch']}, with `detector.capacity` {r['capacity']:,} "
        f"(checkpoints and HTTP off).",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| VmRSS before (service, model, engine) | {r['rss_before_mib']:,.1f} MiB |",
        f"| VmRSS after {r['ids']:,} new ids | **{r['rss_after_mib']:,.1f} MiB** (+{growth:,.1f} MiB) |",
        f"| VmRSS peak (VmHWM) | {r['rss_peak_mib']:,.1f} MiB |",
        f"| sensors held / slots allocated | {r['sensors_held']:,} / {r['slots_allocated']:,} |",
        f"| evicted for capacity (`hiddenstate_state_pool_evictions_total{{kind=\"capacity\"}}`) | "
        f"**{r['evicted_capacity']:,}** |",
        f"| scored / dead-lettered | {r['scored']:,} / {r['dead_lettered']:,} |",
        f"| service's sensor -> partition map | {r['owner_map']:,} entries |",
        f"| pool state per sensor | {r['pool_bytes_per_sensor']} B |",
        f"| rate (a shared machine: see the load average) | {r['readings_per_s']:,} readings/s ({r['seconds']:.1f} s) |",
        "",
        "| new ids so far | VmRSS MiB | sensors held | evicted | sensor -> partition map |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s in r["samples"]:
        lines.append(f"| {s['ids']:,} | {s['rss_mib']:,.1f} | {s.get('sensors', 0):,} | {s.get('evicted', 0):,} | "
                     f"{s.get('owners', 0):,} |")
    # from the first sample taken once the service's maps had reached their bound (pool full, the
    # sensor -> partition map pruned once: 3 x capacity ids)
    full = next((s for s in r["samples"] if s["ids"] >= 3 * r["capacity"]), r["samples"][-1])
    tail = r["rss_after_mib"] - full["rss_mib"]
    lines += ["", f"Memory grows while the pool fills to capacity; from {full['ids']:,} ids on (pool full, the service's "
              f"sensor -> partition map at its bound of 2 x capacity) it changed by {tail:+.1f} MiB over the remaining "
              f"{r['ids'] - full['ids']:,} new ids: the least recently seen sensors are evicted, and counted, to "
              f"make room."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=float, default=1e6, help="distinct new sensor ids (default 1e6)")
    parser.add_argument("--capacity", type=float, default=1e5, help="detector.capacity (default 1e5)")
    parser.add_argument("--batch", type=int, default=500, help="messages per batch (the service's max_batch)")
    parser.add_argument("--samples", type=int, default=10, help="memory readings along the way")
    parser.add_argument("--quick", action="store_true", help="100k ids, capacity 10k, results to a temp directory")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results)")
    parser.add_argument("--report-only", action="store_true", help="rewrite id_flood.md from id_flood.json")
    args = parser.parse_args()
    if args.report_only:
        out = args.out or RESULTS
        r = json.loads((out / "id_flood.json").read_text())
        (out / "id_flood.md").write_text(report(r, r["command"]))
        print((out / "id_flood.md").read_text())
        return 0
    if args.quick:
        args.ids, args.capacity = 1e5, 1e4
    out = args.out or (Path(tempfile.mkdtemp(prefix="id_flood-")) if args.quick else RESULTS)
    r = run(int(args.ids), int(args.capacity), args.batch, args.samples)
    command = shlex.join([".venv/bin/python", "benchmarks/id_flood.py", *sys.argv[1:]])
    r["command"] = command
    text = report(r, command)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "id_flood.json").write_text(json.dumps(r, indent=1) + "\n")
    (out / "id_flood.md").write_text(text)
    print(f"wrote {out / 'id_flood.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
