"""A constructed first layer for the control's training: one attention head that gathers each
position's neighbours (offsets -2, -1, +1, +2 by default) into a subspace of the residual stream.

Why (training/results/copy_lookup_v4.md, attempts A-K): a masked residue's partner copy can only be
found by content, by matching the residue's neighbours with the partner's neighbours. That takes
two steps: a head that copies neighbour identities into each position, then a head that matches
them. Trained from random weights on one CPU thread, twelve runs learnt offset-bound copying or
none; the first step earns nothing until the second exists. This module builds the first step by
hand, in fair-esm's own ESM-2 parameters (so the result is an ordinary ESM-2 checkpoint), and the
training learns the match and everything else from there.

How, for head 0 of layer 0 (ESM-2 rotary attention, q and k rotated by their positions):
- the 20 amino acids embed as scaled one-hot vectors in dimensions 0-19 (the token code); nothing
  else in their embeddings, so after the layer norm the head reads a clean code;
- q and k are constants (zero weights, bias only). With rotary embeddings the score of query p for
  key p' is then sum_f alpha_f cos((p' - p) theta_f), a function of the offset alone; the alphas
  come from a linear programme that makes the score equal at the target offsets and at least
  ``margin`` lower at every other offset up to ``max_offset`` (the offset itself, 0, included);
- v copies the token code, out_proj writes it into dimensions 20-39 (the neighbour code), and the
  layer's feed-forward starts at zero, so the residual stream after layer 0 holds the token's own
  code and the mean code of its neighbours. A masked position's embedding is zero (token dropout),
  so it contributes nothing as a neighbour.
"""

from __future__ import annotations

import numpy as np
import torch

from train_plmscreen_mini import AA20

TOKEN_CODE = slice(0, 20)
NEIGHBOUR_CODE = slice(20, 40)
NEIGHBOUR_GAIN = 2.0  # out_proj's weight on the neighbour code, in units of the token code's scale
TARGETS = (-2, -1, 1, 2)


def offset_kernel(inv_freq: np.ndarray, targets: tuple[int, ...], max_offset: int) -> tuple[np.ndarray, float]:
    """alpha_f such that sum_f alpha_f cos(d theta_f) is 1 at every target offset d and at most
    1 - margin elsewhere in [-max_offset, max_offset]; returns (alpha, margin)."""
    from scipy.optimize import linprog

    theta = np.asarray(inv_freq, dtype=np.float64)
    offsets = np.arange(-max_offset, max_offset + 1)
    others = offsets[~np.isin(offsets, targets)]
    n = theta.size
    # variables: alpha (n), margin t; maximise t
    c = np.zeros(n + 1)
    c[-1] = -1.0
    a_ub = np.hstack([np.cos(np.outer(others, theta)), np.ones((others.size, 1))])
    b_ub = np.ones(others.size)
    a_eq = np.hstack([np.cos(np.outer(np.asarray(targets), theta)), np.zeros((len(targets), 1))])
    b_eq = np.ones(len(targets))
    bound = 200.0 / n  # keeps the programme bounded; the optimum lies well inside
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq,
                  bounds=[(-bound, bound)] * n + [(None, 2.0)], method="highs")
    if not res.success:
        raise RuntimeError(f"no offset kernel: {res.message}")
    return res.x[:n], float(res.x[-1])


@torch.no_grad()
def construct_neighbour_layer(model, alphabet, targets: tuple[int, ...] = TARGETS,
                              max_offset: int = 1100, gap_nats: float = 20.0) -> dict:
    """Set layer 0 head 0 (and the embeddings) of a fair-esm ESM2 ``model`` as described above."""
    embed = model.embed_tokens.weight
    width = embed.shape[1]
    layer = model.layers[0]
    attn = layer.self_attn
    head_dim = attn.head_dim
    if head_dim < 20 or width < 40:
        raise ValueError(f"needs a head of >= 20 dims and a width >= 40 (got {head_dim}, {width})")
    aa = [alphabet.get_idx(a) for a in AA20]
    code = float(np.sqrt(width))
    # Embeddings: amino acids are their code only; other tokens lose any component in the codes.
    embed[:, TOKEN_CODE] = 0.0
    embed[:, NEIGHBOUR_CODE] = 0.0
    embed[aa] = 0.0
    for k, t in enumerate(aa):
        embed[t, TOKEN_CODE.start + k] = code

    inv_freq = attn.rot_emb.inv_freq.double().numpy()
    alpha, margin = offset_kernel(inv_freq, targets, max_offset)
    if margin <= 0:
        raise RuntimeError(f"offset kernel has no margin ({margin:.3g})")
    alpha = alpha * gap_nats / margin
    half = head_dim // 2
    q_bias = torch.zeros(head_dim, dtype=torch.float64)
    k_bias = torch.zeros(head_dim, dtype=torch.float64)
    q_bias[:half] = torch.from_numpy(np.sqrt(np.abs(alpha)))
    k_bias[:half] = torch.from_numpy(np.sign(alpha) * np.sqrt(np.abs(alpha)))
    rows = slice(0, head_dim)  # head 0
    attn.q_proj.weight[rows] = 0.0
    attn.q_proj.bias[rows] = (q_bias / attn.scaling).to(attn.q_proj.bias.dtype)  # fair-esm scales q after the bias
    attn.k_proj.weight[rows] = 0.0
    attn.k_proj.bias[rows] = k_bias.to(attn.k_proj.bias.dtype)
    # v: the layer-normed token code (about sqrt(width) at the token's dimension) to ~1.
    attn.v_proj.weight[rows] = 0.0
    attn.v_proj.bias[rows] = 0.0
    for k in range(20):
        attn.v_proj.weight[k, TOKEN_CODE.start + k] = 1.0 / np.sqrt(width)
    # out_proj: head 0's value dims 0-19 into the neighbour code; nothing else from head 0.
    attn.out_proj.weight[:, rows] = 0.0
    for k in range(20):
        attn.out_proj.weight[NEIGHBOUR_CODE.start + k, k] = NEIGHBOUR_GAIN * code
    if attn.num_heads == 1:
        attn.out_proj.bias.zero_()
    layer.fc2.weight.zero_()
    layer.fc2.bias.zero_()
    return {"targets": list(targets), "max_offset": max_offset, "margin": margin, "gap_nats": gap_nats}


def constructed_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters ``construct_neighbour_layer`` sets in layer 0's attention (frozen for a while)."""
    attn = model.layers[0].self_attn
    return [attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias,
            attn.v_proj.weight, attn.v_proj.bias, attn.out_proj.weight, attn.out_proj.bias]


@torch.no_grad()
def neighbour_code_check(model, alphabet, length: int = 600, seed: int = 0,
                         targets: tuple[int, ...] = TARGETS) -> float:
    """Largest deviation of the neighbour code after layer 0 from the exact neighbour mean (in units
    of one neighbour's share) on a random sequence, through fair-esm's own forward."""
    g = np.random.default_rng(seed)
    seq = "".join(g.choice(list(AA20), length))
    tokens = torch.tensor([[alphabet.cls_idx] + [alphabet.get_idx(a) for a in seq] + [alphabet.eos_idx]])
    rep = model(tokens, repr_layers=[1])["representations"][1][0]
    code = float(np.sqrt(model.embed_tokens.weight.shape[1]))
    worst = 0.0
    reach = max(abs(d) for d in targets)
    for p in range(reach, length - reach):
        expected = np.zeros(20)
        for d in targets:
            expected[AA20.index(seq[p + d])] += 1.0 / len(targets)
        got = rep[p + 1, NEIGHBOUR_CODE].double().numpy() / (NEIGHBOUR_GAIN * code)
        worst = max(worst, float(np.abs(got - expected).max()) * len(targets))
    return worst
