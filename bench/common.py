"""What the benchmark scripts share: where the public data sets are, the machine, proteins, checkpoints,
and the naive one-mask-per-forward reference loop.

Scripts run as ``python bench/<script>.py``, so this folder is first on ``sys.path`` and
``from common import ...`` needs no path edits.

Where benchmark and calibration scripts find the public data sets they read.

The data are not shipped (their sources and licences: docs/data-sources.md). Point
``$PLMSCREEN_DATA_DIR`` at a folder laid out as that page says (``fasta/``, ``repeats/``,
``proteingym/``), or pass each script's path options."""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import io
import math
import os
import platform
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from Bio import SeqIO

DATA_ENV = "PLMSCREEN_DATA_DIR"
ECOLI_FASTA = Path("fasta") / "UP000000625_83333_ecoli_k12.fasta"
TANDEM_REPEATS = Path("repeats") / "wrightlab_tandem_repeat"


def data_path(relative: str | Path) -> Path:
    """``$PLMSCREEN_DATA_DIR/relative``; a clear error when the variable is unset."""
    root = os.environ.get(DATA_ENV)
    if not root:
        raise SystemExit(f"set ${DATA_ENV} to the folder holding {relative} (see docs/data-sources.md), "
                         f"or pass the path as an option")
    return Path(root) / relative


def default_path(relative: str | Path) -> Path | None:
    """For argparse defaults: the path under ``$PLMSCREEN_DATA_DIR``, or None when it is unset."""
    root = os.environ.get(DATA_ENV)
    return Path(root) / relative if root else None


def require(path: Path | None, option: str, relative: str | Path) -> Path:
    """The path a script was given, or a clear error naming the option and the variable."""
    if path is None:
        return data_path(relative)
    if not path.exists():
        raise SystemExit(f"{option}: {path} does not exist (see docs/data-sources.md)")
    return path


def write_checkpoint(layers: int, dim: int, heads: int, path: Path, seed: int = 0) -> Path:
    import argparse as ap

    import esm
    import torch
    from esm.model.esm2 import ESM2

    torch.manual_seed(seed)
    model = ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads,
                 alphabet=esm.data.Alphabet.from_architecture("ESM-1b"), token_dropout=True)
    cfg = ap.Namespace(encoder_layers=layers, encoder_embed_dim=dim, encoder_attention_heads=heads, token_dropout=True)
    state = {f"encoder.sentence_encoder.{k}": v for k, v in model.state_dict().items() if not k.startswith("contact_head")}
    torch.save({"cfg": {"model": cfg}, "model": state}, path)
    return path


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


DEFAULT_FASTA = default_path(ECOLI_FASTA)  # None unless $PLMSCREEN_DATA_DIR is set


ARCHS = {  # real ESM-2 sizes: layers, embed dim, heads
    "esm2_t6_8M": (6, 320, 20),
    "esm2_t12_35M": (12, 480, 20),
    "esm2_t30_150M": (30, 640, 20),
    "esm2_t33_650M": (33, 1280, 20),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def machine_info(device: torch.device) -> dict:
    import esm

    info = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fair_esm": getattr(esm, "__version__", "unknown"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def write_random_checkpoint(arch: str, directory: Path, seed: int, init: str) -> Path:
    """Random weights with the real ESM-2 architecture ``arch``, in fair-esm's on-disk format."""
    import esm
    from esm.model.esm2 import ESM2

    layers, dim, heads = ARCHS[arch]
    torch.manual_seed(seed)
    model = ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads,
                 alphabet=esm.data.Alphabet.from_architecture("ESM-1b"), token_dropout=True)
    if init == "wide":  # the tests' init: log-probs that vary across positions (default init is flatter)
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1:
                    param.normal_(0, 2.0 / dim**0.5)
    cfg = argparse.Namespace(encoder_layers=layers, encoder_embed_dim=dim,
                             encoder_attention_heads=heads, token_dropout=True)
    state = {f"encoder.sentence_encoder.{k}": v for k, v in model.state_dict().items()
             if not k.startswith("contact_head")}
    path = directory / f"{arch}_random_seed{seed}.pt"  # the stem must start with "esm2"
    torch.save({"cfg": {"model": cfg}, "model": state}, path)
    return path


def read_fasta(path: Path) -> list[tuple[str, str]]:
    records, name, chunks = [], None, []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line.startswith(">"):
                if name is not None:
                    records.append((name, "".join(chunks)))
                name, chunks = line[1:].split()[0], []
            elif line:
                chunks.append(line.upper())
    if name is not None:
        records.append((name, "".join(chunks)))
    return records


def pick_proteins(fasta: Path, n: int, min_len: int, max_len: int) -> list[tuple[str, str]]:
    chosen = [(name, seq) for name, seq in read_fasta(fasta) if min_len <= len(seq) <= max_len][:n]
    if not chosen:
        raise SystemExit(f"no protein of length {min_len}-{max_len} in {fasta}")
    return chosen


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_scores(model, alphabet, sequences: list[str], device: torch.device) -> list[dict]:
    """Batch 1, one mask per forward, fair-esm's stock forward; plus one unmasked forward per protein."""
    converter = alphabet.get_batch_converter()
    out = []
    with torch.inference_mode():
        for seq in sequences:
            _, _, tokens = converter([("p", seq)])
            tokens = tokens.to(device)
            assert tokens.shape[1] == len(seq) + 2 and tokens[0, 0] == alphabet.cls_idx
            truth = tokens[0, 1:-1]
            masked = []
            for i in range(len(seq)):
                copy = tokens.clone()
                copy[0, i + 1] = alphabet.mask_idx
                logits = model(copy)["logits"]
                masked.append(torch.log_softmax(logits[0, i + 1].float(), dim=-1)[truth[i]])
            logits = model(tokens)["logits"]
            logp = torch.log_softmax(logits[0, 1:-1].float(), dim=-1)
            unmasked = logp.gather(1, truth.unsqueeze(1)).squeeze(1)
            out.append({"logp_masked": torch.stack(masked).double().cpu().numpy(),
                        "logp_unmasked": unmasked.double().cpu().numpy()})
    sync(device)
    return out


def load_tandem_repeats(data: Path) -> dict:
    """Chains with truth units (1-based inclusive), decoy and CE-Symm unit alignments."""
    tps = {r.id.split("|")[0]: str(r.seq) for r in SeqIO.parse(gzip.open(data / "TPs_v5.fas.gz", "rt"), "fasta")}
    fps = {r.id.split("|")[0]: str(r.seq) for r in SeqIO.parse(gzip.open(data / "FPs_v5.fas.gz", "rt"), "fasta")}
    units: dict[str, list[dict]] = collections.defaultdict(list)
    with open(data / "units.tsv") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            units[row["ID1"]].append(row)
    alignments = {}
    with tarfile.open(data / "repeat_alignments_v2.tar.gz") as tf:
        for member in tf.getmembers():
            if member.name.endswith(".fas"):
                key = member.name.rsplit("/", 1)[-1][:-4]
                if key in tps:
                    text = tf.extractfile(member).read().decode()
                    alignments[key] = [(r.id, str(r.seq)) for r in SeqIO.parse(io.StringIO(text), "fasta")]
    chains = {}
    for key, seq in tps.items():
        if key not in units or key not in fps or len(fps[key]) != len(seq):
            continue  # 2CE2X has no units in units.tsv
        spans = [(int(r["begin_label"]), int(r["end_label"])) for r in units[key]]
        chains[key] = {
            "seq": seq,
            "decoy": fps[key],
            "units": spans,
            "unit_pairs": _unit_pairs(seq, units[key], alignments.get(key, [])),
        }
    return chains


def _unit_pairs(seq: str, unit_rows: list[dict], aln: list[tuple[str, str]]) -> list[dict]:
    """Per pair of CE-Symm units: identity over structurally aligned columns and the aligned
    residue pairs as 1-based sequence positions (None when a unit's letters do not match the
    sequence at its label coordinates)."""
    label = {(r["begin_auth"], r["end_auth"]): (int(r["begin_label"]), int(r["end_label"])) for r in unit_rows}
    rows = []
    for rid, text in aln:
        m = re.search(r"_(-?\d+)-(-?\d+)$", rid)
        span = label.get((m.group(1), m.group(2))) if m else None
        positions = None
        letters = text.replace("-", "").upper()
        if span is not None:
            n = min(len(letters), span[1] - span[0] + 1)
            if n > 0 and seq[span[0] - 1 : span[0] - 1 + n] == letters[:n]:
                positions = []
                k = span[0]
                for ch in text:
                    if ch == "-":
                        positions.append(None)
                    else:
                        positions.append(k if k < span[0] + n else None)
                        k += 1
        rows.append((text, positions))
    pairs = []
    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            ta, pa = rows[a]
            tb, pb = rows[b]
            cols = [k for k in range(min(len(ta), len(tb))) if ta[k].isupper() and tb[k].isupper()]
            if not cols:
                continue
            ident = sum(ta[k] == tb[k] for k in cols) / len(cols)
            res_pairs = None
            if pa is not None and pb is not None:
                res_pairs = [(pa[k], pb[k]) for k in cols if pa[k] is not None and pb[k] is not None]
            pairs.append({"identity": ident, "pairs": res_pairs})
    return pairs


def forward_flops(tokens: int, layers: int, dim: int, vocab: int) -> float:
    return tokens * (layers * (24 * dim * dim + 4 * tokens * dim) + 2 * dim * dim + 2 * dim * vocab)


def proteome_flops(lengths: list[int], layers: int, dim: int, vocab: int = 33, window: int = 1022) -> float:
    """Naive-equivalent FLOPs of exact scoring: L+1 forwards of min(L, window)+2 tokens per protein."""
    return float(sum((n + 1) * forward_flops(min(n, window) + 2, layers, dim, vocab) for n in lengths))


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, reps: int, budget_s: float = 10.0) -> tuple[float, int]:
    """FLOP/s of an n x n x n torch.matmul (best of ``reps`` after one warm-up) and the n used.

    n is ``size`` unless a 256^3 probe says ``reps + 1`` products would exceed ``budget_s`` (bf16 on a CPU
    without native bf16 instructions runs at a fraction of a GFLOP/s); then n is halved until they fit.
    """
    def best_time(n: int, count: int) -> float:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        best = math.inf
        with torch.inference_mode():
            for _ in range(count):
                sync(device)
                t0 = time.perf_counter()
                torch.matmul(a, b)
                sync(device)
                best = min(best, time.perf_counter() - t0)
        return best

    probe = 2 * 256**3 / best_time(256, 2)
    n = size
    while n > 256 and (reps + 1) * 2 * n**3 / probe > budget_s:
        n //= 2
    best_time(n, 1)  # warm-up
    return 2 * n**3 / best_time(n, reps), n

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --- backends side by side (bench_backends.py, bench_scoring.py --backends) ---

def hf_naive_scores(model, residue_token, bos, eos, mask, sequences):
    """transformers' stock forward, batch 1, one mask per forward; plus one unmasked forward."""
    out = []
    with torch.inference_mode():
        for seq in sequences:
            ids = torch.tensor([[bos] + [residue_token[c] for c in seq] + [eos]])
            truth = ids[0, 1:-1]
            masked = []
            for i in range(len(seq)):
                copy = ids.clone()
                copy[0, i + 1] = mask
                logits = model(input_ids=copy).logits
                masked.append(torch.log_softmax(logits[0, i + 1].float(), -1)[truth[i]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, 1:-1].float(), -1)
            out.append({"logp_masked": torch.stack(masked).double().numpy(),
                        "logp_unmasked": logp.gather(1, truth.unsqueeze(1)).squeeze(1).double().numpy()})
    return out


def forward_only(fair, hf, sequence: str, batch_tokens: int, reps: int) -> dict:
    """One batch of masked copies of ``sequence`` as the scorer packs it, through each fast path,
    alternating, fastest of ``reps``: the per-forward cost without job planning or the LM's size."""
    from plmscreen.screening.model.backends.hf_esm import esm_logits_at
    from plmscreen.screening.model.forward import logprobs_at

    rows = max(1, min(len(sequence), batch_tokens // (len(sequence) + 2)))
    windows = [fair.encode(sequence)] * rows
    tokens = fair.assemble(windows, [[i] for i in range(rows)])
    query = (torch.arange(rows) + 1).unsqueeze(1)
    runs = {"native": lambda: logprobs_at(fair.model, tokens, query), "hf": lambda: esm_logits_at(hf.model, tokens, query)}
    best = {k: float("inf") for k in runs}
    with torch.inference_mode():
        for run in runs.values():
            run()
        for _ in range(reps):
            for k, run in runs.items():
                t0 = time.perf_counter()
                run()
                best[k] = min(best[k], time.perf_counter() - t0)
    return {"rows": rows, "tokens": tuple(tokens.shape), "native_s": best["native"], "hf_s": best["hf"],
            "hf_over_native": best["hf"] / best["native"]}


def max_delta(a: list[dict], b: list[dict]) -> float:
    return max(float(np.max(np.abs(x[k] - y[k]))) for x, y in zip(a, b) for k in ("logp_masked", "logp_unmasked"))
