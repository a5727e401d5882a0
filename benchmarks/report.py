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
