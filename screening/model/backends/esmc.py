"""ESM C through Hugging Face transformers (``EsmcForMaskedLM``, transformers >= 5.24 here).

Tokens: ``<cls>`` residues ``<eos>``, right-padded with ``<pad>``, ``<mask>`` = 32; residue letters
are single-character tokens (a BPE model with no merges), ``J`` has none and becomes ``<unk>``.
The LM head is 64 wide but the vocabulary has 33 tokens: the other 31 columns are padding slots
that no token produces, and scores are normalised over the residue tokens by default
(``normalise="residues"``), over the 33 real tokens with ``normalise="vocabulary"``.

No token-dropout rescaling (ESM C has none) and no learned positions (RoPE), so a masked copy
differs from the unmasked sequence only in its mask tokens. The window is the config's
``max_position_embeddings`` less BOS and EOS (2046 residues for the released models).

Fast path: the encoder as transformers runs it, then the LM head only at the positions read.
Reference path: the stock ``model(input_ids, attention_mask).logits``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from plmscreen.screening.model.backends.base import Backend
from plmscreen.screening.model.backends.hf_esm import load_transformers_model, vocab_by_id
from plmscreen.screening.model.forward import _gather_rows
from plmscreen.screening.model.checkpoints import ModelLoadError


def load_esmc_tokenizer(directory: Path | None):
    from transformers import EsmcTokenizer

    if directory is not None and any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return EsmcTokenizer.from_pretrained(directory, local_files_only=True)
    return EsmcTokenizer()  # the vocabulary is fixed for every ESM C checkpoint


class EsmcBackend(Backend):
    family = "hf-esmc"

    def __init__(self, model, tokenizer, *, name: str, directory: Path, sha256: str, device: torch.device,
                 normalise: str = "residues", max_residues: int | None = None, extra: dict | None = None):
        config = model.config
        if tokenizer.mask_token_id != config.mask_token_id:
            raise ModelLoadError(f"{directory}: tokenizer mask token {tokenizer.mask_token_id} is not the "
                                 f"config's {config.mask_token_id}")
        self._setup(
            model=model, name=name, checkpoint_path=directory, checkpoint_sha256=sha256, device=device,
            max_residues=max_residues or config.max_position_embeddings - 2, vocab=vocab_by_id(tokenizer),
            vocab_size=config.vocab_size, bos=tokenizer.cls_token_id, eos=tokenizer.eos_token_id,
            pad=tokenizer.pad_token_id, mask=tokenizer.mask_token_id, unk=tokenizer.unk_token_id,
            normalise=normalise, embed_dim=config.hidden_size,
            extra={"num_layers": config.num_hidden_layers, "attention_heads": config.num_attention_heads,
                   **(extra or {})},
        )

    @classmethod
    def load(cls, directory: str | Path, name: str | None = None, device: str = "auto", normalise: str = "residues",
             max_residues: int | None = None, expected_sha256: str | None = None) -> EsmcBackend:
        try:
            from transformers import EsmcForMaskedLM
        except ImportError as exc:
            import transformers

            raise ModelLoadError(f"transformers {transformers.__version__} has no ESM C (EsmcForMaskedLM); "
                                 f"install plmscreen[hf] (transformers 5.24)") from exc
        return load_transformers_model(cls, EsmcForMaskedLM, load_esmc_tokenizer, "esmc", directory, name, device,
                                       normalise, max_residues, expected_sha256)

    def _logits_at(self, tokens, query_pos, reference):
        attention = (~self.padding(tokens)).long()
        if reference:
            logits = self.model(input_ids=tokens, attention_mask=attention).logits
            return torch.gather(logits, 1, query_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        hidden = self.model.esmc(input_ids=tokens, attention_mask=attention).last_hidden_state
        return self.model.lm_head(_gather_rows(hidden, query_pos))
