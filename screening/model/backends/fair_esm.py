"""fair-esm ESM-2: today's native path (``plmscreen.screening.model.checkpoints.load_model`` + ``plmscreen.screening.model.forward``) as a backend.

Nothing numerical is new here: the fast path is ``plmscreen.screening.model.forward.logprobs_at`` and the reference
path is fair-esm's own ``model(tokens)["logits"]``, exactly what ``Scorer._forward`` runs for the
engines "plmscreen" and "fair-esm", so scores through this backend are bit-identical to today's.
"""

from __future__ import annotations

import torch

from plmscreen.screening.model.backends.base import Backend
from plmscreen.screening.model.forward import logprobs_at as esm2_logprobs_at
from plmscreen.screening.model.checkpoints import LoadedModel, load_model


class FairEsmBackend(Backend):
    family = "fair-esm"

    def __init__(self, loaded: LoadedModel, normalise: str = "vocabulary"):
        alphabet = loaded.alphabet
        self.loaded = loaded
        self._setup(
            model=loaded.model, name=loaded.name, checkpoint_path=loaded.checkpoint_path,
            checkpoint_sha256=loaded.checkpoint_sha256, device=loaded.device, max_residues=loaded.max_residues,
            vocab=alphabet.all_toks, vocab_size=len(alphabet.all_toks), bos=alphabet.cls_idx, eos=alphabet.eos_idx,
            pad=alphabet.padding_idx, mask=alphabet.mask_idx, unk=alphabet.unk_idx, normalise=normalise,
            embed_dim=loaded.model.embed_dim,
        )

    @classmethod
    def load(cls, model: str, normalise: str = "vocabulary", **load_kwargs) -> FairEsmBackend:
        """``plmscreen.screening.model.checkpoints.load_model`` (bundled name, fair-esm name or checkpoint path), wrapped."""
        return cls(load_model(model, **load_kwargs), normalise=normalise)

    # The window follows the LoadedModel, as the scorer's tests change it there.
    @property
    def max_residues(self) -> int:
        return self.loaded.max_residues

    @max_residues.setter
    def max_residues(self, value: int) -> None:
        self.loaded.max_residues = value

    def _logits_at(self, tokens, query_pos, reference):
        logits = self.model(tokens)["logits"]
        return torch.gather(logits, 1, query_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))

    def logprobs_at(self, tokens: torch.Tensor, query_pos: torch.Tensor, reference: bool = False) -> torch.Tensor:
        if self._excluded is None:  # today's code paths, operation for operation
            if not reference:
                return esm2_logprobs_at(self.model, tokens, query_pos)
            logp = torch.log_softmax(self.model(tokens)["logits"].float(), dim=-1)
            return torch.gather(logp, 1, query_pos.unsqueeze(-1).expand(-1, -1, logp.shape[-1]))
        if reference:
            return super().logprobs_at(tokens, query_pos, reference)
        logp = esm2_logprobs_at(self.model, tokens, query_pos)  # log-softmax is shift-invariant:
        return super()._renormalise(logp)

    def describe(self) -> dict:
        return {**self.loaded.describe(), **super().describe()}
