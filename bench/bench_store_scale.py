"""A store that stays fast: synthetic stores at human-proteome size and larger, and the latency and
peak memory of every named query, ``plmscreen flagged`` and ``plmscreen report`` on them.

Building (``build``): a synthetic FASTA of N sequences whose lengths follow the human reference
proteome's (log-normal, median 415, mean 560 residues, clipped to 30..35,000: ~20,000 sequences make
~11 M residues) is planned and registered by ``prepare_run`` as a real screen is (catalog, shards,
input copy); each shard's tables are synthetic numbers in the real schema (``schema/arrow.py``),
summarised by the real ``summarize`` (so ``effect_flagged`` follows the flag rule; the run-wide
q-values and flags come from the real ``finalize_run``), written by the
store's own ``write_shard`` and marked done in the catalog, and ``finalize_run`` writes run.json and
the views. About 20% of sequences get a tandem repeat (one region pair, units of 15-60 residues).
``--runs 2`` adds a second run of the same sequences with other numbers (a weekly rescreen), which
``compare_runs`` and ``changes`` compare.

Measuring (``measure``): each named query in its own process (``probe``): the store opened (views
refreshed, schema versions checked), the query run twice; wall times of both runs and the
process's peak RSS (/usr/bin/time). ``plmscreen flagged`` and ``plmscreen report`` as whole
commands (their wall time includes the CLI's start-up, also measured alone as ``plmscreen --version``).

    python bench/bench_store_scale.py build --sequences 20000 --store /tmp/store_human
    python bench/bench_store_scale.py measure --store /tmp/store_human --label human
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import RESULTS_DIR, machine, write_checkpoint

from plmscreen.schema.arrow import REPEATS_SCHEMA, RESIDUES_SCHEMA, SEQUENCES_SCHEMA

PLMSCREEN = Path(sys.executable).with_name("plmscreen")
HUMAN_MEDIAN, HUMAN_MEAN = 415.0, 560.0


def human_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    sigma = np.sqrt(2 * np.log(HUMAN_MEAN / HUMAN_MEDIAN))
    return np.clip(rng.lognormal(np.log(HUMAN_MEDIAN), sigma, n), 30, 35_000).astype(np.int64)


def write_fasta(path: Path, n: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
    lengths = human_lengths(rng, n)
    with open(path, "wb") as fh:
        for lo in range(0, n, 10_000):
            chunk = lengths[lo:lo + 10_000]
            pool = alphabet[rng.integers(0, 20, int(chunk.sum()))].tobytes()
            out, at = [], 0
            for k, length in enumerate(chunk.tolist()):
                seq = pool[at:at + length]
                at += length
                out.append(b">SYN%07d synthetic human-like\n" % (lo + k + 1))
                out += [seq[i:i + 60] + b"\n" for i in range(0, length, 60)]
            fh.write(b"".join(out))
    return int(lengths.sum())


def _list_column(values: list[np.ndarray], kind: pa.DataType) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
    flat = np.concatenate(values) if values else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, kind))


def synthetic_tables(records, rng: np.random.Generator, rule):
    """One shard's residues, sequences and repeats tables: synthetic numbers, real schema and summaries."""
    from plmscreen.screening.run.tables import ShardTables
    from plmscreen.screening.score.metrics import summarize

    cols = {name: [] for name in RESIDUES_SCHEMA.names}
    seq_rows, repeat_rows = [], []
    for record in records:
        length = len(record.sequence)
        unmasked = -np.abs(rng.normal(1.2, 0.7, length))
        masked = unmasked - np.abs(rng.normal(1.0, 0.5, length))
        partners = [np.zeros(0, np.int32)] * length
        partnered = np.zeros(length, bool)
        ablated = np.full(length, np.nan)
        regions = []
        if length >= 80 and rng.random() < 0.2:
            unit = int(rng.integers(15, min(60, length // 3) + 1))
            a = int(rng.integers(1, length - 2 * unit + 2))
            b = a + unit
            for i in range(unit):
                partners[a - 1 + i] = np.array([b + i], np.int32)
                partners[b - 1 + i] = np.array([a + i], np.int32)
            partnered[a - 1:b - 1 + unit] = True
            ablated[partnered] = masked[partnered] - rng.normal(rng.uniform(0, 1.5), 0.3, int(partnered.sum()))
            regions.append({"seq_id": record.seq_id, "region_id": 1, "start": a, "end": b - 1, "partner_start": b,
                            "partner_end": b + unit - 1, "identity": float(rng.uniform(0.3, 1.0)),
                            "score": float(rng.uniform(20, 200)), "pvalue": float(rng.uniform(0, 1e-3))})
        summary = summarize(masked, unmasked, ablated, rule, partnered)
        inflation = masked - ablated
        diagnostics = summary.effect_flagged
        net = np.where(partnered, rng.normal(0.2, 0.2, length), np.nan) if diagnostics else np.full(length, np.nan)
        copy = np.where(partnered, rng.uniform(0, 1, length), np.nan) if diagnostics else np.full(length, np.nan)
        cols["seq_id"].append(np.full(length, record.seq_id, dtype=object))
        cols["pos"].append(np.arange(1, length + 1, dtype=np.int32))
        cols["aa"].append(np.array(list(record.sequence), dtype=object))
        cols["logp_masked"].append(masked)
        cols["logp_unmasked"].append(unmasked)
        cols["partner_pos"] += partners
        cols["logp_ablated"].append(ablated)
        cols["windowed"].append(np.full(length, length > 1022))
        cols["inflation"].append(inflation)
        cols["partner_region"] += [np.ones(len(p), np.int32) for p in partners]
        cols["partner_identity"] += [np.full(len(p), 0.8, np.float32) for p in partners]
        cols["logp_random_comask"].append(ablated + net)
        cols["net_inflation"].append(net)
        cols["copy_following"].append(copy)
        cols["planted_residue"].append(np.where(partnered & diagnostics, "W", None).astype(object))
        seq_rows.append({"seq_id": record.seq_id, **dataclasses.asdict(summary), "n_repeat_regions": len(regions),
                         "windowed": length > 1022, "sequence_sha256": record.sha256, "mode": "exact",
                         # A synthetic partner-test p-value for the sequences the rule's effect size passes.
                         "partner_pvalue": float(rng.uniform(0, 0.02)) if diagnostics else None,
                         "mean_net_inflation": float(np.nanmean(net)) if diagnostics else None,
                         "mean_copy_following": float(np.nanmean(copy)) if diagnostics else None, "reused_from_run": None})
        repeat_rows += regions
    arrays = []
    for field in RESIDUES_SCHEMA:
        if pa.types.is_list(field.type):
            arrays.append(_list_column(cols[field.name], field.type.value_type))
        else:
            values = np.concatenate(cols[field.name])
            arrays.append(pa.array(values, field.type, from_pandas=True))
    residues = pa.Table.from_arrays(arrays, schema=RESIDUES_SCHEMA)
    return ShardTables(residues, pa.Table.from_pylist(seq_rows, schema=SEQUENCES_SCHEMA),
                       pa.Table.from_pylist(repeat_rows, schema=REPEATS_SCHEMA))


def build(args) -> None:
    from plmscreen.screening.run.lifecycle import ShardManifest, finalize_run
    from plmscreen.screening.run.plan import prepare_run
    from plmscreen.screening.run.settings import ScreenSettings
    from plmscreen.screening.run.tables import write_shard

    args.store.mkdir(parents=True, exist_ok=True)
    work = args.store.parent / f"{args.store.name}-inputs"
    work.mkdir(exist_ok=True)
    checkpoint = write_checkpoint(2, 32, 4, work / "tiny_esm2.pt")
    fasta = work / "input.fasta"
    started = time.perf_counter()
    residues = write_fasta(fasta, args.sequences, seed=args.sequences)
    info = {"sequences": args.sequences, "residues": residues, "runs": []}
    for run_number in range(args.runs):
        # Each run gets its own parameters (and so its own run id): a rescreen with another rule.
        settings = ScreenSettings(model=str(checkpoint), device="cpu", reuse=False, shard_tokens=args.shard_tokens,
                                  flag={"min_inflation_factor": 1.05 + 0.01 * run_number})
        plan = prepare_run(fasta, args.store, settings)
        rng = np.random.default_rng(1000 + run_number)
        manifests = []
        with plan.open_catalog() as catalog:
            for shard in sorted(plan.shards):
                catalog.claim_shard(plan.run_id, shard)
                records = plan.shard_records(shard)
                t0 = time.perf_counter()
                tables = synthetic_tables(records, rng, plan.settings.flag)
                files = write_shard(tables, plan.store, plan.model_name, plan.run_id, shard, plan.metadata)
                catalog.mark_shard_done(plan.run_id, shard, [str(f) for f in files], time.perf_counter() - t0)
                manifests.append(ShardManifest(shard, len(records), plan.shard_residues(shard),
                                               sum(tables.sequences.column("effect_flagged").to_pylist()),
                                               tuple(str(f) for f in files), time.perf_counter() - t0, False))
        summary = finalize_run(plan, manifests, [], time.perf_counter() - started,
                               {"model_name": plan.model_name, "checkpoint_sha256": plan.checkpoint_sha256})
        info["runs"].append({"run_id": plan.run_id, "shards": len(plan.shards), "flagged": len(summary.flagged)})
        print(json.dumps(info["runs"][-1]), flush=True)
    info["build_s"] = round(time.perf_counter() - started, 1)
    info["bytes"] = {table: sum(p.stat().st_size for p in (args.store / table).rglob("part-*.parquet"))
                     for table in ("residues", "sequences", "repeats")}
    info["part_files"] = sum(1 for _ in args.store.rglob("part-*.parquet"))
    (args.store / "synthetic.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info), flush=True)


def probe(args) -> None:
    """One named query in this process: open, run twice, report seconds (RSS comes from /usr/bin/time)."""
    from plmscreen.screening.store import open_store

    params = dict(p.split("=", 1) for p in args.param)
    if args.query == "report":  # the HTML report's queries and rendering, without the CLI's start-up
        from plmscreen.screening.render.report import write_report

        t0 = time.perf_counter()
        info = write_report(args.store, args.store.parent / "report_probe.html", run=params.get("run"))
        print("PROBE " + json.dumps({"open_s": 0.0, "first_s": round(time.perf_counter() - t0, 3), "second_s": None,
                                     "rows": info["n_flagged"]}))
        return
    t0 = time.perf_counter()
    with open_store(args.store) as st:
        opened = time.perf_counter() - t0
        times, rows = [], 0
        for _ in range(2):
            t = time.perf_counter()
            rows = st.named(args.query, **params).num_rows
            times.append(time.perf_counter() - t)
    print("PROBE " + json.dumps({"open_s": round(opened, 3), "first_s": round(times[0], 3), "second_s": round(times[1], 3), "rows": rows}))


def timed(cmd: list[str]) -> tuple[float, float, str]:
    result = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], capture_output=True, text=True)
    match = re.search(r"TIME ([\d.]+) (\d+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return float(match.group(1)), int(match.group(2)) / 1024, result.stdout


def measure(args) -> None:
    from plmscreen.screening.store import named_queries

    info = json.loads((args.store / "synthetic.json").read_text())
    runs = [r["run_id"] for r in info["runs"]]
    run, since = runs[-1], runs[0]
    from plmscreen.screening.store import open_store

    with open_store(args.store) as st:
        flagged_id = st.sql(f"SELECT seq_id FROM sequences WHERE run = '{run}' AND flagged ORDER BY seq_id LIMIT 1").column(0)[0].as_py()
    values = {"run": run, "run_a": since, "run_b": run, "since": since, "seq_id": flagged_id}
    rows = []
    for name, named in sorted(named_queries().items()):
        params = [f"{p.name}={values[p.name]}" for p in named.params if p.name in values]
        wall, rss, out = timed([sys.executable, __file__, "probe", "--store", str(args.store), "--query", name,
                                *[a for p in params for a in ("--param", p)]])
        probe_result = json.loads(out.split("PROBE ", 1)[1])
        rows.append({"what": f"query {name}", "params": params, **probe_result, "process_wall_s": wall, "peak_rss_mib": round(rss)})
        print(json.dumps(rows[-1]), flush=True)
    wall, rss, out = timed([sys.executable, __file__, "probe", "--store", str(args.store), "--query", "report", "--param", f"run={run}"])
    rows.append({"what": "report (write_report in-process, 25 residue tracks)", **json.loads(out.split("PROBE ", 1)[1]),
                 "process_wall_s": wall, "peak_rss_mib": round(rss)})
    print(json.dumps(rows[-1]), flush=True)
    startup, startup_rss, _ = timed([str(PLMSCREEN), "--version"])
    rows.append({"what": "plmscreen --version (CLI start-up)", "process_wall_s": startup, "peak_rss_mib": round(startup_rss)})
    wall, rss, _ = timed([str(PLMSCREEN), "flagged", str(args.store), "--run", run, "--format", "csv", "--out",
                          str(args.store.parent / "flagged.csv")])
    rows.append({"what": "plmscreen flagged --run", "process_wall_s": wall, "peak_rss_mib": round(rss)})
    wall, rss, _ = timed([str(PLMSCREEN), "flagged", str(args.store), "--format", "csv", "--out", str(args.store.parent / "flagged_all.csv")])
    rows.append({"what": "plmscreen flagged (every run)", "process_wall_s": wall, "peak_rss_mib": round(rss)})
    wall, rss, _ = timed([str(PLMSCREEN), "report", str(args.store), "--run", run, "--out", str(args.store.parent / "report.html")])
    rows.append({"what": "plmscreen report --run", "process_wall_s": wall, "peak_rss_mib": round(rss)})
    for row in rows[-4:]:
        print(json.dumps(row), flush=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["machine"] = machine()
    results[args.label] = {"store": {k: v for k, v in info.items() if k != "runs"}, "runs": info["runs"], "measurements": rows}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {args.out}")


def markdown(r: dict) -> str:
    labels = [k for k in r if k not in ("machine", "notes")]
    lines = ["# Query latency on synthetic stores", "",
             f"Machine: {r['machine']} (shared with other jobs while measured: timings are upper bounds). "
             "Script: `bench/bench_store_scale.py` (build, measure). Each named query runs in its own process: "
             "'open' is `open_store` (views refreshed, every file's schema version read), then the query twice "
             "(first, second); peak RSS of that process. `flagged` and `report` are whole CLI commands (their wall "
             "includes the CLI's start-up, measured alone as `plmscreen --version`).", ""]
    for label in labels:
        st = r[label]["store"]
        lines.append(f"- **{label}**: {st['sequences']:,} sequences, {st['residues']:,} residue rows, {st['part_files']:,} part files "
                     f"at build, {sum(st['bytes'].values()) / 1e6:.0f} MB ({', '.join(f'{k} {v / 1e6:.0f} MB' for k, v in st['bytes'].items())}).")
    lines += ["", "| what | " + " | ".join(f"{label}: open / first / second (s), RSS MiB" for label in labels) + " |",
              "|---|" + "---|" * len(labels)]
    whats = list(dict.fromkeys(m["what"] for label in labels for m in r[label]["measurements"]))
    for what in whats:
        cells = []
        for label in labels:
            m = next((m for m in r[label]["measurements"] if m["what"] == what), None)
            if m is None:
                cells.append("")
            elif "first_s" in m and m.get("second_s") is None:
                cells.append(f"{m['first_s']:.2f} (one run), {m['peak_rss_mib']}")
            elif "first_s" in m:
                cells.append(f"{m['open_s']:.2f} / {m['first_s']:.2f} / {m['second_s']:.2f}, {m['peak_rss_mib']}")
            else:
                cells.append(f"{m['process_wall_s']:.1f} (whole process), {m['peak_rss_mib']}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    if r.get("notes"):
        lines += ["", "## What it shows", ""] + [f"- {note}" for note in r["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--sequences", type=int, default=20_000)
    b.add_argument("--runs", type=int, default=2)
    b.add_argument("--shard-tokens", type=int, default=None,
                   help="shard size (default: what a screen without a cluster plans, <= 4,000,000 tokens a shard)")
    b.add_argument("--store", type=Path, required=True)
    m = sub.add_parser("measure")
    m.add_argument("--store", type=Path, required=True)
    m.add_argument("--label", required=True)
    m.add_argument("--out", type=Path, default=RESULTS_DIR / "store_scale.json")
    p = sub.add_parser("probe")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--query", required=True)
    p.add_argument("--param", action="append", default=[])
    args = parser.parse_args()
    {"build": build, "measure": measure, "probe": probe}[args.command](args)


if __name__ == "__main__":
    main()
