"""How the benchmarks write their tables."""

from __future__ import annotations

from collections.abc import Sequence


def table_and_notes(headers: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str]) -> list[str]:
    """Markdown lines: a right-aligned table of `rows` under `headers`, a blank line, then the notes as bullets."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    lines += [f"- {note}" for note in notes]
    return lines
