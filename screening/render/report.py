"""A self-contained HTML report of one run: summary, flagged table, histogram, per-residue tracks.

Everything is read through the store's guarded DuckDB views (``plmscreen.screening.store``); the figures
are matplotlib SVG inlined in the page, so it opens offline and can be mailed as one file.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import math
import re
from pathlib import Path
from typing import Any

from plmscreen import screening
from plmscreen.screening.render.table import flagged_html_columns
from plmscreen.screening.store.connection import open_store
from plmscreen.screening.store.guard import QueryLimits
from plmscreen.screening.store.runs import RunChanges, previous_run
from plmscreen.screening.errors import StoreError

_REGION_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf"]
_MASKED_COLOR = "#1f4e9c"
_ABLATED_COLOR = "#d9480f"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1300px;
       color: #1b1b1b; background: #ffffff; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 4px; border-bottom: 3px solid #1f4e9c; padding-bottom: 6px; }
h2 { font-size: 1.25em; margin-top: 32px; color: #1f4e9c; }
h3 { font-size: 1.05em; margin: 22px 0 4px; }
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0; }
th, td { border: 1px solid #c8ccd4; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #e8edf6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #f6f8fb; }
table.summary th { width: 220px; }
.note { color: #555; font-size: 0.9em; }
.flag { color: #b02a1a; font-weight: 600; }
code { font-family: Menlo, Consolas, monospace; font-size: 0.92em; }
figure { margin: 6px 0 18px; }
figure svg { width: 100%; max-width: 1250px; height: auto; }
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return str(value)


def _svg(fig, salt: str) -> str:
    """The figure as an inline <svg> element: text kept as text, no XML prolog, DTD or metadata."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    text = buf.getvalue()
    text = re.sub(r"<\?xml[^>]*\?>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    return text


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def histogram_svg(rows: list[dict], min_inflation_factor: float | None) -> str:
    """Inflation factor histogram, flagged vs not flagged, with the flag threshold."""
    import numpy as np

    fig = _figure(11, 3.6)
    ax = fig.add_subplot()
    rows = [r for r in rows if r["inflation_factor"] is not None]  # triage leaves unflaggable ones unknown
    values = np.array([r["inflation_factor"] for r in rows], dtype=float)
    flagged = np.array([bool(r["flagged"]) for r in rows], dtype=bool)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.9, 1.1)
    if min_inflation_factor is not None:
        lo, hi = min(lo, min_inflation_factor), max(hi, min_inflation_factor)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    bins = np.linspace(lo, hi, 41)
    ax.hist([values[~flagged], values[flagged]], bins=bins, stacked=True, color=["#9aa5b1", "#c92a2a"],
            label=[f"not flagged ({int((~flagged).sum())})", f"flagged ({int(flagged.sum())})"], edgecolor="white",
            linewidth=0.4)
    if min_inflation_factor is not None:
        ax.axvline(min_inflation_factor, color="#1b1b1b", linestyle="--", linewidth=1,
                   label=f"flag threshold {min_inflation_factor:g}")
    ax.set_xlabel("inflation factor (pppl_ablated / pppl)")
    ax.set_ylabel("sequences")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, "plmscreen-histogram")


def track_svg(seq_id: str, track: list[dict], regions: list[dict], salt: str) -> str:
    """Masked vs partner-ablated log-probability along the sequence; repeat regions shaded in the
    colour of their pair; arcs below link each region to its partner copy."""
    import numpy as np
    from matplotlib.patches import Arc, Rectangle

    pos = np.array([r["pos"] for r in track], dtype=float)
    masked = np.array([r["logp_masked"] for r in track], dtype=float)
    ablated = np.array([np.nan if r["logp_ablated"] is None else r["logp_ablated"] for r in track], dtype=float)
    length = int(pos.max()) if pos.size else 1
    fig = _figure(11, 3.9)
    grid = fig.add_gridspec(2, 1, height_ratios=[3, 1.15], hspace=0.08)
    ax = fig.add_subplot(grid[0])
    arcs = fig.add_subplot(grid[1], sharex=ax)
    for k, region in enumerate(regions):
        color = _REGION_COLORS[region["region_id"] % len(_REGION_COLORS)]
        for start, end in ((region["start"], region["end"]), (region["partner_start"], region["partner_end"])):
            ax.axvspan(start - 0.5, end + 0.5, color=color, alpha=0.13, linewidth=0)
            arcs.add_patch(Rectangle((start - 0.5, -0.12), end - start + 1, 0.12, color=color, alpha=0.8, linewidth=0))
        a = (region["start"] + region["end"]) / 2
        b = (region["partner_start"] + region["partner_end"]) / 2
        arcs.add_patch(Arc(((a + b) / 2, 0), abs(b - a), 1.7, theta1=0, theta2=180, color=color, linewidth=1.6))
        arcs.text((a + b) / 2, 0.9, f"id {region['identity']:.2f}", ha="center", va="bottom", fontsize=7, color=color)
    ax.plot(pos, masked, color=_MASKED_COLOR, linewidth=1.0, label="masked log p")
    ax.plot(pos, ablated, color=_ABLATED_COLOR, linewidth=1.0, label="partner-ablated log p")
    ax.fill_between(pos, masked, ablated, where=~np.isnan(ablated) & (masked > ablated), color=_ABLATED_COLOR,
                    alpha=0.18, linewidth=0, interpolate=True)
    ax.set_ylabel("log p (nats)")
    ax.set_title(seq_id, loc="left", fontsize=10)
    ax.legend(loc="lower right", fontsize=8, frameon=False, ncol=2)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelbottom=False)
    arcs.set_xlim(0.5, length + 0.5)
    arcs.set_ylim(-0.2, 1.25)
    arcs.set_yticks([])
    arcs.set_xlabel("position")
    arcs.spines[["top", "right", "left"]].set_visible(False)
    return _svg(fig, salt)


def _table(rows: list[dict], columns: list[tuple[str, str]], anchors: dict[str, str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            text = html.escape(_fmt(value))
            if key == "seq_id" and anchors and value in anchors:
                text = f'<a href="#{anchors[value]}">{text}</a>'
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _calibration_note(store: str | Path, run: str) -> str | None:
    """Where the run's flag rule came from, as run.json records it (screening/run/calibrations.py)."""
    import json

    from plmscreen.screening.store.layout import run_json_path

    try:
        calibration = json.loads(run_json_path(Path(store), run).read_text()).get("calibration")
    except (OSError, ValueError):
        return None
    return calibration.get("note") if isinstance(calibration, dict) else None


def build_report(store: str | Path, run: str | None = None, max_sequences: int = 25,
                 limits: QueryLimits | None = None) -> tuple[str, dict]:
    """The report's HTML and a small summary (run, n_sequences, n_flagged, n_tracks); ``limits``
    apply to each of its queries (default: :meth:`QueryLimits.from_env`)."""
    with open_store(store, limits=limits) as st:
        runs = st.named("run_summary").to_pylist()
        if not runs:
            raise StoreError(f"{store}: no runs to report on (the store holds no sequences)")
        by_id = {r["run"]: r for r in runs}
        if run is None:
            run = runs[0]["run"]
        elif run not in by_id:
            raise StoreError(f"no run {run} in {store}; runs: {', '.join(by_id)}")
        info = by_id[run]
        sequences = st.named("sequence_scores", run=run).to_pylist()
        flagged = st.named("flagged", run=run).to_pylist()
        shown = flagged[:max_sequences]
        tracks = [(row, st.named("residue_track", run=run, seq_id=row["seq_id"]).to_pylist(),
                   st.named("sequence_regions", run=run, seq_id=row["seq_id"]).to_pylist()) for row in shown]
        since = previous_run(st, run) if info["created_utc"] is not None else None
        changes = RunChanges(run, since, st.named("changes", run=run, since=since).to_pylist() if since else [])

    anchors = {row["seq_id"]: f"seq-{n}" for n, (row, _, _) in enumerate(tracks)}
    title = f"plmscreen report: run {run}"
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class=\"note\">Store <code>{html.escape(str(Path(store).resolve()))}</code>; generated "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} by plmscreen {screening.__version__}.</p>"]
    if len(runs) > 1:
        others = ", ".join(f"<code>{html.escape(r['run'])}</code> ({html.escape(str(r['model']))})" for r in runs if r["run"] != run)
        parts.append(f"<p class=\"note\">The store holds {len(runs)} runs; this page shows one. Others: {others}. "
                     f"Choose with <code>--run</code>.</p>")

    summary_rows = [
        ("Run", info["run"]), ("Model", info["model"]), ("Model family", info.get("model_family")),
        ("Checkpoint sha256", info["checkpoint_sha256"]),
        ("Input", info["input_path"]), ("Input sha256", info["input_sha256"]), ("Created", info["created_utc"]),
        ("plmscreen version", info["plmscreen_version"]), ("Sequences scored", info["n_sequences"]),
        ("Residues scored", info["n_residues"]), ("Records rejected", info["n_rejected"]),
        ("Sequences with repeats", info["n_with_repeats"]),
        ("Sequences given the partner test", info["n_tested"]), ("Sequences flagged", info["n_flagged"]),
        ("Highest inflation factor", info["max_inflation_factor"]),
        ("Flag rule", None if info["min_inflation_factor"] is None else
         f"inflation factor ≥ {info['min_inflation_factor']:g} and repeat fraction ≥ {info['min_repeat_fraction']:g}"
         + ("" if info["max_qvalue"] is None else
            f" and partner q-value ≤ {info['max_qvalue']:g} (partners vs {info['null_draws']} random co-mask draws, "
            "one-sided Wilcoxon signed-rank, Benjamini-Hochberg across the run)")),
    ]
    summary_rows.append(("Flag calibration", _calibration_note(store, run)))
    parts.append("<h2>Run summary</h2><table class=\"summary\"><tbody>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary_rows) + "</tbody></table>")

    parts.append("<h2>Changes since the previous screen</h2>")
    if changes.since is None:
        parts.append("<p>No earlier run of this screen (same deployment or input name) is in the store.</p>")
    else:
        counts = ", ".join(f"{n} {c.replace('_', ' ')}" for c, n in changes.counts().items())
        parts.append(f"<p>Since run <code>{html.escape(changes.since)}</code>: {html.escape(counts)}.</p>")
        if changes.rows:
            parts.append(_table(changes.rows, [("seq_id", "sequence"), ("change", "change"),
                                               ("flagged_before", "flagged before"), ("flagged", "flagged now"),
                                               ("inflation_factor_before", "inflation factor before"),
                                               ("inflation_factor", "inflation factor now"),
                                               ("pppl_before", "pppl before"), ("pppl", "pppl now")]))

    parts.append(f"<h2>Flagged sequences ({len(flagged)})</h2>")
    if flagged:
        parts.append(_table(flagged, flagged_html_columns(), anchors))
    else:
        parts.append("<p>No sequence was flagged.</p>")

    if flagged:
        parts.append("<p class=\"note\">Net inflation: mean over repeat residues of the log-probability with "
                     "as many random non-partner positions co-masked minus that with the partners co-masked, i.e. the "
                     "inflation beyond what an extra mask costs. Copy-following: how much planting a residue the model "
                     "disfavours in the partner copy raises its probability at the residue (0 = ignores the copy, "
                     "1 = copies it). Both are blank when the screen ran without diagnostics.</p>")
    parts.append("<h2>Inflation factor</h2><p class=\"note\">pppl with repeat partners masked divided by the plain "
                 "pseudo-perplexity; above 1 the repeats make the sequence look more likely than it is.</p>")
    parts.append(f"<figure>{histogram_svg(sequences, info['min_inflation_factor'])}</figure>")

    if tracks:
        more = f" (the {len(tracks)} most inflated of {len(flagged)})" if len(flagged) > len(tracks) else ""
        parts.append(f"<h2>Per-residue tracks{more}</h2><p class=\"note\">Blue: log-probability of each residue "
                     "with only itself masked; orange: with its repeat partners masked too (shaded where lower). "
                     "Shaded bands are repeat copies, arcs join each copy to its partner.</p>")
        for n, (row, track, regions) in enumerate(tracks):
            parts.append(f"<h3 id=\"{anchors[row['seq_id']]}\">{html.escape(row['seq_id'])} "
                         f"<span class=\"flag\">inflation factor {_fmt(row['inflation_factor'])}</span></h3>")
            if regions:
                parts.append(_table(regions, [("region_id", "region"), ("start", "start"), ("end", "end"),
                                              ("partner_start", "partner start"), ("partner_end", "partner end"),
                                              ("identity", "identity"), ("mean_inflation", "mean inflation"),
                                              ("partner_mean_inflation", "partner mean inflation")]))
            parts.append(f"<figure>{track_svg(row['seq_id'], track, regions, f'plmscreen-track-{n}')}</figure>")
    parts.append("</body></html>\n")
    summary = {"run": run, "n_sequences": len(sequences), "n_flagged": len(flagged), "n_tracks": len(tracks)}
    return "".join(parts), summary


def write_report(store: str | Path, out: str | Path, run: str | None = None, max_sequences: int = 25,
                 limits: QueryLimits | None = None) -> dict:
    """Write the report of ``run`` (default: the most recent) to ``out``; returns its summary."""
    page, summary = build_report(store, run, max_sequences, limits)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return {**summary, "path": out}
