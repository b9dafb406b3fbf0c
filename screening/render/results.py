"""Query results written as a terminal table, CSV, JSON or Parquet."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
from plmscreen.screening.errors import QueryError

# Output


def _plain(value: Any) -> Any:
    """JSON-ready Python value (NaN/inf become null, timestamps ISO strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def _cell(value: Any, width: int = 60) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, dict)):
        text = json.dumps(_plain(value))
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(_plain(value))
    return str(_plain(value))


def format_result(table: pa.Table, fmt: str = "table", max_rows: int | None = None) -> str:
    """Rows as text: ``table`` (aligned columns), ``csv`` or ``json`` (a list of objects)."""
    rows = table.to_pylist()
    if fmt == "json":
        return json.dumps([_plain(r) for r in rows], indent=1, allow_nan=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(table.column_names)
        for row in rows:
            writer.writerow([_csv_cell(v) for v in row.values()])
        return buf.getvalue()
    if fmt != "table":
        raise QueryError(f"unknown format {fmt!r}: table, csv, json or parquet")
    shown = rows if max_rows is None else rows[:max_rows]
    cells = [[_cell(v) for v in row.values()] for row in shown]
    names = table.column_names
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema]
    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()
    out = [line(names), line(["-" * w for w in widths])] + [line(c) for c in cells]
    if len(shown) < len(rows):
        out.append(f"... {len(rows) - len(shown)} more rows (use --format csv or json for all)")
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


_TABLE_ROWS = 1000  # rows a table printed on the terminal shows


def write_result(table: pa.Table, fmt: str = "table", out: str | Path | None = None) -> None:
    """Print or write a result; ``parquet`` needs ``out``."""
    if fmt == "parquet":
        if out is None:
            raise QueryError("--format parquet needs --out FILE")
        from plmscreen.screening.store.parquet import write_parquet_atomic

        write_parquet_atomic(table, Path(out))
        return
    text = format_result(table, fmt, max_rows=_TABLE_ROWS if fmt == "table" and out is None else None)
    if out is None:
        sys.stdout.write(text)
    else:
        Path(out).write_text(text)
