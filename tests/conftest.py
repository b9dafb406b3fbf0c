"""Shared fixtures: tiny ESM-2 checkpoints in fair-esm's exact on-disk format."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pytest
import torch

# Tests never reach a model hub.
os.environ.setdefault("PLMSCREEN_OFFLINE", "1")
# Nor the user's flag calibrations (~/.local/share/plmscreen/calibrations): a calibration of
# plmscreen-mini installed there would change every screen's flag rule. Tests that calibrate set
# their own directory.
os.environ["PLMSCREEN_CALIBRATIONS"] = tempfile.mkdtemp(prefix="plmscreen-test-calibrations-")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# In CI a missing dependency is a failure; only tests that need a CUDA GPU may skip there.
IN_CI = os.environ.get("CI", "").lower() == "true"
CI_ALLOWED_SKIP = ("CUDA", "GPU", "dask_cuda")


def write_esm2_checkpoint(path: Path, layers: int = 2, embed_dim: int = 32, heads: int = 4, seed: int = 0) -> Path:
    """Save random ESM-2 weights as fair-esm's released checkpoints are laid out."""
    import esm
    from esm.model.esm2 import ESM2

    torch.manual_seed(seed)
    model = ESM2(num_layers=layers, embed_dim=embed_dim, attention_heads=heads,
                 alphabet=esm.data.Alphabet.from_architecture("ESM-1b"), token_dropout=True)
    # Random init gives near-uniform outputs; widen the weights so log-probs differ across positions.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0, 0.5 / embed_dim**0.5 * 4)
    cfg = argparse.Namespace(encoder_layers=layers, encoder_embed_dim=embed_dim,
                             encoder_attention_heads=heads, token_dropout=True)
    state = {f"encoder.sentence_encoder.{k}": v for k, v in model.state_dict().items()
             if not k.startswith("contact_head")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": {"model": cfg}, "model": state}, path)
    return path


def example_fasta(path: Path, n: int) -> Path:
    """The first ``n`` real proteins of the committed example set, written as a FASTA file."""
    records = (REPO / "examples" / "sample.fasta").read_text().split(">")[1 : n + 1]
    path.write_text("".join(">" + r for r in records))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_esm2_checkpoint(tmp_path_factory.mktemp("weights") / "esm2_t2_tiny_test.pt")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from plmscreen.screening.model.checkpoints import load_model

    return load_model(str(tiny_checkpoint), device="cpu")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """End every run with the list of skipped tests and why, so nothing skips unseen."""
    skipped = terminalreporter.stats.get("skipped", [])
    terminalreporter.section(f"skipped tests: {len(skipped)}")
    for report in skipped:
        terminalreporter.write_line(f"SKIPPED {report.nodeid}: {_skip_reason(report)}")
    if IN_CI:
        unexpected = [r for r in skipped if not any(word in _skip_reason(r) for word in CI_ALLOWED_SKIP)]
        for report in unexpected:
            terminalreporter.write_line(f"FAILED (skipped in CI) {report.nodeid}: {_skip_reason(report)}")


def pytest_sessionfinish(session, exitstatus):
    """In CI a skip for anything but a missing CUDA GPU fails the run."""
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if any(not any(word in _skip_reason(r) for word in CI_ALLOWED_SKIP) for r in skipped) and exitstatus == 0:
        session.exitstatus = 1
