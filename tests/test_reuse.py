"""Incremental rescreens (screening/run/reuse.py): sequences already scored in the store are copied,
not scored again, and the run's files equal those of a fresh screen (except provenance)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, write_esm2_checkpoint
from plmscreen.screening.model.checkpoints import load_model
from plmscreen.screening.input import read_fasta
from plmscreen.screening.run import lifecycle, tables
from plmscreen.screening.run.lifecycle import process_shard, run_screen
from plmscreen.screening.run.plan import prepare_run, run_id_for
from plmscreen.screening.run.reuse import find_sources
from plmscreen.screening.run.settings import ScreenSettings
from plmscreen.screening.score.metrics import FlagRule
from plmscreen.screening.score.repeats import RepeatParams
from plmscreen.screening.score.scorer import Scorer
from plmscreen.screening.store import query
from plmscreen.screening.store.runs import delete_run

from store_fixtures import FASTA as REPEATS_FASTA

# A tiny random model cannot copy: its flags come from the effect size alone (q-value gate open).
LENIENT = FlagRule(min_inflation_factor=1.0, min_repeat_fraction=0.05, max_qvalue=1.0)  # flags about half of the repeat carriers
SHARD_TOKENS = 12_000  # several shards per run


def fasta_records(text: str) -> dict[str, str]:
    records = {}
    for block in text.split(">")[1:]:
        header, *lines = block.strip().splitlines()
        records[header.split()[0]] = "".join(lines)
    return records


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
    return path


@contextlib.contextmanager
def recording():
    """The sequences the model scores, those whose copy-following diagnostics and partner-test null
    co-masks are computed, and model loads."""
    seen = {"scored": [], "diagnosed": [], "tested": [], "loads": 0}
    score, diagnose, test, load = Scorer.score, tables.copy_following, tables.null_comask, lifecycle.load_planned_backend

    def spy_score(self, sequences, *args, **kwargs):
        seen["scored"] += list(sequences)
        return score(self, sequences, *args, **kwargs)

    def spy_diagnose(scorer, sequences, *args, **kwargs):
        seen["diagnosed"] += list(sequences)
        return diagnose(scorer, sequences, *args, **kwargs)

    def spy_test(scorer, sequences, *args, **kwargs):
        seen["tested"] += list(sequences)
        return test(scorer, sequences, *args, **kwargs)

    def spy_load(*args, **kwargs):
        seen["loads"] += 1
        return load(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Scorer, "score", spy_score)
        mp.setattr(tables, "copy_following", spy_diagnose)
        mp.setattr(tables, "null_comask", spy_test)
        mp.setattr(lifecycle, "load_planned_backend", spy_load)
        yield seen


def run_tables(store: Path, run_id: str) -> dict[str, list[dict]]:
    """Every row of a run, table by table, in file order (part files by shard)."""
    return {t: [row for p in sorted(store.glob(f"{t}/model=*/run={run_id}/part-*.parquet")) for row in pq.read_table(p).to_pylist()]
            for t in ("residues", "sequences", "repeats")}


def assert_same_rows(got: dict, want: dict) -> None:
    """Same rows in the same order with the same values (floats within batching noise), provenance aside."""
    for table in want:
        assert len(got[table]) == len(want[table]), table
        for a, b in zip(got[table], want[table]):
            assert a.keys() == b.keys()
            for column in b:
                if column == "reused_from_run":
                    continue
                x, y = a[column], b[column]
                if isinstance(y, float):
                    assert x == pytest.approx(y, rel=1e-5, abs=1e-5), (table, a["seq_id"], column)
                elif isinstance(y, list) and y and isinstance(y[0], float):
                    assert x == pytest.approx(y, abs=1e-6), (table, a["seq_id"], column)
                else:
                    assert x == y, (table, a["seq_id"], column, x, y)


@pytest.fixture(scope="module")
def releases(tmp_path_factory, tiny_checkpoint):
    """Two releases of one proteome in one store; the second with one sequence edited, one added
    and one removed, screened with reuse; and fresh (--no-reuse) screens of the second release."""
    tmp = tmp_path_factory.mktemp("releases")
    real = read_fasta(REPO / "examples" / "sample.fasta").records
    first = fasta_records(REPEATS_FASTA) | {r.seq_id: r.sequence[:80] for r in real[5:9]}
    second = dict(first)
    del second["plain2"]
    second["tri"] = second["tri"].replace("PPLKDEM", "PPLRDEM")
    second[real[12].seq_id] = real[12].sequence[:80]
    settings = ScreenSettings(model=str(tiny_checkpoint), device="cpu", flag=LENIENT, shard_tokens=SHARD_TOKENS)
    strict = dataclasses.replace(settings, flag=FlagRule(min_inflation_factor=1.0, min_repeat_fraction=0.5, max_qvalue=1.0))
    store = tmp / "store"
    fasta_1 = write_fasta(tmp / "2026-11" / "proteome.fasta", first)
    fasta_2 = write_fasta(tmp / "2026-12" / "proteome.fasta", second)
    run_1 = run_screen(fasta_1, store, settings)
    with recording() as seen:
        run_2 = run_screen(fasta_2, store, settings)
    fresh = run_screen(fasta_2, tmp / "fresh", dataclasses.replace(settings, reuse=False))
    fresh_strict = run_screen(fasta_2, tmp / "fresh_strict", dataclasses.replace(strict, reuse=False))
    return dict(tmp=tmp, store=store, fasta_2=fasta_2, first=first, second=second, settings=settings, strict=strict,
                run_1=run_1, run_2=run_2, seen=seen, fresh=fresh, fresh_strict=fresh_strict,
                new={"tri": second["tri"], real[12].seq_id: second[real[12].seq_id]})


def test_a_rescreen_scores_only_new_sequences(releases):
    run_2, seen, new = releases["run_2"], releases["seen"], releases["new"]
    assert sorted(seen["scored"]) == sorted(new.values()), "only the edited and the added sequence are scored"
    assert run_2.n_scored == len(releases["second"])
    assert (run_2.n_model_scored, run_2.n_reused, run_2.n_duplicates) == (2, len(releases["second"]) - 2, 0)
    assert releases["run_1"].n_reused == 0 and releases["fresh"].n_reused == 0
    assert releases["fresh"].n_model_scored == len(releases["second"])
    run_json = json.loads((releases["store"] / "runs" / run_2.run_id / "run.json").read_text())
    assert (run_json["n_reused"], run_json["n_duplicates"]) == (len(releases["second"]) - 2, 0)


def test_a_rescreen_writes_what_a_fresh_screen_writes(releases):
    got = run_tables(releases["store"], releases["run_2"].run_id)
    want = run_tables(releases["tmp"] / "fresh", releases["fresh"].run_id)
    assert_same_rows(got, want)
    assert [r["seq_id"] for r in got["sequences"]] == list(releases["second"])
    assert any(r["effect_flagged"] for r in got["sequences"]) and any(r["mean_copy_following"] is not None for r in got["sequences"])
    assert releases["run_2"].run_id == releases["fresh"].run_id, "--no-reuse names the same run"


def test_provenance_is_queryable_in_sql(releases):
    store, run_1, run_2, new = releases["store"], releases["run_1"], releases["run_2"], releases["new"]
    rows = query(store, f"SELECT seq_id, reused_from_run FROM sequences WHERE run = '{run_2.run_id}'").to_pylist()
    assert {r["seq_id"]: r["reused_from_run"] for r in rows} == {
        seq_id: None if seq_id in new else run_1.run_id for seq_id in releases["second"]}
    # Each run is complete on its own: the copied residues are in the new run's partition.
    counts = query(store, "SELECT run, count(*) AS n FROM residues GROUP BY run").to_pylist()
    assert {r["run"]: r["n"] for r in counts}[run_2.run_id] == sum(len(s) for s in releases["second"].values())
    runs = query(store, f"SELECT n_scored, n_reused, n_duplicates FROM runs WHERE run = '{run_2.run_id}'").to_pylist()
    assert runs == [{"n_scored": len(releases["second"]), "n_reused": len(releases["second"]) - 2, "n_duplicates": 0}]


def test_changing_only_the_flag_rule_scores_nothing(releases, tmp_path):
    """Stricter rule: nothing scored, no model loaded, the flags of a fresh screen under that rule.
    Then the lenient rule again on a store that only has the strict run: nothing scored, and only
    the newly flagged sequences get their diagnostics computed."""
    store = tmp_path / "store"
    shutil.copytree(releases["store"], store)
    with recording() as seen:
        strict = run_screen(releases["fasta_2"], store, releases["strict"])
    assert seen == {"scored": [], "diagnosed": [], "tested": [], "loads": 0}
    assert strict.n_reused == len(releases["second"]) and strict.run_id != releases["run_2"].run_id
    got = run_tables(store, strict.run_id)
    assert_same_rows(got, run_tables(releases["tmp"] / "fresh_strict", releases["fresh_strict"].run_id))
    assert {r["reused_from_run"] for r in got["sequences"]} == {releases["run_1"].run_id, releases["run_2"].run_id}

    # The lenient rule on a store whose only run used the strict one: more flagged, diagnostics needed.
    only_strict = tmp_path / "only_strict"
    shutil.copytree(releases["tmp"] / "fresh_strict", only_strict)
    flagged_before = {r["seq_id"] for r in run_tables(only_strict, releases["fresh_strict"].run_id)["sequences"] if r["effect_flagged"]}
    with recording() as seen:
        lenient = run_screen(releases["fasta_2"], only_strict, releases["settings"])
    got = run_tables(only_strict, lenient.run_id)
    newly = {r["seq_id"] for r in got["sequences"] if r["effect_flagged"]} - flagged_before
    assert newly, "the lenient rule must flag more sequences"
    assert seen["scored"] == [] and sorted(seen["diagnosed"]) == sorted(releases["second"][s] for s in newly)
    assert lenient.n_rediagnosed == len(newly)
    assert_same_rows(got, run_tables(releases["tmp"] / "fresh", releases["fresh"].run_id))


def test_identical_sequences_in_one_input_are_scored_once(tmp_path, tiny_checkpoint):
    records = fasta_records(REPEATS_FASTA)
    records["doubled_again"] = records["doubled"]  # same shard as its first copy
    records["filler"] = "MKVLAAGIVGLLLAGCSSHKEEPQ" * 2
    records["single_again"] = records["single"]  # a later shard
    fasta = write_fasta(tmp_path / "in.fasta", records)
    settings = ScreenSettings(model=str(tiny_checkpoint), device="cpu", flag=LENIENT, shard_tokens=SHARD_TOKENS)
    with recording() as seen:
        once = run_screen(fasta, tmp_path / "reuse", settings)
    assert sorted(seen["scored"]) == sorted(set(records.values())), "each distinct sequence scored once"
    assert (once.n_model_scored, once.n_reused, once.n_duplicates) == (len(records) - 2, 0, 2)
    with recording() as seen:
        fresh = run_screen(fasta, tmp_path / "fresh", dataclasses.replace(settings, reuse=False))
    assert sorted(seen["scored"]) == sorted(records.values()), "--no-reuse scores every record"
    got = run_tables(tmp_path / "reuse", once.run_id)
    shards = {p.name for p in (tmp_path / "reuse").glob("sequences/model=*/run=*/part-*.parquet")}
    assert len(shards) >= 3
    assert_same_rows(got, run_tables(tmp_path / "fresh", fresh.run_id))
    provenance = {r["seq_id"]: r["reused_from_run"] for r in got["sequences"]}
    assert provenance == {k: once.run_id if k.endswith("_again") else None for k in records}
    again = [r for r in got["residues"] if r["seq_id"] == "doubled_again"]
    assert len(again) == len(records["doubled"]) and [r["aa"] for r in again] == list(records["doubled"])


def test_cli_no_reuse_and_the_summary_counts(tmp_path, tiny_checkpoint):
    import subprocess
    import sys

    fasta = write_fasta(tmp_path / "in.fasta", fasta_records(REPEATS_FASTA) | {"doubled_again": fasta_records(REPEATS_FASTA)["doubled"]})

    def screen(*options):
        result = subprocess.run([sys.executable, "-m", "plmscreen.cli.main", "screen", str(fasta), "--in-process", "--no-progress",
                                 "--out", str(tmp_path / "o"), "--model", str(tiny_checkpoint), "--device", "cpu", *options],
                                capture_output=True, text=True, env={"PLMSCREEN_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "Sequences: 8 scored, 0 reused from earlier runs, 1 copied from identical sequences of this input." in screen()
    # Another flag rule would copy all 9 from the first run (test_changing_only_the_flag_rule_scores_nothing).
    assert "Sequences: 9 scored, 0 reused from earlier runs, 0 copied" in screen("--min-inflation-factor", "1.5", "--no-reuse")


def test_a_resumed_rescreen_whose_sources_vanish_scores_them_and_writes_each_sequence_once(releases, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(releases["store"], store)
    settings = releases["strict"]
    plan = prepare_run(releases["fasta_2"], store, settings)
    assert len(plan.shards) >= 3 and set(plan.reuse_sources) == {r.sha256 for r in plan.iter_records()}
    scorer = lambda: Scorer(load_model(str(settings.model), device="cpu"), settings.scoring)  # noqa: E731
    with plan.open_catalog() as catalog:
        first = process_shard(scorer, plan, 0, catalog)
        assert (first.n_scored, first.n_reused) == (0, first.n_sequences)
        for run in (releases["run_1"].run_id, releases["run_2"].run_id):
            delete_run(store, run, catalog)  # the sources go while the run is under way
        rest = [process_shard(scorer, plan, i, catalog) for i in list(plan.shards)[1:]]
    assert all(m.n_scored == m.n_sequences and m.n_reused == 0 for m in rest)
    resumed = run_screen(releases["fasta_2"], store, settings)
    assert resumed.run_id == plan.run_id and resumed.n_shards_skipped == resumed.n_shards
    got = run_tables(store, plan.run_id)
    assert_same_rows(got, run_tables(releases["tmp"] / "fresh_strict", releases["fresh_strict"].run_id))
    provenance = [r["reused_from_run"] for r in got["sequences"]]
    assert None not in provenance[: first.n_sequences] and set(provenance[first.n_sequences :]) == {None}


def test_only_the_same_checkpoint_parameters_and_schema_are_reused(releases, tmp_path):
    store, settings, run_2 = releases["store"], releases["settings"], releases["run_2"]
    shas = {r.sha256 for r in read_fasta(releases["fasta_2"]).records}
    checkpoint_sha = json.loads((store / "runs" / run_2.run_id / "run.json").read_text())["checkpoint_sha256"]
    assert set(find_sources(store, checkpoint_sha, settings, shas)) == shas
    sources = find_sources(store, checkpoint_sha, dataclasses.replace(settings, flag=FlagRule(2.0), diagnostics=False), shas)
    assert set(sources) == shas, "the flag rule and diagnostics are not part of the key"
    assert find_sources(store, "0" * 64, settings, shas) == {}
    assert find_sources(store, checkpoint_sha, dataclasses.replace(settings, repeats=RepeatParams(min_identity=0.9)), shas) == {}
    assert find_sources(store, checkpoint_sha, dataclasses.replace(settings, mode="triage"), shas) == {}
    new_shas = {r.sha256 for r in read_fasta(releases["fasta_2"]).records if r.seq_id in releases["new"]}
    assert find_sources(store, checkpoint_sha, settings, shas, exclude_run=run_2.run_id).keys() == shas - new_shas
    # Triage masks only what the repeat-fraction threshold lets through: that threshold is in its key.
    triage = dataclasses.replace(settings, mode="triage")
    assert triage.reuse_key() != dataclasses.replace(triage, flag=FlagRule(1.0, 0.5)).reuse_key()
    assert triage.reuse_key() == dataclasses.replace(triage, flag=FlagRule(1.5, 0.05)).reuse_key()
    assert run_id_for("i" * 64, "c" * 64, settings) == run_id_for("i" * 64, "c" * 64, dataclasses.replace(settings, reuse=False))
    # Files of an older schema (or another plmscreen version) are never sources.
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    for path in copy.glob("sequences/model=*/run=*/part-*.parquet"):
        table = pq.read_table(path)
        meta = dict(table.schema.metadata)
        meta[b"plmscreen"] = json.dumps({**json.loads(meta[b"plmscreen"]), "plmscreen_version": "0.0.1"}).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
    assert find_sources(copy, checkpoint_sha, settings, shas) == {}


def test_another_checkpoint_scores_everything(releases, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(releases["store"], store)
    other = write_esm2_checkpoint(tmp_path / "w" / "esm2_t2_tiny_b.pt", seed=1)
    with recording() as seen:
        summary = run_screen(releases["fasta_2"], store, dataclasses.replace(releases["settings"], model=str(other)))
    assert sorted(seen["scored"]) == sorted(releases["second"].values()) and summary.n_reused == 0
