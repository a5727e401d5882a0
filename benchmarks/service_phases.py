"""Where the service's time per reading goes, by input format, without a broker.

Runs the `ScoringService`'s own per-batch steps on messages built in memory (with the service's
garbage-collector setting, `consumers.process.tune_gc`), exactly as `process` does between a poll and
the sends: decode (`Decoder.decode`), score (`Engine.step`, in its worker
thread) and build the outputs (`_outputs`: score records, dead letters, alerts). Kafka's own costs
(fetching, the producer's record batches, round trips, the broker sharing the cores) are not in
these figures; `kafka_e2e.py` measures the whole path. The service's CPU time per reading is the
sum of the three, so 1e6 / sum is the most a service process could score per second even with a
free broker.

Formats (1,000 univariate sensors; the first fifth of the batches, at least one, is a warm-up):

- `single`: one reading per message, `max_batch` 5000 (the default);
- `envelope`: `{"sensor_id", "readings": [...]}` with 100 readings per message, `max_batch` 1000;
- `columnar`: `{"sensor_id", "ts": [...], "value": [...]}` with 100 per message, `max_batch` 1000,
  and `score_records = "per_message"`.

    .venv/bin/python benchmarks/service_phases.py           # writes results/service_phases.{md,json}
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from aiokafka.structs import ConsumerRecord  # noqa: E402

from benchmarks.kafka_e2e import batched_messages, command_line, reading, write_results  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from consumers.config import ServiceConfig  # noqa: E402
from consumers.process import tune_gc  # noqa: E402
from consumers.service import ScoringService  # noqa: E402
from detector.config import DetectorConfig  # noqa: E402

FORMATS = {  # name: (readings per message, max_batch, columnar, score_records)
    "single": (1, 5000, False, "per_reading"),
    "envelope": (100, 1000, False, "per_reading"),
    "columnar": (100, 1000, True, "per_message"),
}
PHASES = ("decode", "engine", "outputs")


def records(fmt: str, n: int, sensors: int) -> list[ConsumerRecord]:
    per, _, columnar, _ = FORMATS[fmt]
    if per == 1:
        raw = [reading(i % sensors, i // sensors) for i in range(n)]
    else:
        raw = [(k, v) for k, v, _ in batched_messages(n, sensors, per, columnar)]
    return [ConsumerRecord("in", i % 4, i, 0, 0, k, v, None, len(k), len(v), []) for i, (k, v) in enumerate(raw)]


def run_format(fmt: str, n: int, sensors: int) -> dict:
    per, max_batch, _, score_records = FORMATS[fmt]
    msgs = records(fmt, n, sensors)
    cfg = ServiceConfig(bootstrap_servers="127.0.0.1:1", input_topics=["in"], scores_topic="scores",
                        alerts_topic="alerts", dead_letter_topic="dlq", group_id="g", checkpoints_enabled=False,
                        max_message_bytes=1 << 20, score_records=score_records, detector=DetectorConfig(channels=1))
    service = ScoringService(cfg)
    spent = dict.fromkeys(PHASES, 0.0)
    counted = 0

    starts = range(0, len(msgs), max_batch)
    warmup = max(1, len(starts) // 5) if len(starts) > 1 else 0

    async def go() -> None:
        nonlocal counted
        for k, b in enumerate(starts):
            batch = msgs[b:b + max_batch]
            t0 = time.process_time()
            decoded = service.decoder.decode([(m.key, m.value) for m in batch])
            t1 = time.process_time()
            result = await service._score(decoded)
            t2 = time.process_time()
            service._outputs(batch, decoded, result)
            t3 = time.process_time()
            if k >= warmup:
                for phase, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2)):
                    spent[phase] += dt
                counted += len(decoded)

    asyncio.run(go())
    us = {phase: spent[phase] / counted * 1e6 for phase in PHASES}
    total = sum(us.values())
    return {"format": fmt, "readings_per_message": per, "max_batch": max_batch, "score_records": score_records,
            "readings": counted, **{f"{p}_us": us[p] for p in PHASES}, "total_us": total,
            "ceiling_readings_per_s": 1e6 / total, "score_records_written": service.stats.score_messages}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Service time per reading, by input format (no broker)",
        "",
        f"- Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs), load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}; Python {m['python']}, torch {m['torch']} "
        "(1 thread)",
        f"- Date: {m['date']}",
        f"- Reproduce: `{res['command']}`",
        "",
        "| format | readings/message | max_batch | score records | decode µs | engine µs | outputs µs | total µs "
        "| ceiling readings/s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["formats"]:
        lines.append(
            f"| {r['format']} | {r['readings_per_message']} | {r['max_batch']} | {r['score_records']} | "
            f"{r['decode_us']:.2f} | {r['engine_us']:.2f} | {r['outputs_us']:.2f} | **{r['total_us']:.2f}** | "
            f"{r['ceiling_readings_per_s']:,.0f} |"
        )
    lines += [
        "",
        "CPU time of this process per reading (process clock), after a warm-up (the first fifth of the batches). "
        "decode = "
        "`Decoder.decode`; engine = `Engine.step` (in a worker thread, as in the service); outputs = "
        "`ScoringService._outputs` (JSON of the score records, dead letters, alerts, bookkeeping). Kafka's "
        "own per-record costs (fetch parsing, record batches, acks, commits) and the broker come on top: "
        "see `kafka_e2e.py`. Ceiling = 1e6 / total.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readings", type=int, default=400_000, help="readings per format (default 400000)")
    p.add_argument("--sensors", type=int, default=1000, help="sensors (default 1000)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results directory")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tune_gc()  # as `hiddenstate serve` does
    machine = machine_info(torch=torch.__version__)
    rows = []
    for fmt in FORMATS:
        r = run_format(fmt, args.readings, args.sensors)
        print(f"{fmt:9s} decode {r['decode_us']:.2f} engine {r['engine_us']:.2f} outputs {r['outputs_us']:.2f} "
              f"total {r['total_us']:.2f} µs/reading → {r['ceiling_readings_per_s']:,.0f}/s", flush=True)
        rows.append(r)
    res = {"machine": machine, "command": command_line("service_phases.py", argv), "formats": rows}
    write_results(args.out, "service_phases", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
