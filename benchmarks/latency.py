"""Produce→score latency of the service against the offered rate, and the batching settings that move it.

Every measurement is kafka_e2e.py's phase (b), on fresh topics and a fresh consumer group: the
`ScoringService` runs in this process, a separate load process offers R readings/s (one reading per
message, 1,000 sensors, 4 partitions) for D seconds paced against the wall clock and reads the scores
topic; latency = score received − reading sent, the first 2 s left out. Three parts, one run:

- **curve**: the service's defaults at each offered rate of `--rates`: p50/p90/p99/max and the rate
  the load process achieved (it shares the cores with the broker and the service, so at high rates
  it falls short of the offer: the achieved column says what was measured);
- **learning**: the same curve with `learning = "online"` (the shared weights learning from the stream on
  the engine's thread), each rate run right after its defaults run (`--no-learning`: skip it);
- **delays**: at each rate of `--delay-rates`, `max_batch_delay_ms` = each of `--delays` with pipelining
  on, then `pipelining = false` (which never polls with a batch in flight, so no delay applies), all of
  them once per round for `--rounds` interleaved rounds; the table gives each setting's median over the
  rounds and each round's p99 (the spread between runs on a shared machine is large).

    .venv/bin/python benchmarks/latency.py            # ~10 min; writes benchmarks/results/latency.{json,md,png}
    .venv/bin/python benchmarks/latency.py --quick    # ~1 min smoke run, writes to a temporary directory
    .venv/bin/python benchmarks/latency.py --rates 10000 --delays 0,5 --duration 20 --bootstrap 127.0.0.1:9092
    .venv/bin/python benchmarks/latency.py --profile --rates 10000 --duration 20   # cProfile of the service
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import kafka_e2e  # noqa: E402 - sets the BLAS thread variables before numpy loads
from benchmarks.plots import Line, Panel, save_panels  # noqa: E402

import numpy as np  # noqa: E402

TARGET_P99_MS = 50.0  # issue 19: p99 <= 50 ms at 10 k readings/s offered, one reading per message
FIGURES = ("p50_ms", "p90_ms", "p99_ms", "max_ms")


def measure(bootstrap: str, args: argparse.Namespace, model, rate: float, **settings: object) -> dict:
    """One phase-(b) run of kafka_e2e.py at `rate` with these service `settings`; prints its line."""
    run = argparse.Namespace(**{**vars(args), "rate": rate})
    shown = " ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
    print(f"  {rate:>8,.0f} readings/s, {shown}: ", end="", flush=True)
    res = asyncio.run(kafka_e2e.latency(bootstrap, run, model, **settings))
    print(f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, achieved {res['achieved_rate']:,.0f}/s, "
          f"mean batch {res['mean_batch']:.0f}, {res['missing']} unmatched", flush=True)
    return res


def behind(r: dict) -> bool:
    """The load process fell short of the offer by over 5 %, or readings had no score 30 s after the last send."""
    return bool(r["missing"]) or r["achieved_rate"] < 0.95 * r["rate"]


def run_all(bootstrap: str, args: argparse.Namespace, model) -> dict:
    print(f"curve: the service's defaults at {len(args.rates)} offered rates, {args.duration:g} s each", flush=True)
    curve, learning = [], []
    for rate in args.rates:
        curve.append(measure(bootstrap, args, model, rate))
        if args.learning:
            learning.append(measure(bootstrap, args, model, rate, learning="online"))
    runs = []
    if args.delays:
        print(f"delays: max_batch_delay_ms in {args.delays} with pipelining on, then pipelining off, at "
              f"{args.delay_rates} readings/s; {args.rounds} round(s)", flush=True)
    for i in range(args.rounds if args.delays else 0):
        for rate in args.delay_rates:
            for d in args.delays:
                runs.append({**measure(bootstrap, args, model, rate, max_batch_delay_ms=d, pipelining=True), "round": i})
            runs.append({**measure(bootstrap, args, model, rate, pipelining=False), "round": i})
    summary = summarise(runs)
    heavy = [r for r in summary if r["pipelining"] and r["rate"] == max(args.delay_rates)]
    chosen = min(heavy, key=lambda r: r["p99_ms"])["max_batch_delay_ms"] if heavy else None
    return {"curve": curve, "learning_curve": learning, "runs": runs, "delays": summary,
            "lowest_p99_delay_ms": chosen, "rounds": args.rounds}


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (rate, pipelining, delay): the median over the rounds of each figure, and each round's p99."""
    rows = []
    for key in dict.fromkeys((r["rate"], r["pipelining"], r["max_batch_delay_ms"]) for r in runs):
        same = [r for r in runs if (r["rate"], r["pipelining"], r["max_batch_delay_ms"]) == key]
        row = {k: same[0][k] for k in ("rate", "pipelining", "max_batch_delay_ms")}
        for k in (*FIGURES, "achieved_rate", "mean_batch"):
            row[k] = float(np.median([r[k] for r in same if r[k] is not None]))
        row.update(measured=sum(r["measured"] for r in same), missing=sum(r["missing"] for r in same),
                   p99_each=[r["p99_ms"] for r in same])
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- report


def _ms(r: dict, key: str) -> str:
    return "–" if r[key] is None else f"{r[key]:.1f}"


def _row(r: dict, first: str) -> str:
    note = " (behind)" if behind(r) else ""
    each = f" | {' / '.join(f'{x:.0f}' for x in r['p99_each'])}" if "p99_each" in r else ""
    return (f"| {first} | {r['achieved_rate']:,.0f}{note} | " + " | ".join(_ms(r, k) for k in FIGURES)
            + f" | {r['mean_batch']:.0f} | {r['measured']:,}{each} |")


HEADER = "achieved readings/s | p50 ms | p90 ms | p99 ms | max ms | mean batch | readings measured |"


def _rule(columns: int) -> str:
    return "|" + "---:|" * columns


def markdown(res: dict) -> str:
    m = res["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
    lines = [
        "# Latency against offered rate",
        "",
        (f"- Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs, shared by the broker, the service and the load "
         f"generator, and by other people's jobs; load average at start {load}); Python {m['python']}, torch "
         f"{m['torch']} (1 thread), aiokafka {m['aiokafka']}; Kafka {m['kafka']} single node (KRaft) from "
         "scripts/kafka.sh on 127.0.0.1"),
        f"- Date: {m['date']}",
        f"- Model: {res['model']}",
        f"- Reproduce: `{res['command']}`",
        (f"- Each run: {res['duration']:g} s offered, one reading per message, {res['sensors']:,} sensors on "
         f"{res['partitions']} partitions, at-least-once with checkpoints, fresh topics and group; latency = score "
         "received − reading sent (kafka_e2e.py phase (b)), first 2 s left out. *(behind)*: the load process "
         "achieved under 95 % of the offer, or some readings had no score 30 s after the last send."),
        "",
    ]
    if res["curve"]:
        c = res["curve"][0]
        lines += [(f"## Service defaults (max_batch_delay_ms {c['max_batch_delay_ms']}, pipelining "
                   f"{'on' if c['pipelining'] else 'off'}, max_batch {c['max_batch']}), one run per rate"), "",
                  "| offered readings/s | " + HEADER, _rule(8)]
        lines += [_row(r, f"{r['rate']:,.0f}") for r in res["curve"]]
        lines.append("")
    if res["learning_curve"]:
        lines += ['## The same with `learning = "online"`, each rate run right after its defaults run', "",
                  "| offered readings/s | " + HEADER + " p99 with learning off |", _rule(9)]
        off = {r["rate"]: r["p99_ms"] for r in res["curve"]}
        lines += [_row(r, f"{r['rate']:,.0f}") + f" {off[r['rate']]:.1f} |" for r in res["learning_curve"]]
        lines.append("")
    if res["delays"]:
        lines += [f"## max_batch_delay_ms and pipelining: median of {res['rounds']} interleaved round(s)", "",
                  ("Each round runs every setting below once, in this order (pipelining off never polls with a "
                   "batch in flight, so the delay does not apply to it)."), "",
                  "| offered readings/s | pipelining | max_batch_delay_ms | " + HEADER + " p99 of each round |",
                  _rule(11)]
        lines += [_row(r, f"{r['rate']:,.0f} | {'on' if r['pipelining'] else 'off'} | "
                          f"{r['max_batch_delay_ms'] if r['pipelining'] else '–'}") for r in res["delays"]]
        lines += ["", f"Lowest median p99 at the heaviest rate, pipelining on: **{res['lowest_p99_delay_ms']} ms**.",
                  ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    panels = []
    styles = {"p50_ms": {}, "p90_ms": {"linestyle": "--"}, "p99_ms": {"linewidth": 2.2}, "max_ms": {"linestyle": ":"}}
    if res["curve"]:
        c, learning = res["curve"], res.get("learning_curve", [])
        panels.append(Panel("latency against offered rate (service defaults)", "offered readings/s", "ms",
                            [Line(k.removesuffix("_ms"), [r["rate"] for r in c], [r[k] for r in c], styles[k])
                             for k in FIGURES]
                            + [Line(f"{k.removesuffix('_ms')}, learning online", [r["rate"] for r in learning],
                                    [r[k] for r in learning], {**styles[k], "color": "tab:red"})
                               for k in ("p50_ms", "p99_ms") if learning],
                            logy=True, hlines={"target p99 at 10k/s: 50 ms": TARGET_P99_MS}))
        panels.append(Panel("achieved against offered", "offered readings/s", "achieved readings/s",
                            [Line("achieved", [r["rate"] for r in c], [r["achieved_rate"] for r in c]),
                             Line("offered", [r["rate"] for r in c], [r["rate"] for r in c],
                                  {"linestyle": ":", "color": "grey"})], logy=True))
    on = [r for r in res["delays"] if r["pipelining"]]
    if on:
        lines = []
        for rate in sorted({r["rate"] for r in on}):
            rows = [r for r in on if r["rate"] == rate]
            for k in ("p50_ms", "p99_ms"):
                lines.append(Line(f"{k.removesuffix('_ms')} at {rate:,.0f}/s", [r["max_batch_delay_ms"] for r in rows],
                                  [r[k] for r in rows], styles[k]))
        off = {f"p99, pipelining off, at {r['rate']:,.0f}/s": r["p99_ms"] for r in res["delays"] if not r["pipelining"]}
        panels.append(Panel(f"max_batch_delay_ms, pipelining on (median of {res['rounds']})", "max_batch_delay_ms",
                            "ms", lines, logx=False, logy=True, hlines=off))
    m = res["machine"]
    return save_panels(path, "hiddenstate serve: produce → score latency, one reading per message", panels,
                       note=f"{res['model']}; {m['cpu']}, {m['logical_cpus']} logical CPUs shared with the broker, "
                            f"the load generator and other jobs; {m['date']}")


def _numbers(text: str, kind=float) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~1 min smoke run; writes to a temporary directory")
    p.add_argument("--rates", default=None, help="offered readings/s of the curve, comma-separated "
                                                 "(default 1000,2000,5000,10000,20000,50000; quick 1000,2000; "
                                                 "empty: no curve)")
    p.add_argument("--delays", default=None, help="max_batch_delay_ms values compared (default 0,2,5,10,20; quick "
                                                  "0,5; empty: no comparison)")
    p.add_argument("--delay-rates", default=None, help="offered rates of the comparison (default 1000,10000; "
                                                       "quick 1000)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the comparison (default 2; quick 1)")
    p.add_argument("--no-learning", dest="learning", action="store_false",
                   help="leave out the curve with learning = online")
    p.add_argument("--profile", action="store_true", help="instead: one run at the first of --rates under cProfile, "
                                                          "print the service process's top functions")
    p.add_argument("--duration", type=float, default=None, help="seconds offered per row (default 10; quick 3)")
    p.add_argument("--sensors", type=int, default=1000, help="sensors (default 1000)")
    p.add_argument("--partitions", type=int, default=4, help="input (and scores) partitions (default 4)")
    p.add_argument("--max-batch", type=int, default=None, help="service max_batch (default: the service's)")
    kafka_e2e.add_run_arguments(p, port=29492, timeout_help="unused (each row's drain is bounded at 30 s)")
    args = p.parse_args(argv)
    quick = args.quick
    args.rates = _numbers(args.rates if args.rates is not None else
                          "1000,2000" if quick else "1000,2000,5000,10000,20000,50000")
    args.delays = _numbers(args.delays if args.delays is not None else "0,5" if quick else "0,2,5,10,20", int)
    args.delay_rates = _numbers(args.delay_rates if args.delay_rates is not None else
                                "1000" if quick else "1000,10000")
    if args.duration is None:
        args.duration = 3.0 if quick else 10.0
    if args.rounds is None:
        args.rounds = 1 if quick else 2
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="latency-")) if quick else kafka_e2e.RESULTS
    # what kafka_e2e.service_config reads: one reading per message, one score record per reading
    args.batch_per_message, args.score_records = 1, "per_reading"
    return args


def profile(bootstrap: str, args: argparse.Namespace, model) -> None:
    """One run at the first of `--rates` under cProfile (this process: the service's event loop; the engine step
    runs in a worker thread, which cProfile does not see), the top functions by own time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    measure(bootstrap, args, model, args.rates[0])
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = kafka_e2e.prepare_run(args.model)
    if args.profile:
        with kafka_e2e.broker_for(args) as bootstrap:
            profile(bootstrap, args, model)
        return 0
    info = kafka_e2e.machine_info()
    with kafka_e2e.broker_for(args) as bootstrap:
        res = run_all(bootstrap, args, model)
    res.update(machine=info, model=model.model_id, command=kafka_e2e.command_line("latency.py", argv),
               duration=args.duration, sensors=args.sensors, partitions=args.partitions)
    kafka_e2e.write_results(args.out, "latency", res, markdown(res))
    print(f"wrote {plot(res, args.out / 'latency.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
