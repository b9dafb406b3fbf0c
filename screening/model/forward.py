"""ESM-2's forward pass, computing only what masked scoring reads.

Same weights and the same math as ``esm.model.esm2.ESM2.forward``, with three savings:
- attention through ``F.scaled_dot_product_attention`` (fair-esm's rotary path computes the
  full attention matrix and head-averaged maps in Python ops);
- the last layer runs its queries, feed-forward and the LM head only at the positions read;
- no attention maps or hidden states are kept.
``tests/test_scoring.py`` pins it against fair-esm's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F



class RotaryTables:
    """cos/sin tables of ESM-2's rotary embedding per sequence length (fair-esm keeps only one)."""

    def __init__(self):
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def get(self, inv_freq: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Keyed by the tensor's address, and the entry holds the tensor: while it is cached its
        # memory cannot be freed and reused by another model's inv_freq (of another head size,
        # which once got this one's tables when two models were loaded one after the other).
        key = (length, inv_freq.device, inv_freq.data_ptr(), inv_freq.numel())
        if key not in self._cache:
            t = torch.arange(length, device=inv_freq.device).type_as(inv_freq)
            freqs = torch.outer(t, inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            self._cache[key] = (emb.cos(), emb.sin(), inv_freq)
        cos, sin, _ = self._cache[key]
        return cos, sin


_ROTARY = RotaryTables()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) and index (B, Q) -> (B, Q, ...)."""
    expand = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, expand)


def rotary_attention(q, k, v, cos_sin, query_pos, key_mask, scale: float) -> torch.Tensor:
    """Rotary-embedded scaled dot-product attention of (B, H, Q, D) queries over (B, H, T, D) keys;
    the queries sit at token positions ``query_pos`` (B, Q), or at every position when it is None."""
    cos, sin = cos_sin
    k = k * cos.to(k.dtype) + _rotate_half(k) * sin.to(k.dtype)
    if query_pos is None:
        q_cos, q_sin = cos, sin
    else:
        q_cos, q_sin = cos[query_pos].unsqueeze(1), sin[query_pos].unsqueeze(1)
    q = q * q_cos.to(q.dtype) + _rotate_half(q) * q_sin.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale)


def _layer(layer, x: torch.Tensor, key_mask: torch.Tensor | None, query_pos: torch.Tensor | None) -> torch.Tensor:
    """One pre-LN transformer layer on (B, T, E); outputs only rows ``query_pos`` when given."""
    attn = layer.self_attn
    batch, length, embed = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    h = layer.self_attn_layer_norm(x)
    h_query = h if query_pos is None else _gather_rows(h, query_pos)
    q = attn.q_proj(h_query).view(batch, -1, heads, head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(batch, length, heads, head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(batch, length, heads, head_dim).transpose(1, 2)
    out = rotary_attention(q, k, v, _ROTARY.get(attn.rot_emb.inv_freq, length), query_pos, key_mask, attn.scaling)
    out = attn.out_proj(out.transpose(1, 2).reshape(batch, -1, embed))
    residual = x if query_pos is None else _gather_rows(x, query_pos)
    x = residual + out
    # F.gelu is the same exact (erf) GELU as fair-esm's, in one fused pass instead of five.
    return x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))


def logprobs_at(model, tokens: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (B, Q, V) over the alphabet at token positions ``query_pos`` (B, Q).

    ``tokens`` (B, T) hold BOS, residues, EOS and padding as fair-esm's batch converter makes them.
    """
    padding = tokens.eq(model.padding_idx)
    x = model.embed_scale * model.embed_tokens(tokens)
    if model.token_dropout:
        # ESM-2 rescales embeddings by the observed mask ratio, so extra masks move every position.
        masked = tokens.eq(model.mask_idx)
        x = x.masked_fill(masked.unsqueeze(-1), 0.0)
        observed = masked.sum(-1).to(x.dtype) / (~padding).sum(-1)
        x = x * (1 - 0.15 * 0.8) / (1 - observed)[:, None, None]
    x = x * (1 - padding.unsqueeze(-1).type_as(x))
    key_mask = (~padding)[:, None, None, :] if padding.any() else None
    last = len(model.layers) - 1
    for index, layer in enumerate(model.layers):
        x = _layer(layer, x, key_mask, query_pos if index == last else None)
    x = model.emb_layer_norm_after(x)
    logits = model.lm_head(x)
    return torch.log_softmax(logits.float(), dim=-1)
