"""What a worker loads: the checkpoint the run was planned with, hashed once, in a bounded cache."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from conftest import write_esm2_checkpoint
from plmscreen.screening.model import checkpoints as model_module
from plmscreen.screening.model.checkpoints import ModelLoadError
from plmscreen.screening.run.plan import prepare_run
from plmscreen.screening.run.settings import ScreenSettings
from plmscreen.screening.run.workers import ScorerCache

FASTA = ">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nMSTNPKPQRKTKRNTNRRPQDV\n"


@pytest.fixture
def count_hashes(monkeypatch):
    calls = []
    real = model_module._hash_file

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(model_module, "_hash_file", counting)
    monkeypatch.setattr(model_module, "_SHA256_BY_IDENTITY", {})
    return calls


def plan_for(tmp_path, checkpoint, store="store"):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(FASTA)
    return prepare_run(fasta, tmp_path / store, ScreenSettings(model=str(checkpoint), device="cpu"))


def test_worker_trusts_the_planned_digest_while_the_file_is_unchanged(tmp_path, count_hashes):
    checkpoint = write_esm2_checkpoint(tmp_path / "esm2_a.pt", seed=1)
    plan = plan_for(tmp_path, checkpoint)
    assert len(count_hashes) == 1
    model_module._SHA256_BY_IDENTITY.clear()  # a worker process starts with an empty memo
    scorer = ScorerCache().for_plan(plan)
    assert scorer.loaded.checkpoint_sha256 == plan.checkpoint_sha256
    assert len(count_hashes) == 1, "the worker hashed a file the planner had already hashed"


def test_worker_refuses_a_checkpoint_replaced_after_planning(tmp_path):
    checkpoint = write_esm2_checkpoint(tmp_path / "esm2_a.pt", seed=1)
    plan = plan_for(tmp_path, checkpoint)
    write_esm2_checkpoint(tmp_path / "esm2_new.pt", seed=2)
    os.replace(tmp_path / "esm2_new.pt", checkpoint)  # same path, other weights
    with pytest.raises(ModelLoadError, match=f"planned with {plan.checkpoint_sha256}"):
        ScorerCache().for_plan(plan)


def test_worker_on_another_node_hashes_its_copy_and_accepts_the_same_bytes(tmp_path, count_hashes):
    checkpoint = write_esm2_checkpoint(tmp_path / "esm2_a.pt", seed=1)
    plan = plan_for(tmp_path, checkpoint)
    # Another node sees the same bytes as another file version (copied, new mtime and inode).
    copy = tmp_path / "copy.pt"
    shutil.copy(checkpoint, copy)
    os.replace(copy, checkpoint)
    model_module._SHA256_BY_IDENTITY.clear()
    assert ScorerCache().for_plan(plan).loaded.checkpoint_sha256 == plan.checkpoint_sha256
    assert len(count_hashes) == 2


def test_cache_is_keyed_by_digest_and_bounded(tmp_path):
    first = write_esm2_checkpoint(tmp_path / "esm2_a.pt", seed=1)
    second = write_esm2_checkpoint(tmp_path / "esm2_b.pt", seed=2)
    plan_a, plan_b = plan_for(tmp_path, first, "s1"), plan_for(tmp_path, second, "s2")
    cache = ScorerCache(capacity=1)
    scorer_a = cache.for_plan(plan_a)
    assert cache.for_plan(plan_a) is scorer_a, "tasks of one run share the loaded model"
    scorer_b = cache.for_plan(plan_b)
    assert len(cache) == 1
    assert scorer_b.loaded.checkpoint_sha256 == plan_b.checkpoint_sha256 != plan_a.checkpoint_sha256
    weight = "layers.0.fc1.weight"
    assert not torch.equal(scorer_a.loaded.model.state_dict()[weight], scorer_b.loaded.model.state_dict()[weight])
    # The evicted model is loaded again, verified against its own plan.
    assert cache.for_plan(plan_a) is not scorer_a and len(cache) == 1
    two = ScorerCache(capacity=2)
    two.for_plan(plan_a), two.for_plan(plan_b)
    assert len(two) == 2


def test_in_process_screen_hashes_the_checkpoint_once(tmp_path, count_hashes):
    from typer.testing import CliRunner

    from plmscreen.cli.main import app

    checkpoint = write_esm2_checkpoint(tmp_path / "esm2_a.pt", seed=1)
    (tmp_path / "in.fasta").write_text(FASTA)
    result = CliRunner().invoke(app, ["screen", str(tmp_path / "in.fasta"), "--out", str(tmp_path / "store"),
                                      "--model", str(checkpoint), "--device", "cpu", "--in-process", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(count_hashes) == 1, count_hashes
