"""Throughput of the full scoring engine, against River's HalfSpaceTrees and a bare GRU cell.

Measures readings/s of `Detector.score_arrays` (= `Engine.step`: validation, slot lookup,
normalisation, network step, calibration, threshold, alert hysteresis, state scatter) for every
(fleet size, batch size) cell, with one torch thread. Every batch takes the engine's fused path (`detector.fastpath`), as
by default: with its own network cell up to `FAST_MAX_BATCH` readings, torch's above; benchmarks/fastpath.py
times the paths side by side. In the same run it measures

- River `preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees()` (defaults), score_one +
  learn_one per reading, ONE model for the whole stream: River keeps no per-sensor state, so a
  single model over the interleaved stream is what a River user would run;
- a "bare cell": `torch.nn.GRUCell(2, H)` (one per layer) + `Linear(H, 2)` stepped over a
  [sensors, state] tensor with `index_select` / `index_copy_`: the floor a batched
  recurrent scorer cannot beat, so engine/bare shows the price of everything around the network.

Stream: sensors cycle through the fleet (position p is sensor p % N, its (p // N)-th reading);
batch b holds b consecutive positions, i.e. b distinct sensors (cells with b > N are skipped);
values are a per-sensor sine with its own offset, scale and period plus table noise with rare
spikes. Batches are generated in chunks outside the timed region; each cell is warmed up, then
timed for about `--seconds` in ~50 ms chunks (engine and bare-cell chunks alternate; the median
chunk rate is reported). Each fleet is first filled, untimed, until every sensor has seen
calibration.MIN_READINGS + 2 readings (>= 100k readings in all), so timed cells measure the steady
state (every reading scored and calibrated), not first sight of a sensor.

    .venv/bin/python benchmarks/engine.py            # full run (< ~5 min), writes results/engine.{json,md,png}
    .venv/bin/python benchmarks/engine.py --quick    # CI smoke run, a few seconds, writes to a temp dir
    .venv/bin/python benchmarks/engine.py --profile 1,4096 --sensors 100000   # cProfile hot spots only
    .venv/bin/python benchmarks/engine.py --plot-only  # redraw results/engine.png from results/engine.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detector import Detector  # noqa: E402
from detector.scoring import calibration  # noqa: E402
from detector.errors import ModelError  # noqa: E402
from detector.model.store import Model, load_model, untrained  # noqa: E402
import machine  # noqa: E402  (benchmarks/machine.py, next to this script)
from plots import Line, Panel, save_panels  # noqa: E402  (benchmarks/plots.py)
import report  # noqa: E402  (benchmarks/report.py)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SENSORS = [1_000, 10_000, 100_000, 1_000_000]
DEFAULT_BATCHES = [1, 16, 64, 256, 1024, 4096]
START_TS = 1.7e9
INTERVAL = 1.0
CHUNK_SECONDS = 0.05  # timed work per generated chunk of batches
FILL_READINGS = 100_000  # a fleet is filled with at least this many readings before timing


# -- the synthetic stream ------------------------------------------------------------------------


class Stream:
    """Readings of a fleet of `n` univariate sensors, cycling through the fleet in time order.

    shuffle: visit the fleet in a fresh random order on every pass, so a batch's slots are scattered
    over the pool (as with real interleaved traffic) instead of consecutive; a batch that straddles
    two passes may then hold a sensor twice (the engine steps it in two waves).
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = False) -> None:
        rng = np.random.default_rng(seed)
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._perms: dict[int, np.ndarray] = {}
        self.ids = [f"sensor-{i:07d}" for i in range(n)]
        self.offset = rng.uniform(-1e3, 1e3, n)
        self.scale = 10.0 ** rng.uniform(-2, 3, n)
        self.omega = 2 * np.pi / rng.uniform(20, 500, n)
        self.phase = rng.uniform(0, 2 * np.pi, n)
        noise = rng.standard_normal(1 << 16) * 0.1
        spikes = rng.random(noise.size) < 5e-4
        noise[spikes] += rng.choice([-8.0, 8.0], int(spikes.sum()))
        self.noise = noise
        self.jitter = rng.uniform(0, 0.1 * INTERVAL, 1 << 12)
        self.pos = 0

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The next `count` positions: (sensor index, ts, value, network-ready z) arrays."""
        p = np.arange(self.pos, self.pos + count, dtype=np.int64)
        self.pos += count
        s, t = p % self.n, p // self.n
        if self.shuffle:
            for u in np.unique(t).tolist():
                at = t == u
                s[at] = self._perm(u)[s[at]]
        mix = s * 7919 + t * 104729
        ts = START_TS + t * INTERVAL + self.jitter[mix & (self.jitter.size - 1)]
        wave = np.sin(self.omega[s] * t + self.phase[s]) + self.noise[mix & (self.noise.size - 1)]
        return s, ts, self.offset[s] + self.scale[s] * wave, wave

    def _perm(self, u: int) -> np.ndarray:
        if u not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[u] = np.random.default_rng((self.seed, u)).permutation(self.n)
        return self._perms[u]

    def ids_of(self, s: np.ndarray) -> list[str]:
        """Ids of the sensors `s`: consecutive ones (wrapping at n) by list slicing, shuffled ones one by one."""
        if self.shuffle:
            ids = self.ids
            return [ids[i] for i in s.tolist()]
        first, b = int(s[0]), len(s)
        if first + b <= self.n:
            return self.ids[first:first + b]
        return self.ids[first:] + self.ids[: b - (self.n - first)]


# -- timing ---------------------------------------------------------------------------------------


class Runner:
    """Times `call(*args)` over batches from `prepare(k)` (k batches of `batch` readings, built untimed).

    Work is timed in chunks of about CHUNK_SECONDS, on both clocks: wall time and this process's CPU
    time. With one torch thread the two agree on an idle machine; on a shared one the CPU clock does
    not count the time other processes held the core, so it is the default. The reported rate is
    the median of the chunks' rates, so a burst of load moves it little. `probe`, if given, is a
    counter (e.g. the engine's network seconds) whose growth during timed chunks is summed.
    """

    def __init__(
        self,
        prepare: Callable[[int], list[tuple]],
        call: Callable[..., object],
        batch: int,
        probe: Callable[[], float] | None = None,
        clock: str = "cpu",
    ) -> None:
        self.prepare, self.call, self.batch, self.probe, self.clock = prepare, call, batch, probe, clock
        self.k = 4
        self.rates: dict[str, list[float]] = {"cpu": [], "wall": []}
        self.seconds = {"cpu": 0.0, "wall": 0.0}
        self.readings = 0
        self.probed = 0.0

    def _run(self, k: int) -> dict[str, float]:
        args = self.prepare(k)
        before = self.probe() if self.probe else 0.0
        c0, w0 = time.process_time(), time.perf_counter()
        for a in args:
            self.call(*a)
        w1, c1 = time.perf_counter(), time.process_time()
        if self.probe:
            self.probed += self.probe() - before
        return {"cpu": max(c1 - c0, 1e-9), "wall": w1 - w0}

    def warm(self, seconds: float) -> None:
        """Run untimed for about `seconds` (at least one chunk), then size the timed chunks."""
        spent = 0.0
        while True:
            dt = self._run(self.k)[self.clock]
            spent += dt
            if spent >= seconds:
                break
            self.k = min(self.k * 2, 1 << 14)
        self.probed = 0.0  # the probe's share is of timed chunks only
        self.k = int(min(max(CHUNK_SECONDS / (dt / self.k), 1), 1 << 14, max(1, (1 << 22) // self.batch)))

    @property
    def timed(self) -> float:
        """Timed seconds so far on the chosen clock."""
        return self.seconds[self.clock]

    def chunk(self) -> None:
        dt = self._run(self.k)
        self.readings += self.k * self.batch
        for c, v in dt.items():
            self.seconds[c] += v
            self.rates[c].append(self.k * self.batch / v)

    @property
    def rate(self) -> float:
        """Median readings/s over the timed chunks, on the chosen clock."""
        return float(np.median(self.rates[self.clock]))

    def summary(self) -> dict:
        out: dict = {"clock": self.clock, "readings_per_s": self.rate, "us_per_reading": 1e6 / self.rate}
        for c in ("cpu", "wall"):
            p10, p50, p90 = np.percentile(self.rates[c], [10, 50, 90])
            out[c] = {
                "median_readings_per_s": float(p50),
                "p10_readings_per_s": float(p10),
                "p90_readings_per_s": float(p90),
                "mean_readings_per_s": self.readings / self.seconds[c],
                "seconds": self.seconds[c],
            }
        out.update(
            chunks=len(self.rates[self.clock]),
            timed_readings=self.readings,
            cpu_share=self.seconds["cpu"] / self.seconds["wall"],
        )
        return out


def measure(runners: list[Runner], seconds: float, warmup: float) -> None:
    """Warm each runner up, then alternate their chunks until each has `seconds` of timed work.

    Alternating puts the engine and its bare-cell reference under the same machine conditions.
    """
    for r in runners:
        r.warm(warmup)
    while any(r.timed < seconds for r in runners):
        for r in runners:
            if r.timed < seconds:
                r.chunk()


def engine_batches(stream: Stream, batch: int) -> Callable[[int], list[tuple]]:
    def prepare(k: int) -> list[tuple]:
        s, ts, values, _ = stream.take(k * batch)
        values = values[:, None]
        return [
            (stream.ids_of(s[i:i + batch]), ts[i:i + batch], values[i:i + batch])
            for i in range(0, k * batch, batch)
        ]

    return prepare


class BareCell:
    """GRUCell(2, H) per layer + Linear(H, 2) over a state pool: the reference floor."""

    def __init__(self, n: int, hidden: int, layers: int) -> None:
        torch.manual_seed(0)
        self.cells = [torch.nn.GRUCell(2 if i == 0 else hidden, hidden) for i in range(layers)]
        self.head = torch.nn.Linear(hidden, 2)
        self.layers, self.hidden = layers, hidden
        self.pool = torch.zeros(n, layers * hidden)

    @torch.no_grad()
    def step(self, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.pool.index_select(0, idx).view(-1, self.layers, self.hidden)
        new = torch.empty_like(h)
        inp = x
        for i, cell in enumerate(self.cells):
            inp = cell(inp, h[:, i])
            new[:, i] = inp
        out = self.head(inp)
        self.pool.index_copy_(0, idx, new.view(idx.numel(), -1))
        return out


def bare_batches(stream: Stream, batch: int) -> Callable[[int], list[tuple]]:
    def prepare(k: int) -> list[tuple]:
        s, _, _, z = stream.take(k * batch)
        idx = torch.from_numpy(s)
        x = torch.zeros(k * batch, 2)
        x[:, 0] = torch.from_numpy(z.astype(np.float32))
        return [(idx[i:i + batch], x[i:i + batch]) for i in range(0, k * batch, batch)]

    return prepare


def river_rate(stream: Stream, seconds: float, warmup: float, clock: str) -> Runner | None:
    try:
        from river import anomaly, preprocessing
    except ImportError:
        return None
    model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees()

    def prepare(k: int) -> list[tuple]:
        _, _, values, _ = stream.take(k)
        return [({"value": v},) for v in values.tolist()]

    def call(x: dict) -> None:
        model.score_one(x)
        model.learn_one(x)

    runner = Runner(prepare, call, 1, clock=clock)
    measure([runner], seconds, warmup)
    return runner


# -- the run --------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def get_model(name: str) -> tuple[Model, str]:
    try:
        model = load_model(name)
        return model, model.model_id
    except ModelError as exc:
        fallback = untrained(32, 1)
        return fallback, f"untrained (hidden 32, 1 layer; {name!r} not loadable: {exc})"


def make_detector(model: Model, n: int) -> Detector:
    return Detector(model, channels=1, capacity=max(n, 1_000_000))


def fill_passes() -> int:
    """Readings each sensor gets before timing: enough that every timed reading takes the full path
    (scored and calibrated, not just forecast), i.e. past calibration.MIN_READINGS where the engine has it."""
    return int(getattr(calibration, "MIN_READINGS", 1)) + 2


def fill(det: Detector, stream: Stream) -> None:
    """Untimed: every sensor gets `fill_passes()` readings (and the fleet >= FILL_READINGS in all), then one
    reading alone, so the fast path's numba compile (or its load from the on-disk cache) is never timed."""
    batch = min(4096, stream.n)
    total = max(stream.n * fill_passes(), FILL_READINGS)
    prepare = engine_batches(stream, batch)
    done = 0
    while done < total:
        k = max(1, min(64, (total - done) // batch))
        for a in prepare(k):
            det.score_arrays(*a)
        done += k * batch
    det.score_arrays(*engine_batches(stream, 1)(1)[0])  # a small batch: the fast path compiles (or loads) now


def machine_info() -> dict:
    try:
        import river

        river_version = river.__version__
    except ImportError:
        river_version = None
    return machine.machine_info(
        torch=torch.__version__,
        numpy=np.__version__,
        river=river_version,
        torch_threads=torch.get_num_threads(),
        affinity_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    )


def run(args: argparse.Namespace) -> dict:
    model, model_id = get_model(args.model)
    net = model.network
    hidden, layers = net.hidden_size, net.layers
    info = machine_info()
    print(f"model: {model_id}; GRU {layers}x{hidden}; {info['cpu']}; torch {info['torch']}, 1 thread", flush=True)

    river = None
    if not args.no_river:
        river = river_rate(Stream(min(args.sensors), seed=args.seed, shuffle=args.shuffle), args.seconds, args.warmup, args.clock)
        if river is not None:
            print(f"River HST: {river.rate:,.0f} readings/s", flush=True)

    cells: list[dict] = []
    fleets: list[dict] = []
    memory: dict = {}
    mem_fleet = max(args.sensors)
    for n in args.sensors:
        stream = Stream(n, seed=args.seed, shuffle=args.shuffle)
        gc.collect()
        before = rss_bytes()
        det = make_detector(model, n)
        t0 = time.perf_counter()
        fill(det, stream)
        fill_s = time.perf_counter() - t0
        gc.collect()
        after = rss_bytes()
        pool = det.engine.pool
        if n == mem_fleet:
            memory = {
                "sensors": len(pool),
                "allocated_slots": pool.allocated,
                "bytes_per_sensor": pool.bytes_per_sensor,
                "rss_growth_bytes": after - before,
                "rss_growth_per_sensor": (after - before) / len(pool),
                "note": "VmRSS after filling minus before creating the detector; the id strings were "
                "created before, so they are not included (the pool's id map is)",
            }
        live = np.fromiter(map(pool.slot_of, stream.ids), dtype=np.int64, count=n)
        fleets.append({
            "sensors": n,
            "held": len(pool),
            "fill_seconds": fill_s,
            "fill_readings": stream.pos,
            "min_readings_per_sensor_before_timing": int(pool.count[live].min()),
        })
        print(
            f"fleet {n:,}: filled with {stream.pos:,} readings in {fill_s:.1f}s ({len(pool):,} sensors held, "
            f"each seen >= {fleets[-1]['min_readings_per_sensor_before_timing']} times)",
            flush=True,
        )
        bare = BareCell(n, hidden, layers)
        bare_stream = copy.copy(stream)  # same fleet and data, its own position
        for b in args.batches:
            cell = {"sensors": n, "batch": b}
            if b > n:
                cell["skipped"] = "batch larger than fleet: a batch would repeat sensors"
                cells.append(cell)
                continue
            stats = det.engine.stats
            engine = Runner(
                engine_batches(stream, b), det.score_arrays, b, probe=lambda s=stats: s.network_seconds, clock=args.clock
            )
            ref = Runner(bare_batches(bare_stream, b), bare.step, b, clock=args.clock)
            measure([engine, ref], args.seconds, args.warmup)
            e, r = engine.summary(), ref.summary()
            cell.update(
                engine=e,
                bare_cell=r,
                engine_readings_per_s=e["readings_per_s"],
                engine_us_per_reading=e["us_per_reading"],
                network_share=engine.probed / engine.seconds["wall"],  # network_seconds is wall time
                bare_readings_per_s=r["readings_per_s"],
                engine_over_bare=e["readings_per_s"] / r["readings_per_s"],
                engine_over_river=e["readings_per_s"] / river.rate if river else None,
            )
            cells.append(cell)
            print(
                f"  batch {b:>5}: engine {engine.rate:>11,.0f}/s ({1e6 / engine.rate:8.2f} µs/reading, "
                f"network {cell['network_share']:.0%}), bare cell {ref.rate:>12,.0f}/s",
                flush=True,
            )
        st = det.engine.stats
        fleets[-1].update(
            scored=st.scored,
            rejected=sum(st.rejected.values()),
            anomalous=st.anomalous,
            alerts_raised=st.alerts_raised,
            gap_resets=st.gap_resets,
        )
        del det, bare, stream, bare_stream
        gc.collect()

    return {
        "machine": info,
        "command": reproduce_command(),
        "settings": {
            "sensors": args.sensors,
            "batches": args.batches,
            "seconds_per_cell": args.seconds,
            "warmup_seconds": args.warmup,
            "clock": args.clock,
            "shuffle": args.shuffle,
            "quick": args.quick,
        },
        "model": {"id": model_id, "hidden_size": hidden, "layers": layers, "channels": 1},
        "river_hst": (
            {
                **river.summary(),
                "pipeline": "preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees() (defaults)",
                "per_reading": "score_one + learn_one",
                "note": "one model for the whole interleaved stream: River keeps no per-sensor state",
            }
            if river
            else None
        ),
        "bare_cell": f"torch.nn.GRUCell(2, {hidden}) x{layers} + Linear({hidden}, 2), index_select/index_copy_ pool",
        "fleets": fleets,
        "cells": cells,
        "memory": memory,
    }


def reproduce_command() -> str:
    return ".venv/bin/python benchmarks/engine.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])


# -- output ---------------------------------------------------------------------------------------


def _fmt_rate(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×" if x < 1 else f"{x:.1f}×"


def _spread(summary: dict) -> str:
    """Half the p10–p90 range of the chunk rates, relative to the median."""
    chunks = summary[summary["clock"]]
    half = (chunks["p90_readings_per_s"] - chunks["p10_readings_per_s"]) / 2
    return f"±{100 * half / chunks['median_readings_per_s']:.0f}%"


HEADERS = ["sensors", "batch", "engine readings/s", "spread", "µs/reading", "network %", "bare cell readings/s",
           "engine/bare", "engine/River HST", "CPU %"]


def table_rows(results: dict) -> list[list[str]]:
    rows = []
    for c in results["cells"]:
        if "skipped" in c:
            rows.append([f"{c['sensors']:,}", str(c["batch"]), "n/a (batch > fleet)", "", "", "", "", "", "", ""])
            continue
        rows.append([
            f"{c['sensors']:,}",
            str(c["batch"]),
            _fmt_rate(c["engine_readings_per_s"]),
            _spread(c["engine"]),
            _fmt(c["engine_us_per_reading"], ".2f"),
            _fmt(None if c["network_share"] is None else 100 * c["network_share"], ".0f"),
            _fmt_rate(c["bare_readings_per_s"]),
            _fmt(c["engine_over_bare"], ".3f"),
            _ratio(c["engine_over_river"]),
            _fmt(100 * c["engine"]["cpu_share"], ".0f"),
        ])
    return rows


def notes(results: dict) -> list[str]:
    out = []
    r = results["river_hst"]
    if r:
        out.append(
            f"River HST: {r['readings_per_s']:,.0f} readings/s ({r['us_per_reading']:.1f} µs/reading), "
            f"{r['pipeline']}, {r['per_reading']} per reading, {r['note']}."
        )
    m = results["memory"]
    if m:
        out.append(
            f"State: {m['bytes_per_sensor']} bytes/sensor of pool arrays (`engine.pool.bytes_per_sensor`); "
            f"measured RSS growth with {m['sensors']:,} sensors held: {m['rss_growth_bytes'] / 2**20:,.0f} MiB "
            f"= {m['rss_growth_per_sensor']:,.0f} bytes/sensor (state arrays + id map; id strings excluded)."
        )
    out.append(
        f"Readings/s are medians over timed chunks of ~50 ms, on the {results['settings']['clock']} clock "
        "(cpu = this process's CPU time, which does not count time other processes held the core; the JSON has both "
        "clocks); engine and bare-cell chunks alternate, so both see the same machine load. Spread = half the "
        "p10–p90 range of the engine's chunk rates; CPU % = the engine's CPU time ÷ wall time (< 100 = the machine "
        "was shared)."
    )
    out.append(
        "Network % = share of engine time inside `network.step` (the engine's own `stats.network_seconds`; on "
        "the fused path, the fused call and the network step together: the network and the views). "
        f"engine/bare = engine readings/s ÷ bare cell readings/s ({results['bare_cell']})."
    )
    return out


def print_table(results: dict) -> None:
    model = results["model"]
    label = model["id"].split(" (")[0]
    title = f"Engine throughput ({label} GRU {model['layers']}x{model['hidden_size']}, 1 torch thread)"
    report.print_table(title, HEADERS, table_rows(results), notes(results))


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Engine throughput",
        "",
        f"- Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs, load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('load_average_at_end', []))}); Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} thread), numpy {m['numpy']}, river {m['river']}",
        f"- Date: {m['date']}",
        f"- Model: {results['model']['id']} (GRU {results['model']['layers']}×{results['model']['hidden_size']}, "
        "univariate sensors)",
        f"- Reproduce: `{results['command']}`",
        f"- {results['settings']['seconds_per_cell']} s timed per cell after {results['settings']['warmup_seconds']} s "
        "warm-up; batches of b distinct sensors cycling through the fleet"
        + (" in a new random order each pass" if results["settings"]["shuffle"] else " in a fixed order (consecutive slots)")
        + "; data generated outside the timed region; "
        f"each fleet filled first (every sensor >= {min(f['min_readings_per_sensor_before_timing'] for f in results['fleets'])} "
        "readings) so that every timed reading is scored and calibrated.",
        "",
        *report.table_and_notes(HEADERS, table_rows(results), notes(results)),
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Path:
    """readings/s vs batch size: the engine and the bare cell per fleet size (same colour, bare dashed), River HST."""
    lines = []
    for i, n in enumerate(results["settings"]["sensors"]):
        cells = [c for c in results["cells"] if c["sensors"] == n and "skipped" not in c]
        batches = [c["batch"] for c in cells]
        colour = f"C{i}"
        lines.append(Line(f"engine, {n:,} sensors", batches, [c["engine_readings_per_s"] for c in cells],
                          {"color": colour}))
        lines.append(Line(f"bare cell, {n:,} sensors", batches, [c["bare_readings_per_s"] for c in cells],
                          {"color": colour, "linestyle": "--", "alpha": 0.6}))
    river = results["river_hst"]
    model, m = results["model"], results["machine"]
    panel = Panel(
        title="readings/s vs batch size",
        xlabel="batch size (readings per micro-batch)",
        ylabel=f"readings/s ({results['settings']['clock']} clock)",
        lines=lines,
        logy=True,
        hlines={f"River HST ({river['readings_per_s']:,.0f}/s)": river["readings_per_s"]} if river else {},
    )
    note = (f"{model['id'].split(' (')[0]}, GRU {model['layers']}x{model['hidden_size']}, 1 torch thread; "
            f"{m['cpu']}, {m['logical_cpus']} CPUs (shared), {m['date'][:10]}")
    return save_panels(path, "Engine throughput", [panel], note)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "engine.md").write_text(markdown(results))
    plot(results, out / "engine.png")
    print(f"wrote {out / 'engine.json'}, {out / 'engine.md'} and {out / 'engine.png'}")


# -- profiling ------------------------------------------------------------------------------------


def profile(args: argparse.Namespace) -> None:
    """cProfile of Detector.score_arrays at each batch size of --profile, on the largest fleet."""
    model, model_id = get_model(args.model)
    n = max(args.sensors)
    stream = Stream(n, seed=args.seed, shuffle=args.shuffle)
    det = make_detector(model, n)
    fill(det, stream)
    for b in args.profile:
        prepare = engine_batches(stream, b)
        Runner(prepare, det.score_arrays, b).warm(args.warmup)
        batches = prepare(max(8, min(2_000, 200_000 // b)))
        prof = cProfile.Profile()
        prof.enable()
        for a in batches:
            det.score_arrays(*a)
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(args.profile_top)
        print(f"\n=== cProfile: {n:,} sensors, batch {b}, {len(batches)} batches, model {model_id} ===")
        print(text.getvalue())


# -- CLI ------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sensors", type=_ints, default=None, help="fleet sizes, e.g. 1e3,1e4,1e5,1e6 (default)")
    p.add_argument("--batches", type=_ints, default=None, help="batch sizes (default 1,16,64,256,1024,4096)")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per cell (default 2)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per cell (default 0.3)")
    p.add_argument("--quick", action="store_true", help="CI smoke run: small fleets, 3 batch sizes, 0.1 s cells")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="clock for the reported rates: process CPU time (default; robust on a shared machine) or wall")
    p.add_argument("--shuffle", action="store_true",
                   help="visit the fleet in a new random order each pass (scattered slots, like real traffic)")
    p.add_argument("--model", default="gru-default", help="model to time (falls back to an untrained 1x32 GRU)")
    p.add_argument("--no-river", action="store_true", help="skip the River HalfSpaceTrees reference")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results directory (default {RESULTS}; with --quick a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=_ints, default=None, metavar="BATCHES",
                   help="instead of the table, cProfile the engine at these batch sizes on the largest fleet")
    p.add_argument("--profile-top", type=int, default=25, help="functions listed per profile")
    p.add_argument("--plot-only", action="store_true",
                   help="measure nothing: redraw engine.png from the engine.json in --out (default results/)")
    args = p.parse_args(argv)
    if args.quick:
        args.sensors = args.sensors or [1_000, 10_000]
        args.batches = args.batches or [1, 64, 1024]
        args.seconds = 0.1 if args.seconds is None else args.seconds
        args.warmup = 0.05 if args.warmup is None else args.warmup
    args.sensors = args.sensors or DEFAULT_SENSORS
    args.batches = args.batches or DEFAULT_BATCHES
    args.seconds = 2.0 if args.seconds is None else args.seconds
    args.warmup = 0.3 if args.warmup is None else args.warmup
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="engine-bench-")) if args.quick and not args.plot_only else RESULTS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_only:
        print(f"wrote {plot(json.loads((args.out / 'engine.json').read_text()), args.out / 'engine.png')}")
        return 0
    torch.set_num_threads(1)
    if args.profile:
        profile(args)
        return 0
    started = time.perf_counter()
    results = run(args)
    results["wall_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    print_table(results)
    write(results, args.out)
    print(f"total {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
