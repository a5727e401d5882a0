"""End-to-end tests of `hiddenstate replay` and the readers, on small synthetic files.

Most tests use an untrained model saved to a temporary directory (fast, and
independent of the shipped one); the detection test uses the shipped
`gru-default` when it is there.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pytest

from detector.cli import main
from detector.config import DetectorConfig
from detector.errors import InputFileError
from detector.model.store import save_model, shipped_models_dir, untrained
from detector.readings.files import read_readings
from detector.replay import iso_times, replay_files

T0 = 1_700_000_000.0


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained model directory: fast and independent of the shipped model."""
    return str(save_model(untrained(), tmp_path_factory.mktemp("model") / "untrained"))


def detection_model(model_dir: str) -> str:
    """The shipped model if it has been trained, else the untrained one (which also sees a 20-σ shift)."""
    return "gru-default" if (shipped_models_dir() / "gru-default" / "model.json").is_file() else model_dir


def sine(n: int = 600, seed: int = 1, shift_at: tuple[int, int] | None = None) -> np.ndarray:
    """A noisy sine (period 60 rows, noise σ 0.1), optionally shifted by 20 σ over [start, stop)."""
    rng = np.random.default_rng(seed)
    values = np.sin(2 * np.pi * np.arange(n) / 60) + 0.1 * rng.standard_normal(n)
    if shift_at is not None:
        values[shift_at[0]:shift_at[1]] += 2.0
    return values


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None).isoformat()


def write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def two_channel_rows(n: int = 200, seed: int = 0) -> list[list[object]]:
    a, b = sine(n, seed).tolist(), (10 + 3 * sine(n, seed + 1)).tolist()
    return [[iso(T0 + i), a[i], b[i]] for i in range(n)]


def read_scores(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def replay_cli(tmp_path: Path, *args: str) -> tuple[int, Path, Path]:
    out, alerts = tmp_path / "out.scores.csv", tmp_path / "out.alerts.jsonl"
    rc = main(["replay", *args, "--out", str(out), "--alerts", str(alerts), "--no-progress"])
    return rc, out, alerts


def test_cli_writes_a_scores_row_for_every_input_row(tmp_path: Path, model_dir: str) -> None:
    data = write_csv(tmp_path / "pump.csv", ["timestamp", "a", "b"], two_channel_rows(200))
    rc, out, alerts = replay_cli(tmp_path, str(data), "--model", model_dir)
    assert rc == 0
    rows = read_scores(out)
    assert len(rows) == 200
    assert list(rows[0]) == [
        "ts", "sensor_id", "score", "surprise", "anomalous", "alerting", "status", "value_a", "value_b", "expected_a", "expected_b",
    ]
    assert {r["status"] for r in rows} == {"scored"}
    assert {r["sensor_id"] for r in rows} == {"pump"}
    assert rows[0]["expected_a"] == ""  # no forecast before the first reading
    assert all(r["expected_a"] and r["expected_b"] for r in rows[1:])
    assert rows[5]["ts"] == iso(T0 + 5) + "Z"
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert alerts.exists()


def test_level_shift_raises_an_alert_inside_the_anomaly_window(tmp_path: Path, model_dir: str) -> None:
    start, stop = 300, 360
    values = sine(600, seed=1, shift_at=(start, stop))
    data = write_csv(tmp_path / "shift.csv", ["ts", "value"], [[T0 + i, v] for i, v in enumerate(values)])
    rc, out, alerts = replay_cli(tmp_path, str(data), "--model", detection_model(model_dir))
    assert rc == 0
    events = [orjson.loads(line) for line in alerts.read_bytes().splitlines()]
    raises = [e for e in events if e["kind"] == "raise"]
    assert raises, "a 20-sigma level shift raised no alert"
    assert T0 + start <= raises[0]["started"] < T0 + stop
    assert raises[0]["channel"] == "value"
    scores = np.array([float(r["score"]) for r in read_scores(out)])
    assert scores[start:start + 3].min() >= 0.999  # the default threshold
    assert scores[start:start + 10].mean() > scores[100:start].mean() + 0.3


@pytest.mark.parametrize("delimiter", [";", ",", "\t"])
def test_delimiter_is_sniffed(tmp_path: Path, delimiter: str) -> None:
    rows = [[iso(T0 + i), f"{v:.6f}", f"{w:.6f}"] for i, (_, v, w) in enumerate(two_channel_rows(50))]
    path = write_csv(tmp_path / "d.csv", ["datetime", "Pressure", "Volume Flow Rate"], rows, delimiter)
    readings = read_readings(path)
    assert readings.channel_names == ["Pressure", "Volume Flow Rate"]
    assert readings.values.shape == (50, 2)
    assert readings.ts[0] == T0 and readings.ts[-1] == T0 + 49
    np.testing.assert_allclose(readings.values[:, 0], [float(r[1]) for r in rows])


def test_semicolon_and_comma_files_score_the_same(tmp_path: Path, model_dir: str) -> None:
    rows = two_channel_rows(120)
    semi = write_csv(tmp_path / "s.csv", ["datetime", "a", "b"], rows, ";")
    comma = write_csv(tmp_path / "c.csv", ["datetime", "a", "b"], rows, ",")
    config = DetectorConfig(model=model_dir)
    r1, r2 = replay_files([semi], config), replay_files([comma], config)
    np.testing.assert_array_equal(r1.score, r2.score)
    np.testing.assert_array_equal(r1.expected, r2.expected)


def test_json_lines_with_dict_values(tmp_path: Path, model_dir: str) -> None:
    rows = two_channel_rows(120)
    path = tmp_path / "fleet.jsonl"
    path.write_bytes(b"".join(
        orjson.dumps({"sensor_id": "p7", "ts": ts, "values": {"temp": a, "flow": b}}) + b"\n" for ts, a, b in rows
    ))
    readings = read_readings(path)
    assert readings.channel_names == ["temp", "flow"]
    assert set(readings.sensor_ids) == {"p7"}
    assert readings.values.shape == (120, 2)

    as_csv = write_csv(tmp_path / "p7.csv", ["sensor_id", "timestamp", "temp", "flow"], [["p7", *r] for r in rows])
    config = DetectorConfig(model=model_dir)
    from_json, from_csv = replay_files([path], config), replay_files([as_csv], config)
    np.testing.assert_array_equal(from_json.score, from_csv.score)

    rc, out, _ = replay_cli(tmp_path, str(path), "--model", model_dir)
    assert rc == 0
    header = list(read_scores(out)[0])
    assert header[-4:] == ["value_temp", "value_flow", "expected_temp", "expected_flow"]


def test_json_lines_single_value_and_list_values(tmp_path: Path) -> None:
    one = tmp_path / "one.ndjson"
    one.write_text("\n".join(f'{{"ts": {T0 + i}, "value": {i * 0.5}}}' for i in range(5)) + "\n")
    readings = read_readings(one)
    assert readings.channel_names == ["value"] and readings.sensor_ids == ["one"] * 5
    many = tmp_path / "many.jsonl"
    many.write_text("\n".join(f'{{"ts": "{iso(T0 + i)}Z", "values": [{i}, {2 * i}]}}' for i in range(5)) + "\n")
    readings = read_readings(many)
    assert readings.channel_names == ["ch0", "ch1"]
    np.testing.assert_array_equal(readings.ts, T0 + np.arange(5))


def test_interleaved_sensors_match_each_sensor_replayed_alone(tmp_path: Path, model_dir: str) -> None:
    n = 300
    a, b = sine(n, seed=3), 50 + 5 * sine(n, seed=4)
    both = [[iso(T0 + i), "north", a[i]] for i in range(n)]
    both += [[iso(T0 + i + 0.5), "south", b[i]] for i in range(n)]
    both.sort(key=lambda r: r[0])  # interleaved in time
    header = ["time", "site", "level"]
    mixed = write_csv(tmp_path / "mixed.csv", header, both)
    alone = {s: write_csv(tmp_path / f"{s}.csv", header, [r for r in both if r[1] == s]) for s in ("north", "south")}

    config = DetectorConfig(model=model_dir)
    together = replay_files([mixed], config, batch=64, sensor_column="site")
    assert together.sensors() == ["north", "south"]
    for sensor, path in alone.items():
        single = replay_files([path], config, batch=1024, sensor_column="site")
        rows = together.rows_of(sensor)
        assert rows.size == n
        np.testing.assert_allclose(together.score[rows], single.score, atol=1e-5)
        np.testing.assert_allclose(together.expected[rows], single.expected, atol=1e-5)
        np.testing.assert_array_equal(together.alerting[rows], single.alerting)


def test_bad_values_are_rejected_and_do_not_stop_the_file(tmp_path: Path, model_dir: str) -> None:
    rows = two_channel_rows(100)
    rows[40][1] = "oops"
    rows[41][2] = ""
    rows[60][0] = "not a time"
    path = write_csv(tmp_path / "bad.csv", ["timestamp", "a", "b"], rows)
    readings = read_readings(path)
    assert len(readings) == 99
    assert readings.skipped == [(62, "timestamp 'not a time' is neither an ISO 8601 date nor an epoch number")]

    rc, out, _ = replay_cli(tmp_path, str(path), "--model", model_dir)
    assert rc == 0
    scores = read_scores(out)
    assert len(scores) == 99
    assert [r["status"] for r in scores[40:42]] == ["not_finite", "not_finite"]
    assert scores[40]["value_a"] == "" and scores[40]["value_b"] != ""
    assert {r["status"] for r in scores[42:]} == {"scored"}
    assert scores[-1]["ts"] == iso(T0 + 99) + "Z"


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, _ = replay_cli(tmp_path, str(tmp_path / "nope.csv"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "nope.csv" in err and "no such file" in err


def test_file_without_timestamp_column_is_a_clear_error(
    tmp_path: Path, model_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    values = sine(30)
    path = write_csv(tmp_path / "nots.csv", ["pressure", "flow"], [[v, -v] for v in values])
    rc, _, _ = replay_cli(tmp_path, str(path), "--model", model_dir)
    assert rc == 2
    err = capsys.readouterr().err
    assert "no timestamp column" in err and "pressure, flow" in err and "--time-column" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("1.0,2.0\n3.0,4.0\n", "no header row"),
        ("timestamp,name\n2024-01-01T00:00:00,abc\n", "no numeric value columns"),
        ("timestamp,a\n", "header row but no readings"),
        ("timestamp,a\nyesterday,1\n", "no readable rows.*line 2"),
    ],
)
def test_unreadable_files_raise_input_file_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "f.csv"
    path.write_text(content)
    with pytest.raises(InputFileError, match=message):
        read_readings(path)


def test_unknown_column_names_are_reported(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", ["timestamp", "a", "b"], two_channel_rows(5))
    with pytest.raises(InputFileError, match=r"no column 'c'.*timestamp, a, b"):
        read_readings(path, value_columns=["a", "c"])
    with pytest.raises(InputFileError, match="--time-column"):
        read_readings(path, time_column="when")
    assert read_readings(path, value_columns=["b"]).channel_names == ["b"]


def test_labels_are_kept_apart_and_epoch_milliseconds_are_read(tmp_path: Path) -> None:
    rows = [[int((T0 + i) * 1000), math.sin(i), 1.0 if 5 <= i < 8 else 0.0, 0.0] for i in range(10)]
    path = write_csv(tmp_path / "l.csv", ["ts", "value", "anomaly", "changepoint"], rows, ";")
    readings = read_readings(path)
    assert readings.channel_names == ["value"]
    np.testing.assert_array_equal(readings.labels["anomaly"], [0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(readings.ts, T0 + np.arange(10))


def test_time_zones_are_honoured_and_naive_times_are_utc(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "tz.csv", ["timestamp", "v"],
        [["2024-01-01T01:00:00+01:00", 1], ["2024-01-01T00:00:01Z", 2], ["2024-01-01 00:00:02", 3]],
    )
    base = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()
    np.testing.assert_array_equal(read_readings(path).ts, [base, base + 1, base + 2])


def test_unsorted_rows_are_scored_in_time_order(tmp_path: Path, model_dir: str) -> None:
    rows = two_channel_rows(60)
    rows[10], rows[11] = rows[11], rows[10]
    path = write_csv(tmp_path / "u.csv", ["timestamp", "a", "b"], rows)
    result = replay_files([path], DetectorConfig(model=model_dir))
    assert result.reordered == 2
    assert result.scored == 60
    assert np.all(np.diff(result.ts) > 0)


def test_iso_times_use_the_finest_unit_needed() -> None:
    assert iso_times(np.array([T0, T0 + 1])).tolist() == [iso(T0) + "Z", iso(T0 + 1) + "Z"]
    assert iso_times(np.array([T0 + 0.25])).tolist() == [iso(T0) + ".250Z"]


def test_plot_writes_a_png(tmp_path: Path, model_dir: str) -> None:
    labelled = [r + [1.0 if 100 <= i < 120 else 0.0] for i, r in enumerate(two_channel_rows(200))]
    data = write_csv(tmp_path / "plot.csv", ["timestamp", "a", "b", "anomaly"], labelled)
    png = tmp_path / "replay.png"
    rc, _, _ = replay_cli(tmp_path, str(data), "--model", model_dir, "--plot", str(png))
    assert rc == 0
    content = png.read_bytes()
    assert content.startswith(b"\x89PNG") and len(content) > 10_000


def test_cli_columns_and_sensor_column(tmp_path: Path, model_dir: str) -> None:
    rows = [[iso(T0 + i // 2), f"m{i % 2}", float(i), float(-i), "x"] for i in range(40)]
    path = write_csv(tmp_path / "m.csv", ["when", "machine", "a", "b", "note"], rows)
    rc, out, _ = replay_cli(
        tmp_path, str(path), "--model", model_dir, "--time-column", "when", "--sensor-column", "machine",
        "--columns", "b", "--batch", "7",
    )
    assert rc == 0
    scores = read_scores(out)
    assert list(scores[0])[-2:] == ["value_b", "expected_b"]
    assert [r["sensor_id"] for r in scores[:4]] == ["m0", "m1", "m0", "m1"]
    assert {r["status"] for r in scores} == {"scored"}


def test_replay_with_a_look_ahead_model_places_late_scores_on_their_rows(tmp_path):
    """bidir scores each reading 4 readings late: replay puts each score on its own row, the last 4 stay pending."""
    import torch

    from detector.model.store import Model
    from detector.model.networks import build_network
    from detector import Detector
    from detector.replay import PENDING

    torch.manual_seed(0)
    model = Model(name="bidir", network=build_network({"architecture": "bidir", "hidden_size": 8, "lookahead": 4}))
    t = np.arange(200)
    values = 10 + np.sin(t / 10.0) + 0.05 * np.random.default_rng(1).standard_normal(200)
    path = tmp_path / "s.csv"
    path.write_text("timestamp,value\n" + "".join(f"{1.7e9 + x},{v}\n" for x, v in zip(t, values)))
    result = replay_files([path], batch=64, detector=Detector(model, channels=1))
    assert (result.status[:-4] == 0).all() and (result.status[-4:] == PENDING).all()
    assert result.scored == 196 and not result.rejected()
    seen = np.isfinite(result.expected[:, 0])
    assert seen[20:196].all() and not seen[196:].any()
    # the expected value on each row is the estimate of that row's own reading
    assert np.abs(result.expected[20:196, 0] - values[20:196]).mean() < 0.5
