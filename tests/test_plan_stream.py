"""Planning without holding the input: shards are byte spans of the run's input copy, a task reads
only its own records, the catalog gets every sequence once, and the shard count stays bounded."""

from __future__ import annotations

import gzip
import hashlib
import pickle

import pytest

from conftest import example_fasta
from plmscreen.screening.errors import InputError
from plmscreen.screening.input import read_fasta
from plmscreen.screening.run import plan as plan_module
from plmscreen.screening.run.plan import prepare_run, run_id_for
from plmscreen.screening.run.settings import ScreenSettings
from plmscreen.screening.store.layout import run_input_path


def settings_for(checkpoint, **changes) -> ScreenSettings:
    return ScreenSettings(model=str(checkpoint), device="cpu", **changes)


def test_shards_are_spans_that_read_back_every_valid_record_once(tmp_path, tiny_checkpoint):
    fasta = example_fasta(tmp_path / "in.fasta", 32)
    # Rejected records between valid ones: the spans must skip them.
    records = fasta.read_text().split(">")[1:]
    records[3:3] = ["bad\nMK1V\n"]
    records[10:10] = ["bad\nMKV\n"]  # valid: the first 'bad' was rejected, so this is no duplicate
    fasta.write_text("".join(">" + r for r in records) + ">dup\nMKV\n>dup\nWWW\n")
    want = read_fasta(fasta)
    assert [(r.record_number, r.seq_id) for r in want.rejects] == [(4, "bad"), (36, "dup")]
    plan = prepare_run(fasta, tmp_path / "store", settings_for(tiny_checkpoint, shard_tokens=40_000), skip_invalid=True)
    assert not hasattr(plan, "records") and plan.n_records == len(want.records)
    assert len(plan.shards) >= 5
    got = [r for i in sorted(plan.shards) for r in plan.shard_records(i)]
    assert [(r.seq_id, r.sequence, r.record_number) for r in got] == \
        [(r.seq_id, r.sequence, r.record_number) for r in want.records]
    assert sum(plan.shard_residues(i) for i in plan.shards) == sum(len(r.sequence) for r in want.records)
    # The catalog holds every input sequence once, in its shard, by sha256.
    with plan.open_catalog() as catalog:
        registered = catalog.input_sequences(plan.run_id)
    assert [(seq_id, sha) for seq_id, _, sha in registered] == [(r.seq_id, r.sha256) for r in want.records]
    for seq_id, shard, _ in registered:
        assert seq_id in {r.seq_id for r in plan.shard_records(shard)}
    # The run is still named by the input's bytes.
    assert plan.input_sha256 == hashlib.sha256(fasta.read_bytes()).hexdigest()
    assert plan.run_id == run_id_for(plan.input_sha256, plan.checkpoint_sha256, plan.settings)


def test_a_gzipped_input_plans_the_same_run_shards_from_its_decompressed_copy(tmp_path, tiny_checkpoint):
    fasta = example_fasta(tmp_path / "in.fasta", 12)
    gz = tmp_path / "in.fasta.gz"
    gz.write_bytes(gzip.compress(fasta.read_bytes()))
    settings = settings_for(tiny_checkpoint, shard_tokens=40_000)
    plain, packed = prepare_run(fasta, tmp_path / "a", settings), prepare_run(gz, tmp_path / "b", settings)
    assert packed.input_sha256 == hashlib.sha256(gz.read_bytes()).hexdigest() != plain.input_sha256
    assert packed.shards == plain.shards
    assert run_input_path(packed.store, packed.run_id).read_bytes() == fasta.read_bytes()
    assert [r.seq_id for r in packed.iter_records()] == [r.seq_id for r in plain.iter_records()]


def test_what_a_task_is_sent_does_not_grow_with_the_input(tmp_path, tiny_checkpoint):
    small, large = example_fasta(tmp_path / "small.fasta", 8), tmp_path / "large.fasta"
    large.write_text("".join(f">copy{k}_{line[1:]}" if line.startswith(">") else line
                             for k in range(40) for line in small.read_text().splitlines(keepends=True)))
    settings = settings_for(tiny_checkpoint, shard_tokens=30_000, reuse=False)
    sizes = {}
    for name, path in (("small", small), ("large", large)):
        plan = prepare_run(path, tmp_path / name, settings)
        sizes[name] = (len(plan.shards), max(len(pickle.dumps(plan.for_shard(i))) for i in plan.shards))
    assert sizes["large"][0] >= 30 * sizes["small"][0]
    assert sizes["large"][1] < 1.2 * sizes["small"][1]  # one shard's plan, not the input's records


def test_a_task_refuses_an_input_copy_that_changed(tmp_path, tiny_checkpoint):
    fasta = example_fasta(tmp_path / "in.fasta", 6)
    plan = prepare_run(fasta, tmp_path / "store", settings_for(tiny_checkpoint, shard_tokens=40_000))
    copy = run_input_path(plan.store, plan.run_id)
    copy.write_text(copy.read_text().replace("M", "1", 1))
    with pytest.raises(InputError, match="changed since it was planned"):
        plan.shard_records(0)


def test_automatic_shard_sizes_keep_the_shard_count_bounded_explicit_ones_are_kept(tmp_path, tiny_checkpoint, monkeypatch):
    fasta = example_fasta(tmp_path / "in.fasta", 32)
    # Scaled down: shards of at most 10,000 tokens would cut this input into dozens of shards.
    monkeypatch.setattr(plan_module, "MAX_SHARD_TOKENS", 10_000)
    monkeypatch.setattr(plan_module, "MAX_SHARDS", 3)
    auto = prepare_run(fasta, tmp_path / "a", settings_for(tiny_checkpoint))
    # Greedy packing of whole sequences: two neighbouring shards always exceed one budget.
    assert 3 <= len(auto.shards) < 2 * 3
    total = sum(min(len(r.sequence), 1022) * len(r.sequence) for r in read_fasta(fasta).records)
    assert auto.settings.shard_tokens == -(-total // 3)
    explicit = prepare_run(fasta, tmp_path / "b", settings_for(tiny_checkpoint, shard_tokens=40_000))
    assert explicit.settings.shard_tokens == 40_000 and len(explicit.shards) > 3


def test_an_invalid_input_leaves_no_store_and_no_copy(tmp_path, tiny_checkpoint):
    from plmscreen.screening.input import InvalidFastaError

    fasta = tmp_path / "bad.fasta"
    fasta.write_text(">a\nMKV\n>b\nMK1\n")
    with pytest.raises(InvalidFastaError, match="record 2 'b'"):
        prepare_run(fasta, tmp_path / "store", settings_for(tiny_checkpoint))
    assert not (tmp_path / "store").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(InvalidFastaError):
        prepare_run(fasta, existing, settings_for(tiny_checkpoint))
    assert list(existing.rglob("*")) == []


def test_plan_only_registers_the_run_scores_nothing_and_a_screen_resumes_it(tmp_path, tiny_checkpoint):
    from typer.testing import CliRunner

    from plmscreen.cli.main import app
    from plmscreen.screening.run.catalog import Catalog

    fasta = example_fasta(tmp_path / "in.fasta", 8)
    store = tmp_path / "store"
    args = ["screen", str(fasta), "--out", str(store), "--model", str(tiny_checkpoint), "--device", "cpu",
            "--shard-tokens", "40000"]
    planned = CliRunner().invoke(app, [*args, "--plan-only"])
    assert planned.exit_code == 0, planned.output
    run_id = planned.output.split("Planned run ", 1)[1].split(":", 1)[0]
    assert "8 sequences" in planned.output and "Nothing was scored" in planned.output
    with Catalog.open(None, store) as catalog:
        shards = catalog.shards(run_id)
        assert len(shards) >= 2 and {s.status for s in shards} == {"pending"}
        assert len(catalog.input_sequences(run_id)) == 8
    assert not list(store.glob("*/*/*/part-*.parquet"))
    screened = CliRunner().invoke(app, [*args, "--in-process", "--no-progress"])
    assert screened.exit_code == 0, screened.output
    assert f"Run {run_id}" in screened.output and "Screened 8 sequences" in screened.output
    with Catalog.open(None, store) as catalog:
        assert {s.status for s in catalog.shards(run_id)} == {"done"}
