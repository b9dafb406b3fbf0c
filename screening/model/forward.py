"""ESM-2's forward pass, computing only what masked scoring reads.

Same weights and the same math as ``esm.model.esm2.ESM2.forward``, with four savings:
- attention through ``F.scaled_dot_product_attention`` (fair-esm's rotary path computes the
  full attention matrix and head-averaged maps in Python ops);
- the rotary embedding as one complex multiplication: the query and key projections' rows are
  reordered (once per model, ``InterleavedProjections``) so that each head's rotary pairs (j and
  j + head_dim/2, which fair-esm rotates with ``rotate_half``) sit side by side. Queries and keys
  are reordered alike, so their dot products are the same sums; the rotation then reads each
  tensor once instead of the five passes of ``rotate_half`` (bench/results/rotary_forward.md);
- the last layer runs its queries, feed-forward and the LM head only at the positions read;
- no attention maps or hidden states are kept.
``tests/test_scoring.py`` pins it against fair-esm's own forward.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F


class RotaryTables:
    """e^{i t f_j} for token positions t and rotary frequencies f_j (``inv_freq``), per sequence
    length: a complex (length, head_dim / 2) table (fair-esm keeps one cos/sin pair)."""

    def __init__(self):
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, inv_freq: torch.Tensor, length: int) -> torch.Tensor:
        # Keyed by the tensor's address, and the entry holds the tensor: while it is cached its
        # memory cannot be freed and reused by another model's inv_freq (of another head size,
        # which once got this one's tables when two models were loaded one after the other).
        key = (length, inv_freq.device, inv_freq.data_ptr(), inv_freq.numel())
        if key not in self._cache:
            t = torch.arange(length, device=inv_freq.device).type_as(inv_freq)
            freqs = torch.outer(t, inv_freq).float()
            self._cache[key] = (torch.polar(torch.ones_like(freqs), freqs), inv_freq)
        return self._cache[key][0]


_ROTARY = RotaryTables()


def interleave_order(heads: int, head_dim: int, device=None) -> torch.Tensor:
    """Output rows of a (heads x head_dim) projection, each head's halves interleaved:
    head h's rows h*D + [0, D/2, 1, D/2 + 1, ...]."""
    half = torch.arange(head_dim // 2, device=device)
    within = torch.stack([half, half + head_dim // 2], dim=-1).reshape(-1)
    return (torch.arange(heads, device=device)[:, None] * head_dim + within).reshape(-1)


class InterleavedProjections:
    """A query or key projection's weight and bias with rows in ``interleave_order``, copied once
    per module and kept while the module lives. The copy is rebuilt when the weights change (a new
    tensor, device or dtype, or an in-place update such as ``load_state_dict``), so it can never
    serve stale weights. It costs 2 x embed_dim^2 numbers per layer (1/6 of a layer's weights)."""

    def __init__(self):
        self._cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @staticmethod
    def _stamp(tensor: torch.Tensor | None) -> tuple | None:
        return None if tensor is None else (tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device, tensor.shape)

    def get(self, linear: torch.nn.Linear, heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        stamp = (self._stamp(linear.weight), self._stamp(linear.bias), heads, head_dim)
        hit = self._cache.get(linear)
        if hit is None or hit[0] != stamp:
            # Plain tensors even when called under inference_mode, and no autograd history.
            with torch.inference_mode(False), torch.no_grad():
                order = interleave_order(heads, head_dim, linear.weight.device)
                weight = linear.weight.detach()[order].contiguous()
                bias = None if linear.bias is None else linear.bias.detach()[order].contiguous()
            hit = (stamp, weight, bias)
            self._cache[linear] = hit
        return hit[1], hit[2]


_PROJECTIONS = InterleavedProjections()


def rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (B, T, H, D), each head's pairs interleaved (``interleave_order``);
    ``table`` (T, D/2) or (B, T, D/2) from ``RotaryTables``. Returns (B, H, T, D)."""
    table = table.unsqueeze(-2)  # broadcast over heads
    pairs = x.unflatten(-1, (-1, 2))
    if x.dtype in (torch.float32, torch.float64):
        complex_dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        rotated = torch.view_as_real(torch.view_as_complex(pairs.contiguous()) * table.to(complex_dtype))
    else:  # no complex type for bf16; fp16's has few kernels: the same products, written out
        re, im = pairs.unbind(-1)
        cos, sin = table.real.to(x.dtype), table.imag.to(x.dtype)
        rotated = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)
    return rotated.flatten(-2).transpose(1, 2)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) and index (B, Q) -> (B, Q, ...)."""
    expand = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, expand)


def rotary_attention(q, k, v, table, query_pos, key_mask, scale: float) -> torch.Tensor:
    """Rotary-embedded scaled dot-product attention of (B, Q, H, D) queries over (B, T, H, D) keys
    and values, queries and keys in ``interleave_order``; the queries sit at token positions
    ``query_pos`` (B, Q), or at every position when it is None. ``table`` is ``RotaryTables.get``'s.
    Returns (B, H, Q, D)."""
    q = rotate(q, table if query_pos is None else table[query_pos])
    k = rotate(k, table)
    return F.scaled_dot_product_attention(q, k, v.transpose(1, 2), attn_mask=key_mask, scale=scale)


def _layer(layer, x: torch.Tensor, key_mask: torch.Tensor | None, query_pos: torch.Tensor | None) -> torch.Tensor:
    """One pre-LN transformer layer on (B, T, E); outputs only rows ``query_pos`` when given."""
    attn = layer.self_attn
    batch, length, embed = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    h = layer.self_attn_layer_norm(x)
    h_query = h if query_pos is None else _gather_rows(h, query_pos)
    q = F.linear(h_query, *_PROJECTIONS.get(attn.q_proj, heads, head_dim)).view(batch, -1, heads, head_dim)
    k = F.linear(h, *_PROJECTIONS.get(attn.k_proj, heads, head_dim)).view(batch, length, heads, head_dim)
    v = attn.v_proj(h).view(batch, length, heads, head_dim)
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
