"""`hiddenstate produce` against a real Kafka broker (scripts/kafka.sh, via tests/kafka_broker.py).

Every test uses its own topic. The command module is driven through its own argparse
(`add_arguments` + `run`), and once through `detector.cli.main` with COMMANDS patched.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from consumers.decode import Decoder
from consumers.commands import produce as produce_command
from detector import cli
from consumers.commands.produce import TokenBucket, encode_readings, load_files, produce_files
from tests.kafka_broker import (  # noqa: F401 - kafka_bootstrap is a fixture
    create_topics,
    end_offsets,
    kafka_bootstrap,
    read_all,
    unique_name,
)

T0 = 1_700_000_000


def run_produce(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    produce_command.add_arguments(parser)
    return produce_command.run(parser.parse_args([*argv, "--quiet"]))


def write_csv(path: Path, sensors: int = 3, steps: int = 20) -> list[dict]:
    """A two-channel CSV of `sensors` sensors, rows interleaved; returns the rows as dicts."""
    rows = []
    lines = ["sensor_id,timestamp,temp,flow"]
    for t in range(steps):
        for s in range(sensors):
            row = {"sensor_id": f"pump-{s}", "ts": float(T0 + 10 * t), "temp": 20.0 + s + t / 4, "flow": float(t * s)}
            rows.append(row)
            lines.append(f"{row['sensor_id']},{T0 + 10 * t},{row['temp']},{row['flow']}")
    path.write_text("\n".join(lines) + "\n")
    return rows


async def _topic(bootstrap: str, partitions: int = 3) -> str:
    topic = unique_name("t-produce")
    await create_topics(bootstrap, {topic: partitions})
    return topic


def test_csv_rows_arrive_keyed_in_the_service_format(kafka_bootstrap, tmp_path, capsys):
    rows = write_csv(tmp_path / "fleet.csv")
    topic = asyncio.run(_topic(kafka_bootstrap))
    parser = argparse.ArgumentParser()
    produce_command.add_arguments(parser)
    rc = produce_command.run(parser.parse_args([str(tmp_path / "fleet.csv"), "--bootstrap", kafka_bootstrap,
                                                "--topic", topic]))
    assert rc == 0
    out = capsys.readouterr().out
    assert f"produced {len(rows)} messages ({len(rows)} readings) to {topic}" in out

    records = asyncio.run(read_all(kafka_bootstrap, topic))
    assert len(records) == len(rows)
    docs = []
    partition_of: dict[str, int] = {}
    for r in records:
        doc = orjson.loads(r.value)
        assert r.key == doc["sensor_id"].encode()
        assert set(doc) == {"sensor_id", "ts", "values"}
        # one sensor, one partition (keyed), in time order within it
        assert partition_of.setdefault(doc["sensor_id"], r.partition) == r.partition
        docs.append(doc)
    expected = {(r["sensor_id"], r["ts"]): {"temp": r["temp"], "flow": r["flow"]} for r in rows}
    got = {(d["sensor_id"], d["ts"]): d["values"] for d in docs}
    assert got == expected
    for sensor in partition_of:
        stamps = [d["ts"] for d in docs if d["sensor_id"] == sensor]
        assert stamps == sorted(stamps)

    # the service decodes every one of them
    decoder = Decoder()
    decoded = decoder.decode([(r.key, r.value) for r in records])
    assert all(d is None for d in decoded.dead) and not decoded.status.any()
    assert {tuple(decoder.names.names(k)) for k in decoded.channel_set.tolist()} == {("flow", "temp")}


def test_batch_per_message_groups_each_sensors_readings(kafka_bootstrap, tmp_path, capsys):
    """--batch-per-message 4: messages of up to 4 readings of one sensor, keyed by it; the service decodes them."""
    rows = write_csv(tmp_path / "fleet.csv", sensors=3, steps=10)  # 10 readings per sensor: 4 + 4 + 2
    topic = asyncio.run(_topic(kafka_bootstrap))
    assert run_produce([str(tmp_path / "fleet.csv"), "--bootstrap", kafka_bootstrap, "--topic", topic,
                        "--batch-per-message", "4"]) == 0
    assert f"produced 9 messages ({len(rows)} readings) to {topic}" in capsys.readouterr().out
    records = asyncio.run(read_all(kafka_bootstrap, topic))
    sizes: dict[str, list[int]] = {}
    for r in records:
        doc = orjson.loads(r.value)
        assert set(doc) == {"sensor_id", "readings"} and r.key == doc["sensor_id"].encode()
        sizes.setdefault(doc["sensor_id"], []).append(len(doc["readings"]))
    assert sizes == {f"pump-{s}": [4, 4, 2] for s in range(3)}
    decoder = Decoder()
    decoded = decoder.decode([(r.key, r.value) for r in records])
    assert all(d is None for d in decoded.dead) and not decoded.status.any()
    got = {(decoded.sensor_ids[i], decoded.ts[i]): decoded.values[i].tolist() for i in range(len(decoded))}
    assert got == {(r["sensor_id"], r["ts"]): [r["flow"], r["temp"]] for r in rows}
    for sensor in sizes:  # each sensor's readings in time order
        stamps = [decoded.ts[i] for i in range(len(decoded)) if decoded.sensor_ids[i] == sensor]
        assert stamps == sorted(stamps)


def test_columnar_messages_decode_like_the_envelopes(tmp_path):
    """--columnar: the same readings as columns, which the service decodes in one go to the same rows."""
    write_csv(tmp_path / "fleet.csv", sensors=3, steps=10)
    (readings,) = load_files([tmp_path / "fleet.csv"], None, None, None)
    envelopes = [(k, v) for k, v, _ in encode_readings(readings, per_message=4)]
    columns = [(k, v) for k, v, _ in encode_readings(readings, per_message=4, columnar=True)]
    assert [k for k, _ in columns] == [k for k, _ in envelopes] and len(columns) == 9
    first = orjson.loads(columns[0][1])
    assert set(first) == {"sensor_id", "ts", "values"} and set(first["values"]) == {"flow", "temp"}
    a, b = Decoder().decode(envelopes), Decoder().decode(columns)
    assert len(b.columns) == 9 and not b.status.any()  # every message decoded in one go
    assert a.sensor_ids == b.sensor_ids and a.index.tolist() == b.index.tolist()
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.values, b.values)


def test_jsonl_one_channel_sends_value(kafka_bootstrap, tmp_path):
    path = tmp_path / "p7.jsonl"
    path.write_text("".join(orjson.dumps({"sensor_id": "p7", "ts": T0 + i, "value": i * 0.5}).decode() + "\n"
                            for i in range(12)))
    topic = asyncio.run(_topic(kafka_bootstrap, 1))
    assert run_produce([str(path), "--bootstrap", kafka_bootstrap, "--topic", topic]) == 0
    records = asyncio.run(read_all(kafka_bootstrap, topic))
    docs = [orjson.loads(r.value) for r in records]
    assert docs == [{"sensor_id": "p7", "ts": float(T0 + i), "value": i * 0.5} for i in range(12)]
    assert {r.key for r in records} == {b"p7"}


def test_columns_and_file_stem_as_sensor(kafka_bootstrap, tmp_path):
    write_csv(tmp_path / "fleet.csv", sensors=1, steps=5)
    # without the sensor column, and with one value column: {"value": x}, sensor from --sensor-column
    topic = asyncio.run(_topic(kafka_bootstrap, 1))
    assert run_produce([str(tmp_path / "fleet.csv"), "--bootstrap", kafka_bootstrap, "--topic", topic,
                        "--columns", "temp", "--time-column", "timestamp", "--sensor-column", "sensor_id"]) == 0
    docs = [orjson.loads(r.value) for r in asyncio.run(read_all(kafka_bootstrap, topic))]
    assert [d["value"] for d in docs] == [20.0 + t / 4 for t in range(5)]
    assert {d["sensor_id"] for d in docs} == {"pump-0"}


def test_rate_paces_the_readings(kafka_bootstrap, tmp_path):
    rows = write_csv(tmp_path / "fleet.csv", sensors=2, steps=40)  # 80 readings
    topic = asyncio.run(_topic(kafka_bootstrap))
    started = time.monotonic()
    assert run_produce([str(tmp_path / "fleet.csv"), "--bootstrap", kafka_bootstrap, "--topic", topic,
                        "--rate", "100"]) == 0
    elapsed = time.monotonic() - started
    assert elapsed >= len(rows) / 100 * 0.8
    assert len(asyncio.run(read_all(kafka_bootstrap, topic))) == len(rows)


def test_loop_shifts_timestamps_past_the_previous_pass(kafka_bootstrap, tmp_path):
    rows = write_csv(tmp_path / "fleet.csv", sensors=2, steps=5)
    topic = asyncio.run(_topic(kafka_bootstrap, 1))
    summary = asyncio.run(produce_files([tmp_path / "fleet.csv"], kafka_bootstrap, topic, loop=True, max_passes=3))
    assert summary.passes == 3 and summary.readings == 3 * len(rows)
    docs = [orjson.loads(r.value) for r in asyncio.run(read_all(kafka_bootstrap, topic))]
    for sensor in ("pump-0", "pump-1"):
        stamps = [d["ts"] for d in docs if d["sensor_id"] == sensor]
        assert len(stamps) == 15 and all(b > a for a, b in zip(stamps, stamps[1:]))  # no duplicate, no reorder


def test_through_the_cli_command_table(kafka_bootstrap, tmp_path, monkeypatch, capsys):
    rows = write_csv(tmp_path / "fleet.csv", sensors=1, steps=3)
    topic = asyncio.run(_topic(kafka_bootstrap, 1))
    monkeypatch.setitem(cli.COMMANDS, "produce", ("consumers.commands.produce", "replay files into a Kafka topic"))
    assert cli.main(["produce", str(tmp_path / "fleet.csv"), "--bootstrap", kafka_bootstrap, "--topic", topic]) == 0
    assert f"produced {len(rows)} messages" in capsys.readouterr().out


# --- no broker needed --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_broker_is_a_clear_error(tmp_path, capsys):
    write_csv(tmp_path / "fleet.csv", sensors=1, steps=3)
    started = time.monotonic()
    rc = run_produce([str(tmp_path / "fleet.csv"), "--bootstrap", f"127.0.0.1:{_free_port()}", "--topic", "t",
                      "--connect-timeout", "1.5"])
    assert rc == 2
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err
    assert "cannot reach Kafka at 127.0.0.1:" in err and "within 1.5 s" in err


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    write_csv(tmp_path / "fleet.csv", sensors=1, steps=3)
    assert run_produce([str(tmp_path / "missing.csv"), "--topic", "t"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert run_produce([str(tmp_path / "fleet.csv"), "--topic", "t", "--batch-per-message", "0"]) == 2
    assert "--batch-per-message must be at least 1" in capsys.readouterr().err
    assert run_produce([str(tmp_path / "fleet.csv"), "--topic", "t", "--columnar"]) == 2
    assert "--columnar writes batches" in capsys.readouterr().err
    assert run_produce([str(tmp_path / "fleet.csv"), "--topic", "t", "--rate", "-1",
                        "--bootstrap", f"127.0.0.1:{_free_port()}", "--connect-timeout", "1"]) == 2
    assert "--rate" in capsys.readouterr().err


def test_token_bucket_paces():
    async def take_all() -> float:
        bucket = TokenBucket(200.0)
        started = time.monotonic()
        for _ in range(100):
            await bucket.take()
        return time.monotonic() - started

    elapsed = asyncio.run(take_all())
    assert elapsed >= 0.5 * 0.8
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_loop_until_interrupted_prints_what_was_acknowledged(kafka_bootstrap, tmp_path):
    import signal
    import subprocess
    import sys

    write_csv(tmp_path / "fleet.csv", sensors=2, steps=10)
    topic = asyncio.run(_topic(kafka_bootstrap, 1))
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumers.commands.produce", str(tmp_path / "fleet.csv"), "--bootstrap",
         kafka_bootstrap, "--topic", topic, "--loop", "--rate", "200", "--quiet"],
        cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while sum(asyncio.run(end_offsets(kafka_bootstrap, topic)).values()) <= 30:  # past the first pass of 20
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted; produced" in out
    acked = int(out.split("produced ")[1].split(" messages")[0])
    assert acked > 20  # more than one pass of 20 readings went out
    records = asyncio.run(read_all(kafka_bootstrap, topic))
    assert len(records) >= acked
    stamps = [orjson.loads(r.value)["ts"] for r in records if r.key == b"pump-0"]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
