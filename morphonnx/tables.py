"""Tables: what every command prints, in three forms from one description.

A `Table` holds raw values (counts, bytes, seconds) and says how each column reads. `text()`
aligns it for a terminal, `markdown()` writes a GitHub table, `csv()` writes the raw numbers
(base units in the column keys: `latency_v100_s`, `params`), so a spreadsheet or pandas gets
figures, not strings. Text and Markdown format through `units`, one unit per column.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import units

SCHEMA_VERSION = 2  # of every JSON document the command line writes
TOP = 20            # rows every table prints unless --top says otherwise
KINDS = ("text", "int", "count", "bytes", "seconds", "percent", "ratio")


@dataclass
class Column:
    """One column: its header, how its values read, and its CSV key (header in base units)."""

    name: str
    kind: str = "text"
    key: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column kind {self.kind!r} is not one of {KINDS}")
        if not self.key:
            self.key = re.sub(r"[^0-9a-zA-Z]+", "_", self.name).strip("_").lower() + ("_s" if self.kind == "seconds" else "")


@dataclass
class Table:
    """A titled table of raw values; `name` is a short id (`ops`, `layers`) for file names."""

    name: str
    title: str
    columns: list[Column]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""  # a line under the table (`... 40 more rows (--top all)`)

    def cells(self) -> list[list[str]]:
        """The rows as strings, one unit per column; the header carries the unit of seconds."""
        out = [[] for _ in self.rows]
        heads = []
        for j, col in enumerate(self.columns):
            values = [r[j] for r in self.rows]
            head, fmt = col.name, _formatter(col, values)
            if col.kind == "seconds":
                head = f"{col.name} ({_time_unit(values)[1]})"
            heads.append(head)
            for i, v in enumerate(values):
                out[i].append(fmt(v))
        return [heads] + out

    def text(self) -> str:
        """Aligned columns for a terminal: text columns left, figures right."""
        rows = self.cells()
        widths = [max(len(r[j]) for r in rows) for j in range(len(self.columns))]
        left = [c.kind == "text" for c in self.columns]
        line = lambda r: "  ".join(c.ljust(w) if left[j] else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip()
        lines = ([self.title] if self.title else []) + [line(r) for r in rows]
        return "\n".join(lines + ([self.note] if self.note else []))

    def markdown(self) -> str:
        """A GitHub-flavoured Markdown table under a heading."""
        rows = [[c.replace("|", "\\|") for c in r] for r in self.cells()]
        align = ["---" if c.kind == "text" else "---:" for c in self.columns]
        lines = [f"### {self.title}", ""] if self.title else []
        lines += ["| " + " | ".join(rows[0]) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines + (["", self.note] if self.note else []))

    def csv(self) -> str:
        """The raw values, one header line of keys (figures unformatted, seconds in seconds)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([c.key for c in self.columns])
        for r in self.rows:
            w.writerow(["" if v is None else v for v in r])
        return buf.getvalue()


def _time_unit(values: Sequence) -> tuple[float, str]:
    return units.time_unit([v for v in values if isinstance(v, (int, float))])


def _formatter(col: Column, values: Sequence):
    """The cell text of a value; a value that is not a number (a `removed`, a `-`) is printed as it is."""
    fmt = _number_formatter(col, values)
    return lambda v: fmt(v) if v is None or isinstance(v, (int, float)) else str(v)


def _number_formatter(col: Column, values: Sequence):
    if col.kind == "seconds":
        factor, _ = _time_unit(values)
        return lambda v: "-" if v is None else units.sig3(v / factor)
    if col.kind == "count":
        return lambda v: "-" if v is None else units.count(v)
    if col.kind == "bytes":
        return lambda v: "-" if v is None else units.nbytes(v)
    if col.kind == "percent":
        return lambda v: "-" if v is None else f"{units.sig3(v)}%"
    if col.kind == "ratio":
        return lambda v: "-" if v is None else units.ratio(v)
    if col.kind == "int":
        return lambda v: "-" if v is None else str(int(v))
    return lambda v: "-" if v is None else str(v)


def csv_text(tables: Sequence[Table]) -> str:
    """Several tables as CSV for one stream: each under a `# name: title` line, a blank line between."""
    if len(tables) == 1:
        return tables[0].csv()
    return "\n".join(f"# {t.name}: {t.title}\n{t.csv()}" for t in tables)


def markdown_text(tables: Sequence[Table], title: str = "", summary: str = "") -> str:
    """Several tables as one Markdown document, under a title and the command's summary lines."""
    head = [f"## {title}", ""] if title else []
    if summary.strip():
        head += ["```", summary.strip(), "```", ""]
    return "\n".join(head + ["\n\n".join(t.markdown() for t in tables)]) + "\n"


def csv_paths(path: str, tables: Sequence[Table]) -> list[str]:
    """Where each table's CSV goes: the first at `path`, the others beside it as
    `STEM.NAME.csv` (`ops.csv`, `ops.layers.csv`); all to stdout for `-`."""
    if path == "-" or len(tables) == 1:
        return [path]
    stem = path[:-4] if path.lower().endswith(".csv") else path
    return [path] + [f"{stem}.{t.name}.csv" for t in tables[1:]]
