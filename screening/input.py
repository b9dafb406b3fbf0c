"""FASTA input: records split by Biopython, validated against plmscreen's residue policy.

Policy (every rejection names the record and the reason):
- ``seq_id`` is the header's first whitespace-delimited word, verbatim; it must be non-empty
  and unique in the file (later duplicates are rejected, the first occurrence is kept).
- Sequences are upper-cased and one trailing ``*`` is stripped.
- The 20 standard residues and ``X B Z U O J`` are kept; anything else (digits, ``-``, ``.``,
  an internal ``*``, whitespace inside a sequence line) is rejected, as is an empty sequence
  and any text before the first header.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from Bio.SeqIO.FastaIO import SimpleFastaParser

from plmscreen.screening.errors import InputError

# The 20 standard amino acids, in ESM/UniProt order: the one copy of the alphabet.
STANDARD_ALPHABET = "ACDEFGHIKLMNPQRSTVWY"
STANDARD_RESIDUES = frozenset(STANDARD_ALPHABET)
# Ambiguity and rare codes ESM-2 has seen; J has no token in the ESM-1b alphabet and scores as <unk>.
EXTRA_RESIDUES = frozenset("XBZUOJ")
ALLOWED_RESIDUES = STANDARD_RESIDUES | EXTRA_RESIDUES


@dataclass(frozen=True)
class ProteinRecord:
    seq_id: str
    sequence: str
    description: str = ""
    record_number: int = 0  # 1-based position in the input file

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sequence.encode()).hexdigest()


@dataclass(frozen=True)
class RejectedRecord:
    record_number: int  # 1-based; 0 means text before the first header
    seq_id: str
    reason: str

    def __str__(self) -> str:
        name = f"'{self.seq_id}'" if self.seq_id else "(no ID)"
        where = "before the first header" if self.record_number == 0 else f"record {self.record_number}"
        return f"{where} {name}: {self.reason}"


class InvalidFastaError(InputError):
    """The input has records that break the policy; ``rejects`` lists every one of them."""

    def __init__(self, path: str | Path, rejects: list[RejectedRecord]):
        self.path = str(path)
        self.rejects = rejects
        lines = "\n".join(f"  {r}" for r in rejects[:20])
        more = f"\n  ... and {len(rejects) - 20} more" if len(rejects) > 20 else ""
        super().__init__(f"{self.path}: {len(rejects)} invalid FASTA record(s):\n{lines}{more}")


@dataclass
class FastaContents:
    records: list[ProteinRecord]
    rejects: list[RejectedRecord]
    sha256: str  # of the file's bytes as stored (compressed if gzipped)


class _LineAudit:
    """Passes lines through to the parser while noting what Biopython would silently forgive:
    text before the first header and whitespace inside sequence lines."""

    def __init__(self, handle: io.TextIOBase):
        self._handle = handle
        self.headers_seen = 0
        self.problems: dict[int, str] = {}  # record number -> first line-level problem
        self._line_no = 0

    def __iter__(self) -> Iterator[str]:
        for line in self._handle:
            self._line_no += 1
            if line.startswith(">"):
                self.headers_seen += 1
            else:
                body = line.rstrip("\r\n").rstrip()
                record = self.headers_seen
                if body and record not in self.problems:
                    if record == 0:
                        self.problems[0] = f"line {self._line_no}: sequence data before the first '>' header"
                    elif any(c.isspace() for c in body):
                        self.problems[record] = f"line {self._line_no}: whitespace inside the sequence"
            yield line


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sequence(raw: str) -> tuple[str, str | None]:
    """Normalise one sequence; return (sequence, reason it is invalid or None)."""
    seq = raw.upper()
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        return seq, "empty sequence"
    for pos, char in enumerate(seq, start=1):
        if char not in ALLOWED_RESIDUES:
            what = "stop '*'" if char == "*" else f"'{char}'"
            return seq, f"invalid residue {what} at position {pos} (allowed: 20 standard amino acids and X B Z U O J)"
    return seq, None


def read_fasta(path: str | Path) -> FastaContents:
    """Read a plain or gzipped FASTA file; valid records and rejected ones, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FASTA input not found: {path}")
    records: list[ProteinRecord] = []
    rejects: list[RejectedRecord] = []
    first_seen: dict[str, int] = {}
    with _open_text(path) as handle:
        audit = _LineAudit(handle)
        for number, (title, raw_seq) in enumerate(SimpleFastaParser(audit), start=1):
            seq_id = title.split()[0] if title and not title[0].isspace() else ""
            description = title[len(seq_id):].strip()
            sequence, reason = check_sequence(raw_seq)
            if audit.problems.get(number):
                reason = audit.problems[number]
            elif not seq_id:
                reason = "empty ID (the header must start with an identifier right after '>')"
            elif seq_id in first_seen:
                reason = f"duplicate ID (first seen at record {first_seen[seq_id]})"
            if reason is None:
                first_seen[seq_id] = number
                records.append(ProteinRecord(seq_id, sequence, description, number))
            else:
                rejects.append(RejectedRecord(number, seq_id, reason))
        if 0 in audit.problems:
            rejects.insert(0, RejectedRecord(0, "", audit.problems[0]))
    if not records and not rejects:
        rejects.append(RejectedRecord(0, "", "no FASTA records found (the file is empty or has no '>' header)"))
    return FastaContents(records, rejects, _file_sha256(path))


def write_rejects(rejects: list[RejectedRecord], path: str | Path) -> None:
    """Rejected records as TSV (record_number, seq_id, reason)."""
    lines = ["record_number\tseq_id\treason"]
    lines += [f"{r.record_number}\t{r.seq_id}\t{r.reason}" for r in rejects]
    Path(path).write_text("\n".join(lines) + "\n")
