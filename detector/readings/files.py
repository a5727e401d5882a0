"""Reading sensor readings from CSV and JSON-lines files into the engine's arrays.

`read_readings` turns one file into a `Readings`: sensor ids, timestamps in
seconds since the epoch, a [N, C] float array of values and the channel names.
It is used by `replay` and `train`, so both see a file the same way.

What it accepts, and why:
- CSV with any of `,` `;` tab `|` as delimiter (sniffed: SKAB files use `;`) and
  a header row. The timestamp column is found by name (datetime, timestamp,
  time, ts, date, ...) or else as the first column of ISO dates (or the first
  column, if it holds increasing epoch numbers). A column called `sensor_id`
  (or the one named by `sensor_column`) gives the sensor of each row; without
  one, the whole file is one sensor named after the file's stem. Value columns
  are the ones named, or every numeric column except the timestamp, the sensor
  and label columns (`anomaly`, `changepoint`, `label`, `is_anomaly`); labels
  are kept apart in `Readings.labels` for plots and evaluation.
- JSON lines (`.jsonl`, `.ndjson`), one object per line:
  `{"sensor_id": "p7", "ts": ..., "value": 3.2}`, `{"ts": ..., "values": [1, 2]}`,
  `{"ts": ..., "values": {"a": 1, "b": 2}}` or flat `{"ts": ..., "a": 1, "b": 2}`.
- `.gz` compressed versions of either.

Timestamps follow the one rule of `detector.readings.timestamps` (ISO 8601, naive = UTC, or
epoch numbers whose unit is read from their size), as the Python API and Kafka do.

Bad rows do not stop a file. A row whose timestamp cannot be read is left out
and listed in `Readings.skipped` with its line number and why (the engine cannot
order it). A row whose values are not numbers stays in, with NaN values, so the
engine rejects it with a reason (`not_finite`) and counts it like the service would.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

import numpy as np
import orjson

from detector.errors import InputFileError
from detector.readings.timestamps import column_seconds, iso_seconds

TIME_NAMES = ("datetime", "timestamp", "time", "ts", "date", "event_time", "_time", "time_stamp")
"""Column names taken as the timestamp, in order of preference (compared lower-case)."""

SENSOR_NAMES = ("sensor_id",)
"""Column names taken as the sensor id when `sensor_column` is not given."""

LABEL_NAMES = ("anomaly", "changepoint", "label", "is_anomaly")
"""Columns that hold ground truth, not readings: kept in `Readings.labels`, never scored."""

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CHUNK_ROWS = 65_536
"""CSV rows converted at a time: bounds the memory held as Python strings."""


@dataclass
class Readings:
    """The readings of one file, in file order.

    sensor_ids: N ids; ts: [N] float64 seconds since the epoch; values: [N, C] float64
    (NaN where a value was not a number); channel_names: C names; source: the file;
    skipped: (line number, reason) of rows left out; labels: ground-truth columns [N], if any.
    """

    sensor_ids: list[str]
    ts: np.ndarray
    values: np.ndarray
    channel_names: list[str]
    source: str
    skipped: list[tuple[int, str]] = field(default_factory=list)
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sensor_ids)

    @property
    def channels(self) -> int:
        return self.values.shape[1]

    def take(self, index: np.ndarray) -> Readings:
        """The rows at `index` (e.g. a sort order), as a new Readings."""
        ids = self.sensor_ids
        return Readings(
            sensor_ids=[ids[i] for i in index.tolist()],
            ts=self.ts[index],
            values=self.values[index],
            channel_names=list(self.channel_names),
            source=self.source,
            skipped=list(self.skipped),
            labels={k: v[index] for k, v in self.labels.items()},
        )


def read_readings(
    path: str | Path,
    time_column: str | None = None,
    sensor_column: str | None = None,
    value_columns: Sequence[str] | None = None,
) -> Readings:
    """Read a CSV or JSON-lines file of readings; InputFileError says what is wrong and what to do."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputFileError(f"{path} is a directory; give CSV or JSON-lines files")
    if value_columns is not None and not list(value_columns):
        value_columns = None
    try:
        with _open_text(path) as handle:
            head = handle.read(65_536)
            if not head.strip():
                raise InputFileError(f"{path} is empty")
            handle.seek(0)
            if _is_jsonl(path, head):
                readings = _read_jsonl(path, handle, time_column, sensor_column, value_columns)
            else:
                readings = _read_csv(path, handle, head, time_column, sensor_column, value_columns)
    except UnicodeDecodeError as exc:
        raise InputFileError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8"
        ) from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputFileError(f"{path} cannot be read: {exc}") from None
    if len(readings) == 0:
        first = f"; e.g. line {readings.skipped[0][0]}: {readings.skipped[0][1]}" if readings.skipped else ""
        raise InputFileError(f"{path} has no readable rows{first}")
    return readings


# ----------------------------------------------------------------------------- files


def _open_text(path: Path) -> IO[str]:
    """Open as text (utf-8, a BOM dropped), decompressing `.gz`; newline='' as the csv module wants."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def file_stem(path: Path) -> str:
    """File name without its data and compression suffixes: `valve1/0.csv.gz` -> `0`."""
    name = path.name
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).stem or name


def _is_jsonl(path: Path, head: str) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in JSONL_SUFFIXES:
        return True
    if suffixes and suffixes[-1] in (".csv", ".tsv", ".txt"):
        return False
    return head.lstrip().startswith("{")


# ----------------------------------------------------------------------------- CSV


def _sniff(head: str) -> type[csv.Dialect] | csv.Dialect:
    """The CSV dialect of a sample; ',' if the sample does not say (e.g. a single column)."""
    sample = head[: head.rfind("\n") + 1] if "\n" in head else head
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        return csv.excel


def _read_csv(
    path: Path,
    handle: IO[str],
    head: str,
    time_column: str | None,
    sensor_column: str | None,
    value_columns: Sequence[str] | None,
) -> Readings:
    reader = csv.reader(handle, _sniff(head))
    header: list[str] | None = None
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [cell.strip() for cell in row]
            break
    if header is None:
        raise InputFileError(f"{path} is empty")
    if all(_looks_like_data(cell) for cell in header if cell):
        raise InputFileError(
            f"{path} has no header row (its first row is {','.join(header[:6])}...); "
            "add a first line naming the columns, e.g. timestamp,value"
        )
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputFileError(f"{path}: column name(s) {', '.join(map(repr, dupes))} occur more than once; rename them")

    chunks = _row_chunks(reader, len(header))
    first_lines, first_rows, first_skipped = next(chunks, ([], [], []))
    if not first_rows and not first_skipped:
        raise InputFileError(f"{path} has a header row but no readings")
    columns = list(zip(*first_rows)) if first_rows else [() for _ in header]
    layout = _csv_layout(path, header, columns, time_column, sensor_column, value_columns)

    stem = file_stem(path)
    ids: list[str] = []
    ts_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    label_parts: dict[str, list[np.ndarray]] = {name: [] for name in layout.labels}
    skipped: list[tuple[int, str]] = []
    interned: dict[str, str] = {}

    def convert(lines: list[int], rows: list[list[str]], bad: list[tuple[int, str]]) -> None:
        skipped.extend(bad)
        if not rows:
            return
        cols = list(zip(*rows))
        seconds, reasons = column_seconds(cols[layout.time])
        keep = np.isfinite(seconds)
        if not keep.all():
            for i in np.flatnonzero(~keep).tolist():
                skipped.append((lines[i], reasons[i]))
        ts_parts.append(seconds[keep])
        block = np.empty((len(rows), len(layout.values)))
        for j, index in enumerate(layout.values):
            block[:, j] = _to_float(cols[index])[0]
        value_parts.append(block[keep])
        for name, index in layout.labels.items():
            label_parts[name].append(_to_float(cols[index])[0][keep])
        if layout.sensor is None:
            ids.extend([stem] * int(keep.sum()))
        else:
            sensors = cols[layout.sensor]
            ids.extend(interned.setdefault(s.strip(), s.strip()) for s, k in zip(sensors, keep.tolist()) if k)

    convert(first_lines, first_rows, first_skipped)
    for lines, rows, bad in chunks:
        convert(lines, rows, bad)
    skipped.sort()
    channels = len(layout.values)
    return Readings(
        sensor_ids=ids,
        ts=np.concatenate(ts_parts) if ts_parts else np.empty(0),
        values=np.concatenate(value_parts) if value_parts else np.empty((0, channels)),
        channel_names=[header[i] for i in layout.values],
        source=str(path),
        skipped=skipped,
        labels={name: np.concatenate(parts) for name, parts in label_parts.items() if parts},
    )


def _row_chunks(
    reader: Iterator[list[str]], width: int
) -> Iterator[tuple[list[int], list[list[str]], list[tuple[int, str]]]]:
    """Yield (line numbers, rows, skipped) in chunks; blank lines are ignored, ragged rows skipped."""
    lines: list[int] = []
    rows: list[list[str]] = []
    bad: list[tuple[int, str]] = []
    for row in reader:
        if len(row) != width:
            if not any(cell.strip() for cell in row):
                continue
            bad.append((reader.line_num, f"has {len(row)} fields, the header has {width}"))
            continue
        lines.append(reader.line_num)
        rows.append(row)
        if len(rows) >= CHUNK_ROWS:
            yield lines, rows, bad
            lines, rows, bad = [], [], []
    if rows or bad:
        yield lines, rows, bad


@dataclass
class _Layout:
    """Which CSV column is what, by index."""

    time: int
    sensor: int | None
    values: list[int]
    labels: dict[str, int]


def _csv_layout(
    path: Path,
    header: list[str],
    columns: list[tuple[str, ...]],
    time_column: str | None,
    sensor_column: str | None,
    value_columns: Sequence[str] | None,
) -> _Layout:
    """Decide the timestamp, sensor, value and label columns from the header and a sample of rows."""
    seen = ", ".join(header)

    def index_of(name: str, flag: str) -> int:
        if name in header:
            return header.index(name)
        lowered = [h.lower() for h in header]
        if name.lower() in lowered:
            return lowered.index(name.lower())
        raise InputFileError(f"{path} has no column {name!r} (given with {flag}); its columns are: {seen}")

    lower = [h.lower() for h in header]
    numeric = [_mostly_numeric(col) for col in columns]

    if time_column is not None:
        time = index_of(time_column, "--time-column")
    else:
        time = _find_time_column(lower, columns, numeric)
        if time is None:
            raise InputFileError(
                f"{path}: no timestamp column found among its columns ({seen}); "
                "name it with --time-column (ISO 8601 dates or epoch seconds)"
            )

    sensor: int | None = None
    if sensor_column is not None:
        sensor = index_of(sensor_column, "--sensor-column")
    else:
        sensor = next((lower.index(n) for n in SENSOR_NAMES if n in lower), None)
    if sensor == time:
        raise InputFileError(f"{path}: column {header[time]!r} cannot be both the timestamp and the sensor id")

    labels = {
        header[i]: i for i, name in enumerate(lower) if name in LABEL_NAMES and i not in (time, sensor) and numeric[i]
    }
    if value_columns is not None:
        values = [index_of(name, "--columns") for name in value_columns]
        clash = [header[i] for i in values if i in (time, sensor)]
        if clash:
            raise InputFileError(f"{path}: {', '.join(clash)} is the timestamp or sensor column, not a value column")
        labels = {name: i for name, i in labels.items() if i not in values}
    else:
        values = [i for i in range(len(header)) if numeric[i] and i not in (time, sensor) and i not in labels.values()]
        if not values:
            raise InputFileError(
                f"{path} has no numeric value columns (columns: {seen}; timestamp: {header[time]!r}); "
                "name the value columns with --columns"
            )
    return _Layout(time=time, sensor=sensor, values=values, labels=labels)


def _find_time_column(lower: list[str], columns: list[tuple[str, ...]], numeric: list[bool]) -> int | None:
    """A column named like a timestamp; else the first column of ISO dates; else column 0 if increasing numbers."""
    for name in TIME_NAMES:
        if name in lower:
            return lower.index(name)
    for i, name in enumerate(lower):
        if name.endswith(("_time", "_ts", "timestamp", "datetime")):
            return i
    for i, col in enumerate(columns):
        if not numeric[i] and _mostly_dates(col):
            return i
    if columns and numeric[0]:
        first = _to_float(columns[0])[0]
        first = first[np.isfinite(first)]
        if first.size >= 2 and np.all(np.diff(first) >= 0) and first[-1] > first[0]:
            return 0
    return None


def _looks_like_data(cell: str) -> bool:
    """A header cell that is a number or a date: the file probably has no header."""
    try:
        float(cell)
        return True
    except ValueError:
        pass
    try:
        datetime.fromisoformat(cell.strip())
        return True
    except ValueError:
        return False


def _mostly_numeric(cells: Sequence[str]) -> bool:
    """At least half of the non-empty cells parse as numbers (and at least one does)."""
    sample = [c for c in cells[:2000] if c.strip()]
    if not sample:
        return False
    ok = _to_float(sample)[1]
    return bool(ok.any()) and ok.mean() >= 0.5


def _mostly_dates(cells: Sequence[str]) -> bool:
    """At least half of a sample of the non-empty cells parse as ISO 8601 dates."""
    sample = [c for c in cells[:200] if c.strip()]
    if not sample:
        return False
    good = sum(iso_seconds(c) is not None for c in sample)
    return good >= 0.5 * len(sample)


# ----------------------------------------------------------------------------- JSON lines


def _read_jsonl(
    path: Path,
    handle: IO[str],
    time_column: str | None,
    sensor_column: str | None,
    value_columns: Sequence[str] | None,
) -> Readings:
    stem = file_stem(path)
    skipped: list[tuple[int, str]] = []
    lines: list[int] = []
    ids: list[str] = []
    raw_ts: list[object] = []
    rows: list[list[float]] = []
    label_rows: dict[str, list[float]] = {}
    channel_names: list[str] | None = None
    shape: str = ""  # "value", "list", "dict" or "flat"
    time_key: str | None = time_column
    sensor_key = sensor_column or "sensor_id"
    interned: dict[str, str] = {}

    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            skipped.append((number, f"not valid JSON ({exc})"))
            continue
        if not isinstance(obj, dict):
            skipped.append((number, f"is a JSON {type(obj).__name__}, not an object"))
            continue
        if time_key is None:
            time_key = next((k for k in obj if k.lower() in TIME_NAMES), None)
            if time_key is None:
                raise InputFileError(
                    f"{path} line {number}: no timestamp key among {', '.join(obj)}; "
                    "name it with --time-column (e.g. ts, holding ISO 8601 dates or epoch seconds)"
                )
        if time_key not in obj:
            skipped.append((number, f"has no {time_key!r}"))
            continue
        if channel_names is None:
            shape, channel_names = _jsonl_shape(path, number, obj, time_key, sensor_key, value_columns)
        # No sensor key: the file's sensor, unless a --sensor-column was asked for (then "" is rejected as bad id).
        sensor = obj[sensor_key] if sensor_key in obj else ("" if sensor_column is not None else stem)
        text = sensor if isinstance(sensor, str) else str(sensor) if type(sensor) is int else ""
        lines.append(number)
        ids.append(interned.setdefault(text, text))
        raw_ts.append(obj[time_key])
        rows.append(_jsonl_values(obj, shape, channel_names))
        for name in LABEL_NAMES:
            if name in obj:
                label_rows.setdefault(name, [math.nan] * (len(rows) - 1))
        for name, column in label_rows.items():
            column.append(_number(obj.get(name)))

    if channel_names is None:
        first = f"; e.g. line {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise InputFileError(f"{path} has no readable JSON objects{first}")
    seconds, reasons = column_seconds(raw_ts)
    keep = np.isfinite(seconds)
    for i in np.flatnonzero(~keep).tolist():
        skipped.append((lines[i], reasons[i]))
    skipped.sort()
    values = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(channel_names))
    return Readings(
        sensor_ids=[s for s, k in zip(ids, keep.tolist()) if k],
        ts=seconds[keep],
        values=values[keep],
        channel_names=channel_names,
        source=str(path),
        skipped=skipped,
        labels={name: np.asarray(col, dtype=np.float64)[keep] for name, col in label_rows.items()},
    )


def _jsonl_shape(
    path: Path, number: int, obj: dict, time_key: str, sensor_key: str, value_columns: Sequence[str] | None
) -> tuple[str, list[str]]:
    """How the first object holds its values, and the channel names, which later lines must follow."""
    values = obj.get("values")
    if value_columns is not None:
        source = values if isinstance(values, dict) else obj
        missing = [c for c in value_columns if c not in source]
        if missing:
            raise InputFileError(
                f"{path} line {number}: no key {', '.join(map(repr, missing))} (given with --columns); "
                f"keys seen: {', '.join(source)}"
            )
        return ("dict" if source is values else "flat"), list(value_columns)
    if "value" in obj:
        return "value", ["value"]
    if isinstance(values, list):
        if not values:
            raise InputFileError(f"{path} line {number}: 'values' is an empty list")
        return "list", [f"ch{i}" for i in range(len(values))]
    if isinstance(values, dict):
        if not values:
            raise InputFileError(f"{path} line {number}: 'values' is an empty object")
        return "dict", list(values)
    skip = {time_key, sensor_key, *LABEL_NAMES}
    flat = [k for k, v in obj.items() if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not flat:
        raise InputFileError(
            f"{path} line {number}: no values; write \"value\": x, \"values\": [...] or \"values\": {{...}}, "
            "or name the value keys with --columns"
        )
    return "flat", flat


def _jsonl_values(obj: dict, shape: str, names: list[str]) -> list[float]:
    """One row of floats in channel order; NaN for anything that is not a number (or a missing key)."""
    nan = [math.nan] * len(names)
    if shape == "value":
        return [_number(obj.get("value"))]
    if shape == "list":
        values = obj.get("values")
        if not isinstance(values, list) or len(values) != len(names):
            return nan
        return [_number(v) for v in values]
    source = obj.get("values") if shape == "dict" else obj
    if not isinstance(source, dict):
        return nan
    return [_number(source.get(name)) for name in names]


def _number(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    return math.nan


# ----------------------------------------------------------------------------- conversions


def _to_float(cells: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """Cells as floats (NaN where not a number) and which cells parsed; vectorised when all do.

    Booleans (from JSON) are not numbers.
    """
    if not any(type(c) is bool for c in cells):
        try:
            out = np.asarray(cells, dtype=np.float64)
            if out.ndim == 1:
                return out, np.ones(out.shape, dtype=bool)
        except (ValueError, TypeError, OverflowError):
            pass
    out = np.full(len(cells), np.nan)
    ok = np.zeros(len(cells), dtype=bool)
    for i, cell in enumerate(cells):
        if isinstance(cell, bool):
            continue
        try:
            out[i] = float(cell)  # type: ignore[arg-type]
            ok[i] = True
        except (ValueError, TypeError, OverflowError):
            pass
    return out, ok
