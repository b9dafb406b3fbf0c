"""Tiny random checkpoints in each library's own on-disk format, for the backend tests.

Weights are widened like conftest's ESM-2 checkpoints, so log-probabilities differ across
positions and a wrong mask, offset or normalisation moves numbers well past the tolerances.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBZUOJ"


def widen(model: torch.nn.Module, scale: float = 2.0, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0, scale / param.shape[-1] ** 0.5)


def write_hf_esm(directory: Path, fair_esm_checkpoint: Path) -> Path:
    """The fair-esm checkpoint converted with plmscreen's converter (transformers' mapping)."""
    from plmscreen.screening.model.backends.convert import convert_checkpoint

    return convert_checkpoint(fair_esm_checkpoint, directory)


def write_esmc(directory: Path, layers: int = 2, hidden: int = 32, heads: int = 4, max_positions: int = 256,
               slot_bias: float = 4.0, seed: int = 0) -> Path:
    """A random ESMC checkpoint as transformers saves one (config.json, model.safetensors, tokenizer).
    The 31 padding slots of the 64-wide head get a large bias: a softmax over all 64 columns would
    then differ visibly from one over the real tokens."""
    from transformers import EsmcConfig, EsmcForMaskedLM, EsmcTokenizer
    from transformers.utils import logging as hf_logging

    config = EsmcConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    model = EsmcForMaskedLM(config).eval()
    widen(model, seed=seed)
    with torch.no_grad():
        model.lm_head.decoder.bias[33:] = slot_bias
    directory.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    model.save_pretrained(directory, safe_serialization=True)
    EsmcTokenizer().save_pretrained(directory)
    return directory


CARP_FIELDS = {"d_embed": 8, "d_model": 32, "n_layers": 4, "kernel_size": 5, "activation": "gelu", "slim": True, "r": 8}


def write_carp(path: Path, seed: int = 0, **fields) -> Path:
    """A random CARP checkpoint laid out as the released carp_*.pt files."""
    from sequence_models.constants import MASK, PROTEIN_ALPHABET
    from sequence_models.convolutional import ByteNetLM

    f = {**CARP_FIELDS, **fields}
    torch.manual_seed(seed)
    net = ByteNetLM(len(PROTEIN_ALPHABET), f["d_embed"], f["d_model"], f["n_layers"], f["kernel_size"], f["r"],
                    dropout=0.0, activation=f["activation"], causal=False, padding_idx=PROTEIN_ALPHABET.index(MASK),
                    final_ln=True, slim=f["slim"])
    widen(net, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": "carp_tiny_test", **f, "model_state_dict": net.state_dict()}, path)
    return path


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine a 2-thread
    OpenMP region waits for a descheduled thread (a 33x32 LayerNorm took 7 ms instead of 12 us)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
