"""The interface every model family implements for masked scoring (issue 14).

A backend turns residues into model tokens with an explicit residue -> token map, assembles
masked copies (specials, masks, padding), and returns log-probabilities at query token positions,
normalised over a declared set of tokens. The scorer (``plmscreen.screening.score.scorer.Scorer``, through
``plmscreen.screening.model.backends.scorer.BackendScorer`` until the two are merged), triage, diagnostics,
validation and calibration only ever talk to this interface, so the same batching, windowing and
partner co-masking run on every family.

Columns of the returned rows are the model's own token ids (``vocab_size`` wide, 64 for ESM C);
tokens outside the normalisation set get log-probability -inf, so gathering by the residue's
token id works the same way for every family, and ``token_index`` is just the token id.

Normalisation (``normalise``):
- ``"vocabulary"``: every token the tokenizer defines (ESM-2's 33; ESM C's 33 real tokens, not its
  31 padding slots of the 64-wide head). The ESM-2 default: these are today's numbers.
- ``"residues"``: only the tokens residue letters map to (the 20 standard amino acids, X B Z U O,
  and J where the model has it, else the token J falls back to). The ESM C and CARP default.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from plmscreen.screening.input import EXTRA_RESIDUES, STANDARD_ALPHABET
from plmscreen.screening.model.checkpoints import file_sha256, model_record
from plmscreen.screening.score.scorer import CPU_BATCH_TOKENS

RESIDUE_LETTERS = STANDARD_ALPHABET + "".join(sorted(EXTRA_RESIDUES))
NORMALISATIONS = ("vocabulary", "residues")


def weights_sha256(files: Iterable[str | Path]) -> str:
    """Identity of a checkpoint's weight files: one file's own sha256 (what ``sha256sum`` prints),
    or for a sharded checkpoint the sha256 of its "name<TAB>sha256" lines in name order."""
    files = sorted(Path(f) for f in files)
    if not files:
        raise ValueError("no weight files")
    if len(files) == 1:
        return file_sha256(files[0])
    lines = "".join(f"{f.name}\t{file_sha256(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


class Backend(ABC):
    """One loaded masked language model, ready for batched masked scoring.

    Subclasses set the attributes in ``__init__`` (through ``_setup``) and implement ``_logits_at``.
    """

    family: str = "?"
    # Filled in by _setup:
    model: torch.nn.Module
    name: str
    checkpoint_path: str
    checkpoint_sha256: str
    device: torch.device
    max_residues: int  # the model window: longer sequences are scored in centred windows
    vocab: tuple[str, ...]  # token strings by id (the tokenizer's), len <= vocab_size
    vocab_size: int  # width of the model's logits and of the returned rows
    bos: int | None
    eos: int | None
    pad: int
    mask: int
    unk: int | None
    normalise: str
    embed_dim: int

    def _setup(self, *, model, name, checkpoint_path, checkpoint_sha256, device, max_residues, vocab,
               vocab_size, bos, eos, pad, mask, unk, normalise, embed_dim, extra=None) -> None:
        if normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got '{normalise}'")
        self.model, self.name = model, name
        self.checkpoint_path, self.checkpoint_sha256 = str(checkpoint_path), checkpoint_sha256
        self.device, self.max_residues = device, int(max_residues)
        self.vocab, self.vocab_size = tuple(vocab), int(vocab_size)
        self.bos, self.eos, self.pad, self.mask, self.unk = bos, eos, pad, mask, unk
        self.normalise, self.embed_dim = normalise, int(embed_dim)
        self._extra = dict(extra or {})
        index = {tok: i for i, tok in enumerate(self.vocab)}
        self.residue_token: dict[str, int] = {}
        for aa in RESIDUE_LETTERS:
            if aa in index:
                self.residue_token[aa] = index[aa]
            elif unk is not None:
                self.residue_token[aa] = unk
        if normalise == "vocabulary":
            columns = range(len(self.vocab))
        else:
            columns = sorted(set(self.residue_token.values()))
        keep = torch.zeros(self.vocab_size, dtype=torch.bool)
        keep[list(columns)] = True
        self.normalised = keep
        self._excluded = None if bool(keep.all()) else (~keep).to(device)
        self._lut = torch.full((128,), -1, dtype=torch.long)
        for aa, tok in self.residue_token.items():
            self._lut[ord(aa)] = tok

    # --- tokenisation ---------------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Token position of residue 0 in an assembled copy (1 after BOS, 0 without)."""
        return 0 if self.bos is None else 1

    @property
    def specials(self) -> int:
        """Tokens an assembled copy adds to its residues."""
        return (self.bos is not None) + (self.eos is not None)

    def encode(self, sequence: str) -> torch.Tensor:
        """One token id per residue (residue i -> ``encode(s)[i]``); letters the model lacks map to
        its unknown token, letters no protein has are refused."""
        if not sequence:
            return torch.zeros(0, dtype=torch.long)
        codes = torch.frombuffer(bytearray(sequence.encode("ascii", errors="replace")), dtype=torch.uint8).long()
        tokens = self._lut[codes.clamp(max=127)]
        if bool((tokens < 0).any()):
            bad = sorted({c for c in sequence if c not in self.residue_token})
            raise ValueError(f"residue letters {bad} cannot be encoded for {self.family} model {self.name}")
        return tokens

    def tokenize(self, sequence: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The full model input for ``sequence`` and the explicit residue -> token map:
        ``tokens[positions[i]]`` is residue i's token."""
        residues = self.encode(sequence)
        tokens = self.assemble([residues], [()])[0]
        positions = torch.arange(len(sequence)) + self.offset
        return tokens, positions

    def assemble(self, windows: Sequence[torch.Tensor], masked: Sequence[Iterable[int]]) -> torch.Tensor:
        """Right-padded token batch (B, T) of copies: specials around each window's residue tokens,
        ``masked[b]`` (0-based positions within window b) replaced by the mask token."""
        width = max(len(w) for w in windows) + self.specials
        tokens = torch.full((len(windows), width), self.pad, dtype=torch.long)
        for row, (residues, positions) in enumerate(zip(windows, masked)):
            start = self.offset
            if self.bos is not None:
                tokens[row, 0] = self.bos
            tokens[row, start : start + len(residues)] = residues
            if self.eos is not None:
                tokens[row, start + len(residues)] = self.eos
            for i in positions:
                tokens[row, start + i] = self.mask
        return tokens

    def token_index(self, aa: str) -> int:
        """Column of residue letter ``aa`` in the rows ``logprobs_at`` returns."""
        return self.residue_token[aa]

    # --- forward ----------------------------------------------------------------------------

    def padding(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.eq(self.pad)

    @abstractmethod
    def _logits_at(self, tokens: torch.Tensor, query_pos: torch.Tensor, reference: bool) -> torch.Tensor:
        """Raw logits (B, Q, vocab_size) at token positions ``query_pos`` (B, Q) of ``tokens`` (B, T).
        ``reference``: through the library's own stock forward instead of the fast path."""

    def logprobs_at(self, tokens: torch.Tensor, query_pos: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """Log-probabilities (B, Q, vocab_size), float32, normalised over the ``normalised`` tokens;
        the other columns are -inf."""
        return self._renormalise(self._logits_at(tokens, query_pos, reference).float())

    def _renormalise(self, logits: torch.Tensor) -> torch.Tensor:
        """log-softmax over the normalised tokens (also right for log-probabilities over more tokens:
        log-softmax is shift-invariant)."""
        if self._excluded is not None:
            logits = logits.masked_fill(self._excluded.to(logits.device), float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    # --- sizing and provenance ------------------------------------------------------------

    def auto_batch_tokens(self, memory_fraction: float = 0.6) -> int:
        """Token budget per batch, as ``plmscreen.screening.score.scorer.auto_batch_tokens`` sizes it for ESM-2:
        the CPU default, or what about 12 activations of width d per token leave in free GPU memory."""
        if self.device.type != "cuda":
            return CPU_BATCH_TOKENS
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(min(max(memory_fraction * free / (12 * self.embed_dim * 4), 1024), 1 << 20))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict:
        """What a run records about the model (the scorer's output metadata)."""
        return {
            **model_record(self),
            "model_family": self.family,
            "embed_dim": self.embed_dim,
            "max_residues": self.max_residues,
            "normalise": self.normalise,
            "normalised_tokens": [self.vocab[i] if i < len(self.vocab) else f"<slot{i}>"
                                  for i in torch.nonzero(self.normalised).flatten().tolist()],
            **self._extra,
        }
