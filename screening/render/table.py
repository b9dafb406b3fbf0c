"""The flagged-sequences table, defined once and rendered for the terminal, Prefect markdown
artifacts and the HTML report (which adds its own wider columns)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    key: str  # field of a flagged row (sequences table)
    short: str  # terminal header
    title: str  # markdown / HTML header
    digits: int | str | None = None  # decimals for floats; "g": two significant digits; None: as is
    width: int = 8  # terminal width


FLAGGED_COLUMNS = (
    Column("seq_id", "seq_id", "sequence", None, 28),
    Column("length", "length", "length", None, 6),
    Column("pppl", "pppl", "pppl", 2),  # '-' in triage mode
    Column("pppl_ablated", "pppl_abl", "pppl ablated", 2),
    Column("inflation_factor", "infl_fac", "inflation factor", 2),
    Column("repeat_fraction", "rep_frac", "repeat fraction", 2),
    Column("partner_qvalue", "q_value", "q-value (partners vs random)", "g", 8),
    Column("mean_copy_following", "copy_f", "copy-following", 2, 7),  # '-' without diagnostics
)


def _value(row: dict, column: Column) -> str:
    value = row.get(column.key)
    if value is None:
        return "-"
    if column.digits == "g":  # q-values span decades: two significant digits
        return f"{value:.2g}"
    return f"{value:.{column.digits}f}" if column.digits is not None else str(value)


def flagged_text(rows: list[dict], limit: int = 50) -> str:
    """Fixed-width table for the terminal, most inflated first as given."""
    if not rows:
        return "No sequences flagged."

    def line(cells: list[str]) -> str:
        return " ".join(f"{cell[:c.width]:<{c.width}}" if c.key == "seq_id" else f"{cell:>{c.width}}"
                        for c, cell in zip(FLAGGED_COLUMNS, cells))

    header = line([c.short for c in FLAGGED_COLUMNS])
    lines = [header, "-" * len(header)]
    lines += [line([_value(row, c) for c in FLAGGED_COLUMNS]) for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more")
    return "\n".join(lines)


def flagged_markdown(rows: list[dict], limit: int = 50) -> str:
    """Markdown table for Prefect artifacts."""
    if not rows:
        return "No sequences flagged."
    lines = ["| " + " | ".join(c.title for c in FLAGGED_COLUMNS) + " |",
             "|" + "|".join("---" if c.key == "seq_id" else "---:" for c in FLAGGED_COLUMNS) + "|"]
    lines += ["| " + " | ".join(_value(row, c) for c in FLAGGED_COLUMNS) + " |" for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more: `plmscreen flagged STORE`")
    return "\n".join(lines)


def flagged_html_columns() -> list[tuple[str, str]]:
    """(key, header) of the report's flagged table: the same columns, then the report's extras."""
    return [(c.key, c.title) for c in FLAGGED_COLUMNS] + [
        ("mean_net_inflation", "net inflation (nats)"), ("n_repeat_regions", "regions"),
        ("regions", "repeat regions (start-end~partner, identity, mean inflation)")]


def reuse_line(summary: dict) -> str:
    """How a run's sequences got their scores (the CLI summary and the flow's artifact): scored by
    the model, copied from earlier runs, copied within the input (screening/run/reuse.py)."""
    text = (f"{summary['n_model_scored']} scored, {summary['n_reused']} reused from earlier runs, "
            f"{summary['n_duplicates']} copied from identical sequences of this input")
    if summary.get("n_rediagnosed"):
        text += f" ({summary['n_rediagnosed']} reused and newly flagged: diagnostics computed)"
    return text + "."
