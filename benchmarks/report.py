"""How the benchmarks write their tables and records."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path


def cell(v: object, digits: int = 2) -> str:
    """A number as a table cell: `–` for None or NaN, an int as is, else `digits` decimals."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def jsonable(v: object) -> object:
    """A copy with NaN as None and numpy scalars as Python numbers, for strict JSON."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def write_json(path: Path, value: object, indent: int | None = 1) -> None:
    """`value` as strict JSON (NaN as null) in `path`, with a final newline."""
    path.write_text(json.dumps(jsonable(value), indent=indent, allow_nan=False) + "\n")


def load_runs(folder: Path) -> list[dict]:
    """The run records (*.json) in `folder`: engine runs first (in name order), then the others by `order`, name."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    return sorted(runs, key=lambda r: (r["kind"] != "engine", r.get("order", 0), r["name"]))


def engine_at(record: dict) -> str:
    """`engine at commit <10 hex digits>`, `+ uncommitted engine edits` where the run's engine_source says so."""
    src = record.get("engine_source") or {}
    commit = (src.get("commit") or "unknown")[:10]
    if src.get("engine_edited_since_commit"):
        commit += " + uncommitted engine edits"
    return f"engine at commit {commit}"


def runs_section(runs: Sequence[dict], details: Callable[[dict], str]) -> list[str]:
    """Markdown lines of a `## Runs` list: per run its name, description, `details(run)`, the command repeating it."""
    return ["", "## Runs", "",
            *(f"- **{r['name']}**: {r['description']}{details(r)}. Reproduce: `{r['command']}`" for r in runs)]


def table_and_notes(headers: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str]) -> list[str]:
    """Markdown lines: a right-aligned table of `rows` under `headers`, a blank line, then the notes as bullets."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    lines += [f"- {note}" for note in notes]
    return lines


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str],
                width: int = 140) -> None:
    """The table on the console (with rich when it is installed, else plain right-aligned columns), then the notes."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
        for row in rows:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        for note in notes:
            print(note)
        return
    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=max(Console().width, width))
    console.print(table)
    for note in notes:
        console.print(note, markup=False)
