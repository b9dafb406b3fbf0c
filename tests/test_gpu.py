"""The CUDA path: exact on the GPU, reduced precision within its measured bound, memory-sized batches.

Skipped where no GPU is visible (CI machines without one); run on a GPU node with
``pytest tests/test_gpu.py``. The dask-cuda cluster test also needs ``pip install 'plmscreen[gpu]'``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmscreen.screening.input import read_fasta
from plmscreen.screening.model.checkpoints import load_model
from plmscreen.screening.score.scorer import CPU_BATCH_TOKENS, Scorer, ScoringOptions
from conftest import REPO

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# Bound from bench/bench_precision_throughput.py on plmscreen-mini (bench/results/precision_throughput_*).
REDUCED_PRECISION_MAX_DLOGP = 0.5
REDUCED_PRECISION_MAX_REL_PPPL = 0.05


@pytest.fixture(scope="module")
def proteins():
    return [r.sequence[:300] for r in read_fasta(REPO / "examples" / "sample.fasta").records[:6]]


@pytest.fixture(scope="module")
def cpu_scores(proteins):
    return Scorer(load_model("plmscreen-mini", device="cpu")).score(proteins)


def test_fp32_on_cuda_matches_cpu(proteins, cpu_scores):
    scorer = Scorer(load_model("plmscreen-mini", device="cuda"))
    assert scorer.batch_tokens > CPU_BATCH_TOKENS  # sized from free GPU memory
    for g, c in zip(scorer.score(proteins), cpu_scores):
        np.testing.assert_allclose(g.logp_masked, c.logp_masked, atol=1e-4, rtol=0)
        np.testing.assert_allclose(g.logp_unmasked, c.logp_unmasked, atol=1e-4, rtol=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_within_bound(proteins, cpu_scores, precision):
    scorer = Scorer(load_model("plmscreen-mini", device="cuda"), ScoringOptions(precision=precision))
    for g, c in zip(scorer.score(proteins), cpu_scores):
        assert 0 < np.abs(g.logp_masked - c.logp_masked).max() < REDUCED_PRECISION_MAX_DLOGP
        rel = abs(np.exp(-g.logp_masked.mean()) / np.exp(-c.logp_masked.mean()) - 1)
        assert rel < REDUCED_PRECISION_MAX_REL_PPPL


def test_dask_cuda_screen(tmp_path):
    pytest.importorskip("dask_cuda")
    import subprocess
    import sys

    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(">" + r for r in (REPO / "examples" / "sample.fasta").read_text().split(">")[1:5]))
    out = subprocess.run([sys.executable, "-m", "plmscreen.cli.main", "screen", str(fasta), "--out", str(tmp_path / "store"),
                          "--gpus", "1", "--device", "cuda", "--no-progress"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Screened 4 sequences" in out.stdout


def test_automatic_batches_fit_in_free_gpu_memory(proteins):
    """The batch budget sized from free memory is a real fit: scoring at it stays inside that memory."""
    loaded = load_model("plmscreen-mini", device="cuda")
    torch.cuda.synchronize()
    free_before, _ = torch.cuda.mem_get_info()
    allocated_before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    scorer = Scorer(loaded)
    scorer.score(proteins)
    peak = torch.cuda.max_memory_allocated() - allocated_before
    assert scorer.batch_tokens >= 1024
    assert peak <= free_before, f"{peak / 2**30:.1f} GiB used, {free_before / 2**30:.1f} GiB were free"
