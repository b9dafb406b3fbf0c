"""ESM-2 through Hugging Face transformers (``EsmForMaskedLM``): a directory or a hub id.

The fast path runs the HF modules with the same savings as ``plmscreen.screening.model.forward`` (SDPA attention,
the last layer's queries, feed-forward and the LM head only at the positions read, no attention
maps), and the same math as ``EsmForMaskedLM.forward``, including ESM's token-dropout rescaling:
HF zeroes the embeddings of masked tokens and multiplies all embeddings by
(1 - 0.15 * 0.8) / (1 - masks / non-padding tokens), exactly as fair-esm does, provided the
attention mask is passed (without it HF divides by the padded length; the reference path always
passes it). The reference path is the stock ``model(input_ids, attention_mask).logits``.

Configs the fast path does not cover (learned absolute positions, ESM-1b's embedding LayerNorm, a
decoder) run through the stock forward.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from plmscreen.screening.model.backends.base import Backend
from plmscreen.screening.model.backends.hf_common import check_expected, checkpoint_identity, read_config, weight_files
from plmscreen.screening.model.forward import RotaryTables, _gather_rows, rotary_attention
from plmscreen.screening.model.checkpoints import ESM2_MAX_RESIDUES, CheckpointIdentity, ModelLoadError, resolve_device

_ROTARY = RotaryTables()
# Keys a converted checkpoint may lack without changing any score.
_OPTIONAL_KEYS = ("contact_head.", "position_ids", "inv_freq", "pooler.")


@contextmanager
def quiet_transformers():
    """No progress bars from transformers while loading (a screen's log has one line per model)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def materialise(model: torch.nn.Module) -> torch.nn.Module:
    """Copy every weight into process memory. transformers leaves them as views of the memory-mapped
    safetensors file; a file rewritten in place would then change the weights a run already
    hashed, and mapped tensors are not 64-byte aligned. Tied weights stay tied (one Parameter)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return model


def vocab_by_id(tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    tokens = [""] * (max(vocab.values()) + 1)
    for tok, i in vocab.items():
        tokens[i] = tok
    return tokens


def check_loading_info(info: dict, directory: Path, optional=_OPTIONAL_KEYS) -> None:
    missing = [k for k in info.get("missing_keys", []) if not any(o in k for o in optional)]
    mismatched = info.get("mismatched_keys", [])
    if missing or mismatched:
        raise ModelLoadError(
            f"checkpoint {directory} does not match the architecture its config declares: "
            f"missing {missing[:5]}, mismatched {[m[0] if isinstance(m, tuple) else m for m in mismatched][:5]}"
        )


def load_transformers_model(backend_cls, model_cls, load_tokenizer, model_type: str, directory, name, device, normalise,
                            max_residues, expected_sha256):
    """A transformers masked-LM checkpoint directory loaded as ``backend_cls``: the config's model
    type checked, the weights hashed (and checked against the run's planned digest), loaded
    offline from safetensors, copied off the memory map, and refused if the files changed meanwhile."""
    directory = Path(directory)
    config = read_config(directory)
    if config.get("model_type") != model_type:
        raise ModelLoadError(f"{directory} is a '{config.get('model_type')}' checkpoint, not {model_cls.__name__} "
                             f"(model_type '{model_type}')")
    torch_device = resolve_device(device)
    files = weight_files(directory)
    before = [CheckpointIdentity.of(f) for f in files]
    sha256, extra = checkpoint_identity(directory)
    check_expected(directory, sha256, expected_sha256)
    try:
        with quiet_transformers():
            model, info = model_cls.from_pretrained(
                directory, use_safetensors=True, local_files_only=True, output_loading_info=True,
                dtype=torch.float32, attn_implementation="sdpa")
        tokenizer = load_tokenizer(directory)
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"cannot load {directory} as {model_cls.__name__}: {type(exc).__name__}: {exc}") from exc
    check_loading_info(info, directory)
    if [CheckpointIdentity.of(f) for f in files] != before:
        raise ModelLoadError(f"checkpoint {directory} changed while it was being loaded; retry once it is complete")
    return backend_cls(materialise(model).eval().to(torch_device), tokenizer, name=name or directory.resolve().name,
                       directory=directory, sha256=sha256, device=torch_device, normalise=normalise,
                       max_residues=max_residues, extra=extra)


def _fast_path_applies(config) -> bool:
    return (getattr(config, "position_embedding_type", "absolute") == "rotary" and not config.emb_layer_norm_before
            and not config.is_decoder)


def _layer(layer, x: torch.Tensor, key_mask, query_pos, inv_freq) -> torch.Tensor:
    """One HF ``EsmLayer`` on (B, T, E); outputs only rows ``query_pos`` when given."""
    attn = layer.attention
    sa = attn.self
    batch, length, embed = x.shape
    heads, head_dim = sa.num_attention_heads, sa.attention_head_size
    h = attn.LayerNorm(x)
    h_query = h if query_pos is None else _gather_rows(h, query_pos)
    q = sa.query(h_query).view(batch, -1, heads, head_dim).transpose(1, 2)
    k = sa.key(h).view(batch, length, heads, head_dim).transpose(1, 2)
    v = sa.value(h).view(batch, length, heads, head_dim).transpose(1, 2)
    out = rotary_attention(q, k, v, _ROTARY.get(inv_freq, length), query_pos, key_mask, head_dim**-0.5)
    out = attn.output.dense(out.transpose(1, 2).reshape(batch, -1, embed))
    residual = x if query_pos is None else _gather_rows(x, query_pos)
    x = residual + out
    # HF's erf GELU written out; F.gelu is the same function in one pass.
    return x + layer.output.dense(F.gelu(layer.intermediate.dense(layer.LayerNorm(x))))


def esm_logits_at(model, tokens: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
    """Logits (B, Q, V) of an HF ``EsmForMaskedLM`` (rotary ESM-2) at token positions ``query_pos``."""
    esm = model.esm
    emb = esm.embeddings
    padding = tokens.eq(model.config.pad_token_id)
    x = emb.word_embeddings(tokens)
    if emb.token_dropout:
        masked = tokens.eq(emb.mask_token_id)
        x = x.masked_fill(masked.unsqueeze(-1), 0.0)
        observed = masked.sum(-1).to(x.dtype) / (~padding).sum(-1)
        x = x * (1 - 0.15 * 0.8) / (1 - observed)[:, None, None]
    x = x * (~padding).unsqueeze(-1).type_as(x)
    key_mask = (~padding)[:, None, None, :] if padding.any() else None
    inv_freq = esm.rotary_embeddings.inv_freq
    layers = esm.encoder.layer
    for index, layer in enumerate(layers):
        x = _layer(layer, x, key_mask, query_pos if index == len(layers) - 1 else None, inv_freq)
    x = esm.encoder.emb_layer_norm_after(x)
    return model.lm_head(x)


class HfEsmBackend(Backend):
    family = "hf-esm"

    def __init__(self, model, tokenizer, *, name: str, directory: Path, sha256: str, device: torch.device,
                 normalise: str = "vocabulary", max_residues: int | None = None, extra: dict | None = None):
        config = model.config
        if tokenizer.mask_token_id != config.mask_token_id or tokenizer.pad_token_id != config.pad_token_id:
            raise ModelLoadError(
                f"{directory}: tokenizer and config disagree on the mask/padding tokens "
                f"({tokenizer.mask_token_id}/{tokenizer.pad_token_id} vs {config.mask_token_id}/{config.pad_token_id})"
            )
        if max_residues is None:
            max_residues = ESM2_MAX_RESIDUES
            if config.position_embedding_type != "rotary":
                max_residues = min(max_residues, config.max_position_embeddings - config.pad_token_id - 3)
        self.fast = _fast_path_applies(config)
        self._setup(
            model=model, name=name, checkpoint_path=directory, checkpoint_sha256=sha256, device=device,
            max_residues=max_residues, vocab=vocab_by_id(tokenizer), vocab_size=config.vocab_size,
            bos=tokenizer.cls_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id,
            mask=tokenizer.mask_token_id, unk=tokenizer.unk_token_id, normalise=normalise, embed_dim=config.hidden_size,
            extra={"num_layers": config.num_hidden_layers, "attention_heads": config.num_attention_heads,
                   "token_dropout": bool(config.token_dropout), **(extra or {})},
        )

    @classmethod
    def load(cls, directory: str | Path, name: str | None = None, device: str = "auto", normalise: str = "vocabulary",
             max_residues: int | None = None, expected_sha256: str | None = None) -> HfEsmBackend:
        from transformers import EsmForMaskedLM, EsmTokenizer

        return load_transformers_model(cls, EsmForMaskedLM, lambda d: EsmTokenizer.from_pretrained(d, local_files_only=True),
                                       "esm", directory, name, device, normalise, max_residues, expected_sha256)

    def _logits_at(self, tokens, query_pos, reference):
        if self.fast and not reference:
            return esm_logits_at(self.model, tokens, query_pos)
        attention = (~self.padding(tokens)).long()
        logits = self.model(input_ids=tokens, attention_mask=attention).logits
        return torch.gather(logits, 1, query_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
