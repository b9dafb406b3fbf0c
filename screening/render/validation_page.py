"""The validation page: one plot (PNG) and tables (CSV) per experiment, index.html and report.json.

Files written to the output directory:
- ``index.html``: verdict summary, then one section per experiment (method, expectation, checks with
  their numbers, plot, table), the proteins used and the exact settings;
- ``<experiment>.png``, ``<experiment>.csv`` (per-protein values), ``<experiment>_summary.csv``;
- ``report.json`` (everything on the page, machine-readable) and ``proteins.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from plmscreen.screening.experiments.results import Experiment, ValidationReport  # noqa: E402

SHOWN, NOT_SHOWN = "shown", "not shown"


def _write_csv(rows: list[dict], path: Path) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: reruns give the same bytes
    plt.close(fig)


def _plot_doubling(e: Experiment, ax) -> None:
    keys = ["pppl_single", "pppl_doubled", "pppl_doubled_ablated"]
    for row in e.rows:
        ax.plot(range(3), [row[k] for k in keys], color="0.75", lw=0.8, marker="o", ms=2)
    ax.plot(range(3), [np.mean([r[k] for r in e.rows]) for k in keys], color="k", lw=2, marker="o", label="mean")
    ax.set_xticks(range(3), ["x", "x‖x", "x‖x, partner\nco-masked"])
    ax.set_yscale("log")
    ax.set_ylabel("PPPL (one line per protein)")
    ax.axhline(1, color="tab:red", lw=0.8, ls=":")
    ax.legend()


def _plot_partner_masking(e: Experiment, ax) -> None:
    for copy, colour in ((1, "tab:blue"), (2, "tab:orange")):
        visible, comasked = [], []
        for pair in e.plot_data["residue_pairs"]:
            half = pair.shape[1] // 2
            part = slice(0, half) if copy == 1 else slice(half, 2 * half)
            visible += pair[0, part].tolist()
            comasked += pair[1, part].tolist()
        ax.scatter(comasked, visible, s=4, alpha=0.35, color=colour, label=f"copy {copy}")
    low = min(ax.get_xlim()[0], ax.get_ylim()[0])
    ax.plot([low, 0], [low, 0], color="k", lw=0.8)
    ax.set_xlabel("log P(x_i), partner co-masked")
    ax.set_ylabel("log P(x_i), partner visible")
    ax.legend(title="residues of x‖x")


def _plot_copy_following(e: Experiment, ax) -> None:
    rows = sorted(e.rows, key=lambda r: r["mean_copy_following_index"])
    y = np.arange(len(rows))
    ax.barh(y, [r["mean_copy_following_index"] for r in rows], color="tab:blue", label="mean C_i")
    ax.scatter([r["fraction_argmax_follows_partner"] for r in rows], y, color="k", s=10, zorder=3,
               label="fraction of residues whose argmax is b")
    ax.set_yticks(y, [r["seq_id"].split("|")[1] if "|" in r["seq_id"] else r["seq_id"] for r in rows], fontsize=6)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("copy-following (probability)")
    ax.legend(fontsize=7, loc="lower right")


def _plot_imperfect(e: Experiment, ax) -> None:
    for sid in dict.fromkeys(r["seq_id"] for r in e.rows):
        own = [r for r in e.rows if r["seq_id"] == sid]
        ax.plot([r["actual_identity"] for r in own], [r["mean_inflation"] for r in own], color="0.8", lw=0.7)
    levels = e.summary
    ax.errorbar([r["identity"] for r in levels], [r["mean_inflation"] for r in levels],
                yerr=[[r["mean_inflation"] - r["ci_low"] for r in levels], [r["ci_high"] - r["mean_inflation"] for r in levels]],
                color="k", marker="o", capsize=3, label="mean, 95% bootstrap CI")
    ax.axhline(0, color="tab:red", lw=0.8, ls=":")
    ax.set_xlabel("identity of the second copy")
    ax.set_ylabel("inflation on copy 1 (nats/residue)")
    ax.invert_xaxis()
    ax.legend()


def _plot_unit_length(e: Experiment, ax) -> None:
    for spacer in dict.fromkeys(r["spacer_length"] for r in e.summary):
        cells = [r for r in e.summary if r["spacer_length"] == spacer]
        x = [r["unit_length"] for r in cells]
        y = [r["mean_inflation"] for r in cells]
        line = ax.errorbar(x, y, yerr=[[r["mean_inflation"] - r["ci_low"] for r in cells], [r["ci_high"] - r["mean_inflation"] for r in cells]],
                           marker="", capsize=3, label=f"spacer {spacer}" if spacer else "adjacent copies")
        colour = line[0].get_color()
        ax.scatter(x, y, color=[colour if r["shown"] else "white" for r in cells], edgecolor=colour, zorder=3, s=30)
    ax.set_xscale("log")
    ax.axhline(0, color="tab:red", lw=0.8, ls=":")
    ax.set_xlabel("repeat unit length (residues); hollow marker = not shown")
    ax.set_ylabel("inflation (nats/residue)")
    ax.legend()


def _plot_controls(e: Experiment, ax) -> None:
    labels = ["net inflation\n(random − partner\nco-masked)", "x next to x vs\nnext to shuffle", "inflation in s‖s"]
    checks = e.checks
    x = np.arange(len(checks))
    ax.bar(x, [c.mean for c in checks], yerr=[[c.mean - c.ci_low for c in checks], [c.ci_high - c.mean for c in checks]],
           color=["tab:green" if c.shown else "tab:gray" for c in checks], capsize=4)
    cost = [r["mean_logp_partner_visible"] - r["mean_logp_random_comasked"] for r in e.rows]
    ax.bar([len(checks)], [float(np.mean(cost))], color="tab:purple")
    ax.set_xticks(list(x) + [len(checks)], labels[: len(checks)] + ["extra-mask cost\n(visible − random\nco-masked)"], fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("nats/residue (mean over proteins)")


PLOTS = {
    "doubling": _plot_doubling,
    "partner_masking": _plot_partner_masking,
    "copy_following": _plot_copy_following,
    "imperfect_repeats": _plot_imperfect,
    "unit_length": _plot_unit_length,
    "controls": _plot_controls,
}


def _cell(value) -> str:
    if isinstance(value, bool):
        return SHOWN if value else NOT_SHOWN
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _badge(shown: bool) -> str:
    return f'<span class="{"yes" if shown else "no"}">{SHOWN if shown else NOT_SHOWN}</span>'


def _checks_table(e: Experiment) -> str:
    rows = []
    for c in e.checks:
        sign = f"{c.n_expected_direction}/{c.n}, p = {c.sign_p:.2g}" if c.sign_p is not None else "—"
        role = "" if c.decisive else " <em>(reported, not part of the verdict)</em>"
        rows.append(
            f"<tr><td>{html.escape(c.claim)}{role}<br><small>{html.escape(c.statistic)}</small></td>"
            f"<td>{c.mean:+.3f}</td><td>[{c.ci_low:+.3f}, {c.ci_high:+.3f}]</td><td>{sign}</td>"
            f"<td><small>{html.escape(c.rule)}</small></td><td>{_badge(c.shown)}</td></tr>"
        )
    return ("<table><tr><th>claim (per-protein statistic)</th><th>mean</th><th>95% CI</th>"
            "<th>sign test (one-sided)</th><th>rule</th><th>verdict</th></tr>" + "".join(rows) + "</table>")


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.yes{color:#fff;background:#2a7d2a;padding:1px 6px;border-radius:3px;white-space:nowrap}
.no{color:#fff;background:#a33;padding:1px 6px;border-radius:3px;white-space:nowrap}code{background:#f3f3f3;padding:0 3px}
img{max-width:100%;border:1px solid #eee}section{border-top:2px solid #ddd;margin-top:2em}
"""


def render_html(report: ValidationReport) -> str:
    model, settings = report.model, report.settings
    summary_rows = "".join(
        f'<tr><td><a href="#{e.key}">{html.escape(e.title)}</a></td><td>{html.escape(e.expected)}</td>'
        f"<td>{html.escape(e.observed)}</td><td>{_badge(e.shown)}</td></tr>"
        for e in report.experiments
    )
    sections = []
    for e in report.experiments:
        sections.append(
            f'<section id="{e.key}"><h2>{html.escape(e.title)} {_badge(e.shown)}</h2>'
            f"<p><b>Method.</b> {html.escape(e.method)}</p>"
            f"<p><b>Expected (arXiv 2504.17068).</b> {html.escape(e.expected)}</p>"
            f"<p><b>Observed.</b> {html.escape(e.observed)}</p>"
            f"{_checks_table(e)}"
            f'<img src="{e.plot}" alt="{html.escape(e.title)}">'
            f"{_table(e.summary)}"
            f'<p>Per-protein values: <a href="{e.key}.csv">{e.key}.csv</a>; this table: '
            f'<a href="{e.key}_summary.csv">{e.key}_summary.csv</a>.</p></section>'
        )
    settings_rows = [{"setting": k, "value": v} for k, v in dataclasses.asdict(settings).items()]
    command = html.escape(report.command) if report.command else "(library call: plmscreen.screening.experiments.validate.run_validation)"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>plmscreen validation: {html.escape(model['model_name'])}</title>
<style>{CSS}</style></head><body>
<h1>Does <code>{html.escape(model['model_name'])}</code> copy from repeat partners?</h1>
<p>Validation of the in-context look-up reported by Kantroo, Wagner &amp; Machta (arXiv 2504.17068): a masked
protein LM predicts a masked residue by copying the partner copy of a repeat. Each experiment states the
direction the paper leads us to expect and whether this model shows it.</p>
<p>Model <code>{html.escape(model['model_name'])}</code> ({html.escape(str(model.get('model_family', 'fair-esm')))},
{model.get('num_layers', '?')} layers, embed {model.get('embed_dim', '?')},
{model['num_parameters']:,} parameters), checkpoint sha256 <code>{model['checkpoint_sha256']}</code>.
Proteins: {len(report.proteins)} from <code>{html.escape(Path(report.fasta).name)}</code>
(sha256 <code>{report.fasta_sha256[:16]}…</code>), central crops of {settings.crop_length} residues
for the x‖x experiments (short crops: small models trained on short crops are measured where they work).
plmscreen {html.escape(report.plmscreen_version)}; {report.seconds:.0f} s.</p>
<p>Command: <code>{command}</code></p>
<p><b>Verdict rule.</b> Every statistic is one value per protein. A claim is <i>shown</i> when the mean is at
least the minimum effect in the expected direction ({settings.min_effect:g} nats/residue, i.e. a PPPL factor of
{math.exp(settings.min_effect):.2f}; {settings.min_copy_following:g} for the copy-following probability), the 95%
percentile bootstrap CI of the mean ({settings.n_bootstrap} resamples of proteins) excludes zero, and a one-sided
exact sign test over proteins gives p &lt; {settings.alpha:g}. An experiment is shown when all its decisive claims
are. Inflation = log P(x_i | partner visible) − log P(x_i | partner co-masked), in nats.</p>
<table><tr><th>experiment</th><th>expected</th><th>observed</th><th>verdict</th></tr>{summary_rows}</table>
{''.join(sections)}
<section><h2>Proteins</h2>{_table(report.proteins)}</section>
<section><h2>Settings</h2>{_table(settings_rows)}<p>Everything on this page is also in
<a href="report.json">report.json</a>.</p></section>
</body></html>
"""


def write_validation_page(report: ValidationReport, out_dir: str | Path) -> Path:
    """Write the page, plots and tables; returns the path of index.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for e in report.experiments:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        PLOTS[e.key](e, ax)
        ax.set_title(e.title, fontsize=10)
        e.plot = f"{e.key}.png"
        _save(fig, out / e.plot)
        _write_csv(e.rows, out / f"{e.key}.csv")
        _write_csv(e.summary, out / f"{e.key}_summary.csv")
    _write_csv(report.proteins, out / "proteins.csv")
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=1, default=float) + "\n")
    index = out / "index.html"
    index.write_text(render_html(report))
    return index


def render_comparison_html(reports: list[ValidationReport], pages: list[str]) -> str:
    """One page putting several models side by side on the same constructs: per experiment, each
    model's verdict and headline numbers, linking to each model's own page (``pages``)."""
    heads = "".join(f'<th><a href="{html.escape(page)}">{html.escape(r.model["model_name"])}</a></th>'
                    for r, page in zip(reports, pages))
    model_rows = []
    for label, key in (("family", "model_family"), ("parameters", "num_parameters"), ("layers", "num_layers"),
                       ("window", "max_residues"), ("normalised over", "normalise"),
                       ("checkpoint sha256", "checkpoint_sha256")):
        cells = "".join(f"<td>{_cell(r.model.get(key, ''))}</td>" for r in reports)
        model_rows.append(f"<tr><th>{label}</th>{cells}</tr>")
    rows = []
    for e in reports[0].experiments:
        cells = ""
        for r, page in zip(reports, pages):
            other = r.experiment(e.key)
            cells += (f'<td>{_badge(other.shown)}<br><a href="{html.escape(page)}#{e.key}">'
                      f"{html.escape(other.observed)}</a></td>")
        rows.append(f"<tr><th>{html.escape(e.title)}</th>{cells}</tr>")
    first = reports[0]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>plmscreen validation: {len(reports)} models</title>
<style>{CSS}</style></head><body>
<h1>Do these models copy from repeat partners?</h1>
<p>The same constructs ({len(first.proteins)} proteins from <code>{html.escape(Path(first.fasta).name)}</code>,
sha256 <code>{first.fasta_sha256[:16]}…</code>, seed {first.settings.seed}) scored by each model; each column
links to that model's full page. Verdict rule and methods as on each model's page.</p>
<table><tr><th></th>{heads}</tr>{''.join(model_rows)}</table>
<h2>Experiments</h2>
<table><tr><th>experiment</th>{heads}</tr>{''.join(rows)}</table>
<p>Everything on this page is also in <a href="comparison.json">comparison.json</a>.</p>
</body></html>
"""


def write_comparison_page(reports: list[ValidationReport], out_dir: str | Path, subdirs: list[str]) -> Path:
    """Each report's own page in ``out_dir/<subdir>/``, and ``out_dir/index.html`` comparing them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for report, sub in zip(reports, subdirs):
        write_validation_page(report, out / sub)
    pages = [f"{sub}/index.html" for sub in subdirs]
    comparison = {"models": [{"page": page, "model": r.model, "verdicts": r.verdicts,
                              "observed": {e.key: e.observed for e in r.experiments}}
                             for r, page in zip(reports, pages)]}
    (out / "comparison.json").write_text(json.dumps(comparison, indent=1, default=float) + "\n")
    index = out / "index.html"
    index.write_text(render_comparison_html(reports, pages))
    return index
