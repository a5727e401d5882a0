"""The benchmark scripts run end to end and their PNGs are drawn from their JSON (no figures asserted)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kafka_broker import kafka_bootstrap  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def test_memory_benchmark_smoke_run_writes_table_json_markdown_and_plot(tmp_path):
    cmd = [sys.executable, str(BENCH / "memory.py"), "--quick", "--sensors", "1000", "--batch", "500",
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    fleet = json.loads((tmp_path / "memory.json").read_text())["fleets"][0]
    assert fleet["sensors"] == fleet["held"] == 1000 and fleet["rejected"] == 0
    assert fleet["fill_readings"] == 3000 and fleet["pool_bytes_per_sensor"] > 0
    assert "| 1,000 |" in (tmp_path / "memory.md").read_text()
    assert (tmp_path / "memory.png").read_bytes()[:4] == b"\x89PNG"


def test_engine_plot_only_redraws_the_png_from_the_json(tmp_path):
    shutil.copy(BENCH / "results" / "engine.json", tmp_path / "engine.json")
    cmd = [sys.executable, str(BENCH / "engine.py"), "--plot-only", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "engine.png").read_bytes()[:4] == b"\x89PNG"


def test_fastpath_benchmark_smoke_run_times_each_path(tmp_path):
    cmd = [sys.executable, str(BENCH / "fastpath.py"), "--quick", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    cells = json.loads((tmp_path / "fastpath.json").read_text())["cells"]
    assert [c["batch"] for c in cells] == [1, 64]
    assert all(c["fast_us_per_reading"] > 0 and c["hybrid_us_per_reading"] > 0 and c["batched_us_per_reading"] > 0
               for c in cells)
    assert "| 1 |" in (tmp_path / "fastpath.md").read_text()


def test_models_benchmark_smoke_run_covers_a_forecaster_and_a_look_ahead_model(tmp_path):
    cmd = [sys.executable, str(BENCH / "models.py"), "--models", "gru-default,bidir-default", "--seconds", "0.05",
           "--sensors", "40", "--steps", "120", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    rows = {r["model"]: r for r in json.loads((tmp_path / "models.json").read_text())["models"]}
    assert rows["bidir-default"]["lookahead"] == 4 and rows["gru-default"]["lookahead"] == 0
    assert all(r["readings_per_s_4096"] > 0 and r["mse"] < r["persistence_mse"] for r in rows.values())
    assert "| `bidir-default` |" in (tmp_path / "models.md").read_text()


def test_service_phases_covers_each_input_format(tmp_path):
    cmd = [sys.executable, str(BENCH / "service_phases.py"), "--readings", "20000", "--sensors", "100",
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    rows = {r["format"]: r for r in json.loads((tmp_path / "service_phases.json").read_text())["formats"]}
    assert set(rows) == {"single", "envelope", "columnar"}
    for r in rows.values():
        assert r["readings"] > 0 and r["total_us"] == pytest.approx(r["decode_us"] + r["engine_us"] + r["outputs_us"])
    # one score record per reading, except for columnar batches with per-message records (100 readings each)
    assert rows["single"]["score_records_written"] == rows["envelope"]["score_records_written"] == 20000
    assert rows["columnar"]["score_records_written"] == 20000 // 100
    assert "| columnar | 100 |" in (tmp_path / "service_phases.md").read_text()


def test_chaos_schedule_is_seeded_and_its_counts_find_missing_and_duplicates():
    """benchmarks/chaos.py without a broker (a run needs its own, minutes): `--help`, the seeded fault schedule,
    and the counting of its table."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import chaos

    done = subprocess.run([sys.executable, str(BENCH / "chaos.py"), "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and "--kills" in done.stdout and "--seed" in done.stdout, done.stderr
    faults = chaos.schedule(seed=3, kills=4, duration=100)
    assert faults == chaos.schedule(seed=3, kills=4, duration=100)
    kinds = [f.kind for f in faults]
    assert sorted(kinds) == ["broker", "in_transaction", "in_transaction", "join", "leave", "outside", "outside"]
    assert kinds.index("join") < kinds.index("leave")
    for i, kind in enumerate(kinds):  # an in-transaction kill's process is armed at its start: a kill or the start before
        if kind == "in_transaction":
            assert i == 0 or kinds[i - 1] in ("outside", "in_transaction")
            assert faults[i].crash_at.split(":")[0] in chaos.CRASH_POINTS
    assert [f.at for f in faults] == sorted(f.at for f in faults) and 0 < faults[0].at and faults[-1].at < 100
    counts = chaos.count_outputs({0: 3, 1: 2}, scores=[(0, 0, -1), (0, 0, -1), (0, 2, -1), (1, 0, -1)],
                                 dead=[(1, 1, -1)], alerts=[("a@1", "raise"), ("a@1", "raise"), ("a@1", "clear")],
                                 reasons=["duplicate"])
    assert counts["inputs"] == 5 and counts["distinct_scored"] == 3 and counts["missing"] == 1  # (0, 1)
    assert counts["duplicate_scores"] == 1 and counts["episodes"] == 1
    assert counts["duplicate_raises"] == 1 and counts["duplicate_clears"] == 0
    assert counts["dead_letter_reasons"] == {"duplicate": 1}


def test_latency_benchmark_smoke_run_measures_each_setting_it_names(request, tmp_path):
    """benchmarks/latency.py on the test broker: one rate of the curve, two delays and pipelining off."""
    bootstrap = request.getfixturevalue("kafka_bootstrap")  # skips (or fails) without a broker, as Kafka tests do
    cmd = [sys.executable, str(BENCH / "latency.py"), "--quick", "--rates", "1000", "--delays", "0,5",
           "--delay-rates", "1000", "--bootstrap", bootstrap, "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    res = json.loads((tmp_path / "latency.json").read_text())
    (point,) = res["curve"]
    assert point["rate"] == 1000 and point["pipelining"] is True and point["learning"] == "off"
    (learning,) = res["learning_curve"]
    assert learning["rate"] == 1000 and learning["learning"] == "online"
    settings = [(r["pipelining"], r["max_batch_delay_ms"]) for r in res["runs"]]
    assert settings == [(True, 0), (True, 5), (False, point["max_batch_delay_ms"])]  # the service ran with each
    for r in [point, learning, *res["runs"]]:
        assert r["missing"] == 0 and r["measured"] > 0, r
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert len(res["delays"]) == 3 and res["lowest_p99_delay_ms"] in (0, 5)
    text = (tmp_path / "latency.md").read_text()
    assert "| 1,000 | off | – |" in text and f"| 1,000 | {point['achieved_rate']:,.0f}" in text
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_transport_benchmark_smoke_run_measures_each_client_it_has(request, tmp_path):
    """benchmarks/transport.py on the test broker: every row it reports moved all its messages (confluent-kafka's
    rows only where that optional client is installed)."""
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    cmd = [sys.executable, str(BENCH / "transport.py"), "--quick", "--messages", "3000", "--bootstrap", bootstrap,
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    res = json.loads((tmp_path / "transport.json").read_text())
    clients = ["aiokafka"] + (["confluent-kafka"] if importlib.util.find_spec("confluent_kafka") else [])
    measures = [row["measure"] for row in res["rows"]]
    for kind in ("produce", "consume", "relay"):
        assert {c for c in clients if any(m.startswith(f"{kind}: {c}") for m in measures)} == set(clients), measures
    assert "produce: aiokafka, record batches (the service's Delivery)" in measures
    for row in res["rows"]:
        assert res["messages"] == 3000 and len(row["runs_per_s"]) == 1 and row["median_per_s"] > 0, row
    assert "| relay: aiokafka |" in (tmp_path / "transport.md").read_text()
