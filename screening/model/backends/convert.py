"""Convert a fair-esm ESM-2 checkpoint to a Hugging Face ``EsmForMaskedLM`` directory.

The same mapping as transformers' own ESM conversion (``convert_esm.py``), written for plmscreen:
fair-esm's ``ESM2`` is built from the checkpoint as plmscreen loads it, each module's weights are
copied into the HF module that plays its part, the tokenizer's vocab.txt is fair-esm's alphabet in
token order, and the converted model is checked against fair-esm's own forward before anything is
written. The result is config.json + model.safetensors + the tokenizer files.

  python -m plmscreen.screening.model.backends.convert esm2_t6_8M_UR50D.pt OUT_DIR
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from plmscreen.screening.input import STANDARD_ALPHABET
from plmscreen.screening.model.checkpoints import ModelLoadError, build_model, read_checkpoint

# fair-esm ESM2 module (per layer) -> HF EsmLayer module
LAYER_MAP = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "LayerNorm",
}


def hf_config(esm_model, alphabet):
    from transformers import EsmConfig

    return EsmConfig(
        vocab_size=len(alphabet.all_toks),
        mask_token_id=alphabet.mask_idx,
        pad_token_id=alphabet.padding_idx,
        hidden_size=esm_model.embed_dim,
        num_hidden_layers=esm_model.num_layers,
        num_attention_heads=esm_model.attention_heads,
        intermediate_size=esm_model.layers[0].fc1.out_features,
        max_position_embeddings=1026,  # ESM-2's 1024-token crops + 2, as the released HF configs say
        layer_norm_eps=esm_model.emb_layer_norm_after.eps,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=bool(esm_model.token_dropout),
        tie_word_embeddings=True,
        is_folding_model=False,
    )


def _copy(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    dst.weight.data.copy_(src.weight.data)
    if getattr(src, "bias", None) is not None:
        dst.bias.data.copy_(src.bias.data)


def fair_esm_to_hf(esm_model, alphabet):
    """An ``EsmForMaskedLM`` with ``esm_model``'s weights (fair-esm ``ESM2``, any size)."""
    from transformers import EsmForMaskedLM

    config = hf_config(esm_model, alphabet)
    hf = EsmForMaskedLM(config).eval()
    with torch.no_grad():
        hf.esm.embeddings.word_embeddings.weight.copy_(esm_model.embed_tokens.weight)
        hf.esm.rotary_embeddings.inv_freq.copy_(esm_model.layers[0].self_attn.rot_emb.inv_freq)
        for src, dst in zip(esm_model.layers, hf.esm.encoder.layer):
            for src_name, dst_name in LAYER_MAP.items():
                _copy(dst.get_submodule(dst_name), src.get_submodule(src_name))
        _copy(hf.esm.encoder.emb_layer_norm_after, esm_model.emb_layer_norm_after)
        _copy(hf.lm_head.dense, esm_model.lm_head.dense)
        _copy(hf.lm_head.layer_norm, esm_model.lm_head.layer_norm)
        hf.lm_head.decoder.weight.copy_(esm_model.lm_head.weight)  # tied to the embeddings in both
        hf.lm_head.bias.copy_(esm_model.lm_head.bias)
        _copy(hf.esm.contact_head.regression, esm_model.contact_head.regression)
    return hf


def save_tokenizer(alphabet, directory: Path):
    from transformers import EsmTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(alphabet.all_toks) + "\n")
        tokenizer = EsmTokenizer(str(vocab))
        tokenizer.save_pretrained(directory)
    return tokenizer


def check_same_outputs(esm_model, hf, alphabet, atol: float = 1e-4) -> float:
    """Largest |logit difference| between fair-esm's forward and HF's on a padded, masked batch."""
    torch.manual_seed(0)
    standard = [alphabet.get_idx(a) for a in STANDARD_ALPHABET]
    lengths = (37, 20)
    tokens = torch.full((2, max(lengths) + 2), alphabet.padding_idx)
    for row, n in enumerate(lengths):
        tokens[row, 0], tokens[row, n + 1] = alphabet.cls_idx, alphabet.eos_idx
        tokens[row, 1 : n + 1] = torch.tensor(standard)[torch.randint(0, 20, (n,))]
        tokens[row, torch.randint(1, n + 1, (3,))] = alphabet.mask_idx
    with torch.no_grad():
        ref = esm_model(tokens)["logits"]
        got = hf(input_ids=tokens, attention_mask=tokens.ne(alphabet.padding_idx).long()).logits
    keep = tokens.ne(alphabet.padding_idx)
    diff = float((ref - got).abs()[keep].max())
    if diff > atol:
        raise RuntimeError(f"converted model differs from fair-esm by {diff:.3g} in the logits")
    return diff


def convert_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """fair-esm ESM-2 checkpoint file -> HF directory (config.json, model.safetensors, tokenizer)."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    data = read_checkpoint(checkpoint)
    esm_model, alphabet = build_model(checkpoint.stem, data, str(checkpoint))
    esm_model.eval()
    hf = fair_esm_to_hf(esm_model, alphabet)
    check_same_outputs(esm_model, hf, alphabet)
    out_dir.mkdir(parents=True, exist_ok=True)
    from plmscreen.screening.model.backends.hf_esm import quiet_transformers

    with quiet_transformers():
        hf.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(alphabet, out_dir)
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    try:
        print(convert_checkpoint(args.checkpoint, args.out_dir))
    except (ModelLoadError, RuntimeError) as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
