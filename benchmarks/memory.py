"""Memory at scale: resident memory per sensor held, from a thousand to ten million univariate sensors.

For each fleet size N, a fresh Python process (so that its RSS holds nothing left over from a larger run)

1. imports the engine and loads the model (default: an untrained GRU 1×64; no shipped model has H = 64,
   and memory does not depend on the weights), then warms up a throwaway detector on one batch, so
   one-time allocations (torch kernels, numpy and allocator buffers of a batch) are not counted;
2. hands the C heap's free memory back (glibc `malloc_trim`) and reads VmRSS from /proc/self/status
   ("before");
3. creates a `Detector` with capacity N (the pool starts at `initial_capacity` slots and grows by
   doubling, capped at capacity, as in production) and feeds every sensor `--readings` readings
   (default 3) in batches of `--batch` (65,536) distinct sensors, with string ids "sensor-0000123"
   made per batch and dropped after it, as a consumer would: the engine keeps no id strings;
4. reads VmRSS again ("after") and VmHWM (the peak, reset after the warm-up where the kernel allows), then
   VmRSS once more after `malloc_trim` ("trimmed").

RSS growth ÷ N is the measured cost of one sensor: state arrays, the id map's hash table, whatever else
the engine holds per sensor, and the freed temporaries of the batches that glibc keeps in its heap
instead of returning them (how much depends on batch size and allocation order). The trimmed growth
leaves that slack out: it is what the detector holds. Next to both: the pool's own `bytes_per_sensor`
(array arithmetic), its `nbytes` and the id map's table. Every sensor's state is allocated and zeroed on its
first reading, so the readings after the first change no memory; they are there to run the full
path. The fill's readings/s is reported too: it includes first sight of every sensor (slot assignment,
id map inserts, pool growth) and page faults of fresh memory, so it is a fill figure, not the engine's
steady-state throughput (benchmarks/engine.py measures that); on a shared machine it is noisy.

    .venv/bin/python benchmarks/memory.py            # 1e3 ... 1e7 sensors (~15 min); results/memory.{json,md,png}
    .venv/bin/python benchmarks/memory.py --quick    # smoke run: 1e3, 1e4, a few seconds each, writes to a temp dir
    .venv/bin/python benchmarks/memory.py --sensors 1e6 --model gru-default
    .venv/bin/python benchmarks/memory.py --plot-only  # redraw results/memory.png from results/memory.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import machine  # noqa: E402  (benchmarks/machine.py, next to this script)
from plots import Line, Panel, save_panels  # noqa: E402  (benchmarks/plots.py)
import report  # noqa: E402  (benchmarks/report.py)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SENSORS = [1_000, 10_000, 100_000, 1_000_000, 10_000_000]
START_TS = 1.7e9
INTERVAL = 1.0
GiB = 2**30
TARGET_BYTES_PER_SENSOR = 400  # issue 5: at H = 64, univariate, measured by RSS
TARGET_TOTAL_BYTES = 4 * GiB  # issue 5: 10 M sensors in one process, id map included
TARGET_SENSORS = 10_000_000


# -- one fleet, in its own process ------------------------------------------------------------------


def proc_status(field: str) -> int:
    """A size field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def malloc_trim() -> bool:
    """Hand the C heap's free memory back to the OS (glibc `malloc_trim(0)`); False where there is no glibc.

    Freed temporaries of the batches (numpy and torch buffers of tens of MiB with 65,536-reading batches) stay
    in the heap and in RSS until then; the trimmed figure is what the detector itself holds.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def batch_of(start: int, stop: int, reading: int):
    """Readings `reading` of sensors start..stop-1: fresh id strings, timestamps, values (a sine per sensor)."""
    import numpy as np

    i = np.arange(start, stop)
    ids = [f"sensor-{k:07d}" for k in range(start, stop)]
    ts = np.full(i.size, START_TS + reading * INTERVAL)
    values = 100.0 * (i % 97) + 10.0 * np.sin(0.3 * reading + i) + 0.1 * np.cos(7.0 * reading * i)
    return ids, ts, values[:, None]


def measure_fleet(n: int, model_name: str, hidden: int, layers: int, readings: int, batch: int,
                  state_dtype: str = "float32") -> dict:
    """Fill a detector with `n` sensors in this process and return what it cost (see the module doc)."""
    import numpy as np
    import torch

    from detector import Detector
    from detector.model.store import load_model, untrained

    torch.set_num_threads(1)
    model = untrained(hidden, layers) if model_name == "untrained" else load_model(model_name)
    batch = min(batch, n)

    warm = Detector(model, channels=1, capacity=batch, state_dtype=state_dtype)
    for r in range(2):
        warm.score_arrays(*batch_of(0, batch, r))
    del warm
    gc.collect()
    trimmed = malloc_trim()
    peak_reset = reset_peak()
    before = proc_status("VmRSS")

    det = Detector(model, channels=1, capacity=n, state_dtype=state_dtype)
    wall = cpu = 0.0
    last_wall = last_cpu = 0.0
    for r in range(readings):
        for start in range(0, n, batch):
            args = batch_of(start, min(n, start + batch), r)
            c0, w0 = time.process_time(), time.perf_counter()
            det.score_arrays(*args)
            dw, dc = time.perf_counter() - w0, time.process_time() - c0
            wall, cpu = wall + dw, cpu + dc
            if r == readings - 1:
                last_wall, last_cpu = last_wall + dw, last_cpu + dc
            del args
    gc.collect()
    after = proc_status("VmRSS")
    peak = proc_status("VmHWM")
    after_trim = proc_status("VmRSS") if malloc_trim() else None

    pool, stats = det.engine.pool, det.engine.stats
    id_map_bytes = pool._map.nbytes  # the id map's hash table (StatePool.nbytes leaves it out)
    growth = after - before
    total_readings = n * readings
    return {
        "sensors": n,
        "held": len(pool),
        "allocated_slots": pool.allocated,
        "readings_per_sensor": readings,
        "batch": batch,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_growth_bytes": growth,
        "rss_bytes_per_sensor": growth / n,
        "malloc_trim": trimmed,
        "rss_after_trim_bytes": after_trim,
        "trimmed_growth_bytes": None if after_trim is None else after_trim - before,
        "trimmed_bytes_per_sensor": None if after_trim is None else (after_trim - before) / n,
        "peak_rss_bytes": peak,
        "peak_growth_bytes": peak - before if peak_reset else None,
        "peak_reset": peak_reset,
        "pool_bytes_per_sensor": pool.bytes_per_sensor,
        "pool_nbytes": pool.nbytes,
        "id_map_nbytes": id_map_bytes,
        "arrays_bytes_per_sensor": (pool.nbytes + id_map_bytes) / n,
        "state_size": pool.state_size,
        "fill_readings": total_readings,
        "fill_wall_seconds": wall,
        "fill_cpu_seconds": cpu,
        "fill_readings_per_s": total_readings / wall,
        "fill_readings_per_cpu_s": total_readings / cpu,
        "last_pass_readings_per_s": n / last_wall,
        "last_pass_readings_per_cpu_s": n / last_cpu,
        "scored": stats.scored,
        "rejected": sum(stats.rejected.values()),
        "evicted": pool.stats.evicted_capacity + pool.stats.evicted_idle,
        "model": getattr(model, "model_id", model.name),
        "hidden_size": model.network.hidden_size,
        "layers": model.network.layers,
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


def run_fleet(n: int, args: argparse.Namespace) -> dict:
    """`measure_fleet(n)` in a fresh interpreter; its result comes back as the last line of its stdout."""
    cmd = [sys.executable, __file__, "--child", str(n), "--model", args.model, "--hidden", str(args.hidden),
           "--layers", str(args.layers), "--readings", str(args.readings), "--batch", str(args.batch),
           "--state-dtype", args.state_dtype]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        return {"sensors": n, "failed": f"exit status {done.returncode} (killed for memory?)"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the run ----------------------------------------------------------------------------------------


def machine_info() -> dict:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    # glibc tuning, if any
    return machine.machine_info(memory_bytes=mem, malloc_env={k: v for k, v in os.environ.items()
                                                              if k.startswith("MALLOC_")})


def run(args: argparse.Namespace) -> dict:
    info = machine_info()
    fleets = []
    for n in args.sensors:
        print(f"{n:,} sensors ...", flush=True)
        r = run_fleet(n, args)
        fleets.append(r)
        if "failed" in r:
            print(f"  failed: {r['failed']}", flush=True)
            continue
        print(
            f"  RSS +{r['rss_growth_bytes'] / 2**20:,.1f} MiB = {r['rss_bytes_per_sensor']:,.0f} B/sensor "
            f"(arrays {r['arrays_bytes_per_sensor']:,.0f}); fill {r['fill_readings_per_s']:,.0f} readings/s",
            flush=True,
        )
    info["load_average_at_end"] = list(os.getloadavg())
    first = next((f for f in fleets if "failed" not in f), {})
    return {
        "machine": info,
        "command": "".join(f"{k}={shlex.quote(v)} " for k, v in info["malloc_env"].items())
        + ".venv/bin/python benchmarks/memory.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "settings": {
            "sensors": args.sensors,
            "model": args.model,
            "readings_per_sensor": args.readings,
            "batch": args.batch,
            "state_dtype": args.state_dtype,
            "quick": args.quick,
        },
        "model": {k: first.get(k) for k in ("model", "hidden_size", "layers", "state_size", "torch", "numpy")},
        "targets": {
            "rss_bytes_per_sensor": TARGET_BYTES_PER_SENSOR,
            "total_bytes": TARGET_TOTAL_BYTES,
            "total_at_sensors": TARGET_SENSORS,
        },
        "fleets": fleets,
    }


# -- output -----------------------------------------------------------------------------------------


HEADERS = ["sensors", "RSS growth", "RSS B/sensor", "trimmed B/sensor", "pool B/sensor", "pool arrays", "id map",
           "arrays B/sensor", "peak growth", "process RSS", "fill readings/s", "last pass readings/s"]


def _mib(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x / GiB:,.2f} GiB" if x >= GiB else f"{x / 2**20:,.1f} MiB"


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def table_rows(results: dict) -> list[list[str]]:
    rows = []
    for f in results["fleets"]:
        if "failed" in f:
            rows.append([f"{f['sensors']:,}", f"failed: {f['failed']}"] + [""] * (len(HEADERS) - 2))
            continue
        rows.append([
            f"{f['sensors']:,}",
            _mib(f["rss_growth_bytes"]),
            f"{f['rss_bytes_per_sensor']:,.0f}",
            _fmt(f.get("trimmed_bytes_per_sensor")),
            str(f["pool_bytes_per_sensor"]),
            _mib(f["pool_nbytes"]),
            _mib(f["id_map_nbytes"]),
            f"{f['arrays_bytes_per_sensor']:,.0f}",
            _mib(f["peak_growth_bytes"]),
            _mib(f["rss_after_bytes"]),
            f"{f['fill_readings_per_s']:,.0f}",
            f"{f['last_pass_readings_per_s']:,.0f}",
        ])
    return rows


def _verdict(x: float | None, limit: float) -> str:
    return "n/a" if x is None else "met" if x <= limit else "NOT met"


def notes(results: dict) -> list[str]:
    m, t = results["model"], results["targets"]
    out = [
        "RSS growth = VmRSS after filling the detector − VmRSS just before creating it (model loaded, imports and "
        "a warm-up batch done, heap trimmed); RSS B/sensor = growth ÷ sensors. Trimmed B/sensor = the same after "
        "`malloc_trim(0)` has handed the heap's freed batch temporaries back to the OS: what the detector holds. "
        "Peak growth = VmHWM − that baseline (growing the pool copies its arrays, so old and new blocks coexist "
        "for a moment). Process RSS = the whole process after filling (Python, torch and the model included).",
        "pool B/sensor = `engine.pool.bytes_per_sensor` (array arithmetic: state blocks + slot bookkeeping); "
        "pool arrays = `pool.nbytes` (all allocated slots); id map = the id → slot hash table (64-bit hashes and "
        "slots, no id strings); arrays B/sensor = (pool arrays + id map) ÷ sensors.",
        f"Readings/s: wall clock of `score_arrays` over the whole fill ({results['settings']['readings_per_sensor']} "
        "readings per sensor, first sight of every sensor included) and over its last pass only (every sensor "
        "known); fill figures on a shared machine, not the engine's steady-state throughput "
        "(benchmarks/engine.py measures that).",
    ]
    ok = [f for f in results["fleets"] if "failed" not in f]
    if ok and m.get("hidden_size") == 64 and m.get("layers") == 1:
        # Judged at the largest fleet: at small ones the batches' working memory (a fixed amount) dominates.
        f, limit = max(ok, key=lambda f: f["sensors"]), t["rss_bytes_per_sensor"]
        out.append(
            f"Target ≤ {limit} B/sensor by RSS at H = 64, at {f['sensors']:,} sensors: RSS "
            f"{f['rss_bytes_per_sensor']:,.0f} B ({_verdict(f['rss_bytes_per_sensor'], limit)}), trimmed "
            f"{_fmt(f.get('trimmed_bytes_per_sensor'))} B ({_verdict(f.get('trimmed_bytes_per_sensor'), limit)}), "
            f"arrays {f['arrays_bytes_per_sensor']:,.0f} B ({_verdict(f['arrays_bytes_per_sensor'], limit)})."
        )
    at = [f for f in ok if f["sensors"] == t["total_at_sensors"]]
    if at:
        f, limit = at[0], t["total_bytes"]
        out.append(
            f"Target {f['sensors']:,} sensors in ≤ {limit / GiB:g} GiB: RSS growth {_mib(f['rss_growth_bytes'])} "
            f"({_verdict(f['rss_growth_bytes'], limit)}), trimmed {_mib(f.get('trimmed_growth_bytes'))} "
            f"({_verdict(f.get('trimmed_growth_bytes'), limit)}), whole process {_mib(f['rss_after_bytes'])} "
            f"({_verdict(f['rss_after_bytes'], limit)})."
        )
    return out


def print_table(results: dict) -> None:
    m = results["model"]
    title = f"Memory per sensor ({m['model']}, GRU {m['layers']}x{m['hidden_size']}, univariate)"
    report.print_table(title, HEADERS, table_rows(results), notes(results), width=160)


def markdown(results: dict) -> str:
    m, model, s = results["machine"], results["model"], results["settings"]
    lines = [
        "# Memory per sensor",
        "",
        f"- Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs, {m['memory_bytes'] / GiB:.0f} GiB, load average "
        f"at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('load_average_at_end', []))}); Python {m['python']}, "
        f"torch {model['torch']}, numpy {model['numpy']}",
        f"- Date: {m['date']}",
        f"- Model: {model['model']} (GRU {model['layers']}×{model['hidden_size']}, {model['state_size']} floats of "
        "hidden state per sensor, univariate sensors)",
        f"- Reproduce: `{results['command']}`",
        f"- Each fleet size in a fresh process; every sensor gets {s['readings_per_sensor']} readings in batches of "
        f"up to {s['batch']:,} distinct sensors; ids `sensor-0000123` made per batch (the engine keeps no id strings).",
        "",
        *report.table_and_notes(HEADERS, table_rows(results), notes(results)),
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Path:
    """Bytes per sensor and total GiB against fleet size (log x), with the issue's targets."""
    ok = [f for f in results["fleets"] if "failed" not in f]
    n = [f["sensors"] for f in ok]
    model, m, t = results["model"], results["machine"], results["targets"]
    trimmed = all(f.get("trimmed_growth_bytes") is not None for f in ok)
    per_sensor = [Line("RSS growth ÷ sensors", n, [f["rss_bytes_per_sensor"] for f in ok])]
    total = [Line("RSS growth", n, [f["rss_growth_bytes"] / GiB for f in ok])]
    if trimmed:
        per_sensor.append(Line("same, after malloc_trim", n, [f["trimmed_bytes_per_sensor"] for f in ok]))
        total.append(Line("RSS growth after malloc_trim", n, [f["trimmed_growth_bytes"] / GiB for f in ok]))
    per_sensor.append(Line("arrays (pool + id map) ÷ sensors", n, [f["arrays_bytes_per_sensor"] for f in ok],
                           {"linestyle": "--"}))
    total.append(Line("whole process RSS", n, [f["rss_after_bytes"] / GiB for f in ok], {"linestyle": "--"}))
    panels = [
        Panel("bytes per sensor", "sensors held", "bytes per sensor", per_sensor, logy=True,
              hlines={f"target {t['rss_bytes_per_sensor']} B": t["rss_bytes_per_sensor"]}),
        Panel("total memory", "sensors held", "GiB", total, logy=True,
              hlines={f"target {t['total_bytes'] / GiB:g} GiB": t["total_bytes"] / GiB}),
    ]
    note = (f"{model['model']}, GRU {model['layers']}x{model['hidden_size']}, univariate, batches of "
            f"{results['settings']['batch']:,}; each size in a fresh process; {m['cpu']}, {m['date'][:10]}")
    return save_panels(path, "Memory vs sensors", panels, note)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "memory.md").write_text(markdown(results))
    plot(results, out / "memory.png")
    print(f"wrote {out / 'memory.json'}, {out / 'memory.md'} and {out / 'memory.png'}")


# -- CLI --------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sensors", type=_ints, default=None, help="fleet sizes, e.g. 1e3,1e4,1e5,1e6,1e7 (default)")
    p.add_argument("--model", default="untrained",
                   help="'untrained' (default: a fresh GRU of --hidden/--layers) or a shipped model name or directory")
    p.add_argument("--hidden", type=int, default=64, help="hidden size of the untrained GRU (default 64)")
    p.add_argument("--layers", type=int, default=1, help="layers of the untrained GRU (default 1)")
    p.add_argument("--readings", type=int, default=3, help="readings per sensor (default 3)")
    p.add_argument("--state-dtype", choices=["float32", "float16"], default="float32",
                   help="DetectorConfig.state_dtype: how the network state is stored (default float32)")
    p.add_argument("--batch", type=int, default=65_536, help="sensors per batch (default 65536)")
    p.add_argument("--quick", action="store_true", help="smoke run: fleets of 1e3 and 1e4, writes to a temp dir")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results directory (default {RESULTS}; with --quick a temporary directory)")
    p.add_argument("--plot-only", action="store_true",
                   help="measure nothing: redraw memory.png from the memory.json in --out (default results/)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # internal: measure one fleet, print JSON
    args = p.parse_args(argv)
    if args.quick:
        args.sensors = args.sensors or [1_000, 10_000]
    args.sensors = args.sensors or DEFAULT_SENSORS
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="memory-bench-")) if args.quick and not args.plot_only else RESULTS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure_fleet(args.child, args.model, args.hidden, args.layers, args.readings, args.batch,
                                       args.state_dtype)))
        return 0
    if args.plot_only:
        print(f"wrote {plot(json.loads((args.out / 'memory.json').read_text()), args.out / 'memory.png')}")
        return 0
    started = time.perf_counter()
    results = run(args)
    results["wall_seconds"] = time.perf_counter() - started
    print_table(results)
    write(results, args.out)
    print(f"total {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
