"""The same product on every model family: `plmscreen screen` (exact and triage, diagnostics) and
`plmscreen validate` on tiny fair-esm, Hugging Face ESM-2, ESM C and CARP checkpoints, with the
stored scores checked against an independent computation and the model's identity read back from
run.json, the catalog and the Parquet metadata."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("transformers", reason="plmscreen[hf] not installed")
pytest.importorskip("sequence_models", reason="plmscreen[carp] not installed")

from backend_models import RESIDUES, one_torch_thread, write_carp, write_esmc, write_hf_esm  # noqa: E402, F401
from sequences import SINGLE_DOUBLED_SHORT, UNIT  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from plmscreen.cli.main import app  # noqa: E402
from plmscreen.screening.model.checkpoints import ModelLoadError  # noqa: E402
from plmscreen.screening.run.plan import prepare_run  # noqa: E402
from plmscreen.screening.run.settings import ScreenSettings  # noqa: E402
from plmscreen.screening.run.workers import ScorerCache  # noqa: E402
from plmscreen.screening.store.parquet import read_metadata  # noqa: E402

FAMILIES = ("fair-esm", "hf-esm", "hf-esmc", "carp")
# Random tiny models copy nothing: whether masking the partners raises or lowers a sequence's
# pseudo-perplexity is chance. Of the tandem repeats tried, these two are flagged at the lowest
# threshold by at least one model of each family (tandem7 by the ESM-2 pair, tandem15 by ESM C and
# CARP), so the flagged path (diagnostics) runs on every backend.
FASTA = SINGLE_DOUBLED_SHORT + f">tandem7\n{UNIT[20:27] * 11}\n>tandem15\n{UNIT[:15] * 5}\n"
# The partner test's q-value gate is opened (1): random weights cannot pass it, and these tests
# need the flagged path on every backend (tests/test_partner_test.py tests the gate itself).
# The effect-size gate sits just above 1: CARP's random CNN does not reach from one copy of
# "doubled" to the other, so its factor is 1 up to float32 sums (1 + 3e-8 in one batch layout,
# 1 - 9e-9 in another), and at exactly 1.0 triage and exact mode flagged it on different CPUs.
FLAG = ("--min-inflation-factor", "1.001", "--min-repeat-fraction", "0.05", "--max-qvalue", "1")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_checkpoint):
    tmp = tmp_path_factory.mktemp("families")
    return {
        "fair-esm": tiny_checkpoint,
        "hf-esm": write_hf_esm(tmp / "esm2_tiny_hf", tiny_checkpoint),
        "hf-esmc": write_esmc(tmp / "esmc_tiny"),
        "carp": write_carp(tmp / "carp_tiny.pt"),
    }


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    path = tmp_path_factory.mktemp("fasta") / "in.fasta"
    path.write_text(FASTA)
    return path


def screen(fasta, out, model, *extra):
    result = CliRunner().invoke(app, ["screen", str(fasta), "--in-process", "--no-progress", "--out", str(out),
                                      "--model", str(model), "--device", "cpu", *FLAG, *extra])
    assert result.exit_code == 0, result.output
    return result


def read_store(out):
    """(residues rows by seq_id, sequences rows by seq_id, run.json, the Parquet metadata, run id)."""
    residues = sorted(out.glob("residues/model=*/run=*/part-*.parquet"))
    sequences = sorted(out.glob("sequences/model=*/run=*/part-*.parquet"))
    [run_dir] = {p.parent for p in residues}
    run_id = run_dir.name.removeprefix("run=")
    by_seq: dict[str, list[dict]] = {}
    for part in residues:
        for row in pq.read_table(part).to_pylist():
            by_seq.setdefault(row["seq_id"], []).append(row)
    seqs = {row["seq_id"]: row for part in sequences for row in pq.read_table(part).to_pylist()}
    assert set(seqs) == set(by_seq) == {"single", "doubled", "short", "tandem7", "tandem15"}
    for verdict in pq.read_table(out / "runs" / run_id / "verdicts.parquet").to_pylist():  # the run-wide flag
        seqs[verdict["seq_id"]].update(flagged=verdict["flagged"], partner_qvalue=verdict["partner_qvalue"])
    metadata = [read_metadata(p) for p in residues + sequences]
    assert all(m == metadata[0] for m in metadata)  # every file of the run records the same model
    run_json = json.loads((out / "runs" / run_id / "run.json").read_text())
    return by_seq, seqs, run_json, metadata[0], run_id


@pytest.fixture(scope="module")
def exact(tmp_path_factory, checkpoints, fasta):
    outs = {}
    for family, model in checkpoints.items():
        out = tmp_path_factory.mktemp(f"exact-{family}") / "store"
        screen(fasta, out, model)
        outs[family] = out
    return outs


# --- independent computations: one masked copy per forward, through each library's stock model ---

def naive_fair_esm(path, sequence):
    from plmscreen.screening.model.checkpoints import load_model

    loaded = load_model(str(path), device="cpu")
    alphabet = loaded.alphabet
    tokens = torch.tensor([[alphabet.cls_idx, *[alphabet.get_idx(a) for a in sequence], alphabet.eos_idx]])
    return _naive(lambda t: loaded.model(t)["logits"], tokens, 1, alphabet.mask_idx,
                  list(range(len(alphabet.all_toks))))


def naive_esmc(directory, sequence):
    from transformers import EsmcForMaskedLM, EsmcTokenizer

    model = EsmcForMaskedLM.from_pretrained(directory, dtype=torch.float32).eval()
    tok = EsmcTokenizer.from_pretrained(directory)
    ids = tok.convert_tokens_to_ids(list(sequence))
    tokens = torch.tensor([[tok.cls_token_id, *ids, tok.eos_token_id]])
    residue_ids = sorted(set(tok.convert_tokens_to_ids(list(RESIDUES))))  # J falls back to <unk>
    return _naive(lambda t: model(input_ids=t).logits, tokens, 1, tok.mask_token_id, residue_ids)


def naive_carp(path, sequence):
    from sequence_models.constants import MASK, PROTEIN_ALPHABET
    from sequence_models.pretrained import load_carp

    carp = load_carp(torch.load(path, weights_only=True)).eval()
    tokens = torch.tensor([[PROTEIN_ALPHABET.index(a) for a in sequence]])
    residue_ids = sorted(PROTEIN_ALPHABET.index(a) for a in RESIDUES)
    return _naive(lambda t: carp(t, logits=True)["logits"], tokens, 0, PROTEIN_ALPHABET.index(MASK), residue_ids)


def _naive(forward, tokens, offset, mask, normalised):
    """(logp_masked, logp_unmasked) per residue, softmax over the ``normalised`` token ids only."""
    columns = torch.tensor(normalised)

    def logp(logits, pos):
        row = torch.log_softmax(logits[0, pos, columns].double(), dim=-1)
        return float(row[normalised.index(int(tokens[0, pos]))])

    length = tokens.shape[1] - 2 * offset
    with torch.inference_mode():
        unmasked_logits = forward(tokens)
        unmasked = [logp(unmasked_logits, i + offset) for i in range(length)]
        masked = []
        for i in range(length):
            copy = tokens.clone()
            copy[0, i + offset] = mask
            logits = forward(copy)
            masked.append(float(torch.log_softmax(logits[0, i + offset, columns].double(), -1)[normalised.index(int(tokens[0, i + offset]))]))
    return np.array(masked), np.array(unmasked)


NAIVE = {"fair-esm": naive_fair_esm, "hf-esmc": naive_esmc, "carp": naive_carp}


@pytest.mark.parametrize("family", ["fair-esm", "hf-esmc", "carp"])
def test_stored_scores_equal_a_one_mask_per_forward_loop(exact, checkpoints, family):
    by_seq, _, _, _, _ = read_store(exact[family])
    for seq_id in ("doubled", "short"):
        rows = by_seq[seq_id]
        sequence = "".join(r["aa"] for r in rows)
        masked, unmasked = NAIVE[family](checkpoints[family], sequence)
        np.testing.assert_allclose([r["logp_masked"] for r in rows], masked, atol=1e-4, rtol=0)
        np.testing.assert_allclose([r["logp_unmasked"] for r in rows], unmasked, atol=1e-4, rtol=0)
        assert np.ptp(masked) > 1.0  # the random model tells residues apart: a wrong column would show


def test_hf_esm_stores_what_fair_esm_stores(exact):
    """The converted checkpoint is the same model: every stored number within 1e-4, flags equal."""
    fair, _, _, _, _ = read_store(exact["fair-esm"])
    hf, hf_seqs, _, _, _ = read_store(exact["hf-esm"])
    _, fair_seqs, _, _, _ = read_store(exact["fair-esm"])
    for seq_id, rows in fair.items():
        for column in ("logp_masked", "logp_unmasked", "logp_ablated"):
            a = np.array([np.nan if r[column] is None else r[column] for r in rows])
            b = np.array([np.nan if r[column] is None else r[column] for r in hf[seq_id]])
            np.testing.assert_allclose(b, a, atol=1e-4, rtol=0, equal_nan=True)
    assert {k: v["flagged"] for k, v in hf_seqs.items()} == {k: v["flagged"] for k, v in fair_seqs.items()}
    assert not np.isnan(np.array([r["logp_ablated"] or np.nan for r in fair["doubled"]])).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_run_json_catalog_and_parquet_record_the_backend_and_weight_digests(exact, checkpoints, family):
    out = exact[family]
    _, seqs, run_json, meta, run_id = read_store(out)
    ckpt = checkpoints[family]
    files = sorted(ckpt.glob("*.safetensors")) if ckpt.is_dir() else [ckpt]
    digests = {f.name: sha256(f) for f in files}
    assert len(files) == 1
    for record in (run_json, meta):
        assert record["model_family"] == family
        assert record["model_id"] == str(ckpt)
        assert record["weight_sha256"] == digests
        assert record["checkpoint_sha256"] == digests[files[0].name]
    # What the loaded backend describes (Backend.describe()), under the planned record.
    assert run_json["model"]["model_family"] == family
    assert run_json["model"]["weight_sha256"] == digests
    assert run_json["model"]["checkpoint_sha256"] == digests[files[0].name]
    assert run_json["model"]["normalise"] == ("vocabulary" if family in ("fair-esm", "hf-esm") else "residues")
    with sqlite3.connect(out / "catalog.sqlite") as con:
        family_col, weights, checkpoint = con.execute(
            "select model_family, weight_sha256, checkpoint_sha256 from runs where id = ?", (run_id,)).fetchone()
    assert (family_col, json.loads(weights), checkpoint) == (family, digests, digests[files[0].name])
    # The store's runs view and the report show the backend.
    query = CliRunner().invoke(app, ["query", str(out), "SELECT model_family, model_id, weight_sha256 FROM runs",
                                     "--format", "json"])
    assert query.exit_code == 0, query.output
    [row] = json.loads(query.output)
    assert (row["model_family"], row["model_id"]) == (family, str(ckpt))
    stored = row["weight_sha256"]
    assert (json.loads(stored) if isinstance(stored, str) else stored) == digests
    report = out.parent / "report.html"
    result = CliRunner().invoke(app, ["report", str(out), "--out", str(report)])
    assert result.exit_code == 0, result.output
    page = report.read_text()
    assert f"<th>Model family</th><td>{family}</td>" in page and digests[files[0].name] in page
    assert sum(v["flagged"] for v in seqs.values()) == int(result.output.split("(")[1].split()[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_triage_flags_what_exact_flags_and_diagnostics_run(tmp_path, exact, checkpoints, fasta, family):
    screen(fasta, tmp_path / "triage", checkpoints[family], "--mode", "triage")
    by_seq, seqs, _, _, _ = read_store(tmp_path / "triage")
    exact_rows, exact_seqs, _, _, _ = read_store(exact[family])
    assert {k: v["flagged"] for k, v in seqs.items()} == {k: v["flagged"] for k, v in exact_seqs.items()}
    flagged = [k for k, v in seqs.items() if v["flagged"]]
    assert flagged, {k: v["inflation_factor"] for k, v in exact_seqs.items()}
    assert all(v["mode"] == "triage" for v in seqs.values())
    assert seqs["single"]["pppl"] is None and exact_seqs["single"]["pppl"] is not None  # nothing masked there
    # Triage masks only what can change the verdict, with exact mode's copies: same numbers there.
    for seq_id in flagged:
        compared = 0
        for row, ref in zip(by_seq[seq_id], exact_rows[seq_id]):
            if row["logp_masked"] is not None:
                assert abs(row["logp_masked"] - ref["logp_masked"]) < 1e-4  # other batches: float32 sums differ
                assert abs(row["logp_ablated"] - ref["logp_ablated"]) < 1e-4
                compared += 1
        assert compared > 0
        # Partner-ablation diagnostics of each flagged sequence, in both modes.
        for rows, summary in ((by_seq, seqs), (exact_rows, exact_seqs)):
            assert summary[seq_id]["mean_net_inflation"] is not None
            assert summary[seq_id]["mean_copy_following"] is not None
            planted = [r["planted_residue"] for r in rows[seq_id] if r["planted_residue"] is not None]
            assert planted and set(planted) <= set("ACDEFGHIKLMNPQRSTVWY")


def make_hub_cache(root, repo_id, directory):
    """A local Hugging Face cache entry as huggingface_hub lays one out (refs/main -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in directory.iterdir():
        shutil.copy(f, snapshot / f.name)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_id_resolves_from_the_local_cache_offline(tmp_path, monkeypatch, exact, checkpoints, fasta):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_hub_cache(tmp_path / "hub", "plmscreen-test/esm2_tiny", checkpoints["hf-esm"])
    screen(fasta, tmp_path / "store", "plmscreen-test/esm2_tiny")
    by_seq, _, run_json, meta, _ = read_store(tmp_path / "store")
    assert (tmp_path / "store" / "residues" / "model=plmscreen-test_esm2_tiny").is_dir()
    assert run_json["model_id"] == "plmscreen-test/esm2_tiny" and meta["model_family"] == "hf-esm"
    assert meta["checkpoint_sha256"] == sha256(checkpoints["hf-esm"] / "model.safetensors")
    reference, _, _, _, _ = read_store(exact["hf-esm"])
    for seq_id, rows in reference.items():
        assert [r["logp_masked"] for r in by_seq[seq_id]] == [r["logp_masked"] for r in rows]


def test_missing_hub_id_fails_offline_and_says_where_it_looked(tmp_path, monkeypatch, fasta):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    weights = tmp_path / "weights"
    weights.mkdir()
    result = CliRunner().invoke(app, ["screen", str(fasta), "--in-process", "--out", str(tmp_path / "o"), "--model",
                                      "plmscreen-test/not_there", "--weights-dir", str(weights), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert str(weights / "not_there") in result.output
    assert str(tmp_path / "hub" / "models--plmscreen-test--not_there") in result.output
    assert "--hub-download" in result.output
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("residues/**/*.parquet"))
    # --hub-download reaches the resolver: it tries the hub (kept offline here, no hub is reachable).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    allowed = CliRunner().invoke(app, ["screen", str(fasta), "--in-process", "--out", str(tmp_path / "o"), "--model",
                                       "plmscreen-test/not_there", "--hub-download", "--device", "cpu"])
    assert allowed.exit_code == 2, allowed.output
    assert "download of 'plmscreen-test/not_there' from the Hugging Face hub failed" in allowed.output


@pytest.mark.parametrize("family", ["hf-esm", "carp"])
def test_workers_refuse_weights_replaced_after_planning(tmp_path, checkpoints, fasta, family):
    """The trust check for every family: what a worker loads must have the planned digest."""
    source = checkpoints[family]
    model = tmp_path / source.name
    (shutil.copytree if source.is_dir() else shutil.copy)(source, model)
    plan = prepare_run(fasta, tmp_path / "store", ScreenSettings(model=str(model), device="cpu"))
    assert plan.model_family == family
    ScorerCache().for_plan(plan)  # unchanged: loads
    if family == "hf-esm":
        write_hf_esm(tmp_path / "other", write_other_esm(tmp_path))
        shutil.copy(tmp_path / "other" / "model.safetensors", model / "model.safetensors")
    else:
        write_carp(model, seed=1)
    with pytest.raises(ModelLoadError, match="planned with"):
        ScorerCache().for_plan(plan)


def write_other_esm(tmp_path):
    from conftest import write_esm2_checkpoint

    return write_esm2_checkpoint(tmp_path / "other.pt", seed=1)


def test_window_of_the_family_plans_shards_and_names_the_run(tmp_path, checkpoints, fasta):
    """ESM C's window comes from its config (254 residues for this one) and enters the run's
    identity with the config's digest; fair-esm run ids keep their old key."""
    from plmscreen.screening.run.plan import run_id_for

    plan = prepare_run(fasta, tmp_path / "esmc", ScreenSettings(model=str(checkpoints["hf-esmc"]), device="cpu"))
    assert plan.metadata["model_family"] == "hf-esmc"
    config = json.loads((checkpoints["hf-esmc"] / "config.json").read_text())
    assert config["max_position_embeddings"] - 2 == 254
    assert plan.run_id == run_id_for(plan.input_sha256, plan.checkpoint_sha256, plan.settings,
                                     {"family": "hf-esmc", "config_sha256": sha256(checkpoints["hf-esmc"] / "config.json"),
                                      "window": 254, "normalise": "residues"})
    fair = prepare_run(fasta, tmp_path / "fair", ScreenSettings(model=str(checkpoints["fair-esm"]), device="cpu"))
    assert fair.run_id == run_id_for(fair.input_sha256, sha256(checkpoints["fair-esm"]), fair.settings)
    # Two 300-residue proteins cost 300·254 each for ESM C and 300·300 for ESM-2: one budget of
    # 2·300·254 holds both for ESM C only.
    long = tmp_path / "long.fasta"
    long.write_text(f">a\n{(UNIT * 5)[:300]}\n>b\n{(UNIT[::-1] * 5)[:300]}\n")
    budget = 2 * 300 * 254
    shards = {family: prepare_run(long, tmp_path / f"long-{family}", ScreenSettings(
        model=str(checkpoints[family]), device="cpu", shard_tokens=budget)).shards for family in ("hf-esmc", "fair-esm")}
    assert shards == {"hf-esmc": {0: (0, 1)}, "fair-esm": {0: (0, 0), 1: (1, 1)}}


def test_validate_puts_several_models_side_by_side(tmp_path, checkpoints):
    out = tmp_path / "validation"
    result = CliRunner().invoke(app, ["validate", "--out", str(out), "--preset", "quick", "--n-proteins", "3",
                                      "--crop-length", "20", "--device", "cpu",
                                      "--model", str(checkpoints["fair-esm"]), "--model", str(checkpoints["hf-esm"]),
                                      "--model", str(checkpoints["carp"])])
    assert result.exit_code == 0, result.output
    comparison = json.loads((out / "comparison.json").read_text())
    families = [m["model"]["model_family"] for m in comparison["models"]]
    assert families == ["fair-esm", "hf-esm", "carp"]
    page = (out / "index.html").read_text()
    for m in comparison["models"]:
        assert (out / m["page"]).is_file() and m["page"] in page
        assert set(m["verdicts"]) == {"doubling", "partner_masking", "copy_following", "imperfect_repeats",
                                      "unit_length", "controls"}
    # The converted checkpoint is the same model: its per-protein numbers equal fair-esm's.
    fair = json.loads((out / comparison["models"][0]["page"]).with_name("report.json").read_text())
    hf = json.loads((out / comparison["models"][1]["page"]).with_name("report.json").read_text())
    for a, b in zip(fair["experiments"], hf["experiments"]):
        for row_a, row_b in zip(a["summary"], b["summary"]):
            for key, value in row_a.items():
                if isinstance(value, float):
                    assert abs(value - row_b[key]) < 1e-3, (a["key"], key)
    assert fair["verdicts"] == hf["verdicts"]
    assert comparison["models"][2]["model"]["checkpoint_sha256"] == sha256(checkpoints["carp"])


def prefect_env(tmp):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", PLMSCREEN_OFFLINE="1")
    return env


@pytest.mark.slow
def test_default_prefect_dask_path_scores_an_hf_model(tmp_path, exact, checkpoints, fasta):
    """The flow on a local Dask cluster loads the HF model in its worker and stores the numbers the
    in-process screen stores, with the same model record."""
    out = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-m", "plmscreen.cli.main", "screen", str(fasta), "--out", str(out),
                           "--model", str(checkpoints["hf-esm"]), "--device", "cpu", "--workers", "1",
                           "--no-progress", *FLAG],
                          env=prefect_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by_seq, seqs, run_json, meta, _ = read_store(out)
    reference, ref_seqs, ref_json, _, _ = read_store(exact["hf-esm"])
    for seq_id, rows in reference.items():
        for column in ("logp_masked", "logp_unmasked", "logp_ablated"):
            # Another thread count sums float32 in another order: equal to rounding, not to the bit.
            a = np.array([np.nan if r[column] is None else r[column] for r in rows])
            b = np.array([np.nan if r[column] is None else r[column] for r in by_seq[seq_id]])
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=0, equal_nan=True)
    assert {k: v["flagged"] for k, v in seqs.items()} == {k: v["flagged"] for k, v in ref_seqs.items()}
    assert run_json["run_id"] == ref_json["run_id"]
    for key in ("model_family", "model_id", "weight_sha256", "checkpoint_sha256"):
        assert run_json[key] == ref_json[key] == meta[key]
        assert run_json["model"][key] == ref_json[key]
