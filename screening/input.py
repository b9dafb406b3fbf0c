"""FASTA input: records split as Biopython's SimpleFastaParser splits them, validated against
plmscreen's residue policy, streamed so that inputs larger than memory can be planned.

Policy (every rejection names the record and the reason):
- ``seq_id`` is the header's first whitespace-delimited word, verbatim; it must be non-empty
  and unique in the file (later duplicates are rejected, the first occurrence is kept).
- Sequences are upper-cased and one trailing ``*`` is stripped.
- The 20 standard residues and ``X B Z U O J`` are kept; anything else (digits, ``-``, ``.``,
  an internal ``*``, whitespace inside a sequence line) is rejected, as is an empty sequence
  and any text before the first header.
"""

from __future__ import annotations

import bisect
import contextlib
import gzip
import hashlib
import io
import re
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from plmscreen.screening.errors import InputError

# The 20 standard amino acids, in ESM/UniProt order: the one copy of the alphabet.
STANDARD_ALPHABET = "ACDEFGHIKLMNPQRSTVWY"
STANDARD_RESIDUES = frozenset(STANDARD_ALPHABET)
# Ambiguity and rare codes ESM-2 has seen; J has no token in the ESM-1b alphabet and scores as <unk>.
EXTRA_RESIDUES = frozenset("XBZUOJ")
ALLOWED_RESIDUES = STANDARD_RESIDUES | EXTRA_RESIDUES
_BLOCK_BYTES = 1 << 22  # what the streaming reader reads at a time
_NOT_ALLOWED = re.compile(f"[^{''.join(sorted(ALLOWED_RESIDUES))}]")


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


def check_sequence(raw: str) -> tuple[str, str | None]:
    """Normalise one sequence; return (sequence, reason it is invalid or None)."""
    seq = raw.upper()
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        return seq, "empty sequence"
    bad = _NOT_ALLOWED.search(seq)  # one C-speed scan: planning a proteome checks every residue
    if bad is not None:
        char = bad.group()
        what = "stop '*'" if char == "*" else f"'{char}'"
        return seq, f"invalid residue {what} at position {bad.start() + 1} (allowed: 20 standard amino acids and X B Z U O J)"
    return seq, None


# -- Streaming: records located by byte offsets ----------------------------------------------------
#
# A proteome does not have to fit in memory: ``scan_fasta`` reads the file once, in large blocks, and
# keeps per valid record only its byte span, length and a sequence key (numpy arrays, ~40 bytes a
# record); ``read_span`` parses the records of one byte span back (a shard's task reads only its
# own). Both go through ``_raw_records`` and ``_judge``: one policy for whole files and spans.


@dataclass
class _RawRecord:
    number: int  # 1-based record number in the file
    start: int  # byte offset of its header line
    end: int  # byte offset past its last line
    title: bytes
    chunks: list[bytes]  # sequence lines, right-stripped, blank ones left out
    problem: str | None  # the first line-level problem (whitespace inside the sequence)


def _raw_records(stream: BinaryIO, copy: BinaryIO | None = None, offset: int = 0, number: int = 0,
                 preamble: list | None = None) -> Iterator[_RawRecord]:
    """Records of a binary FASTA stream as Biopython's SimpleFastaParser splits them, with what it
    silently forgives noted: text before the first header (appended to ``preamble``) and whitespace
    inside sequence lines. The stream is read in large blocks (copied to ``copy`` when given) and
    cut at header lines; a record whose sequence lines are plain letters (nearly all) is taken in a
    few C-speed calls, any other goes through the line-by-line rules (``_line_records``)."""
    for start, chunk, line_no in _record_chunks(stream, copy, offset):
        if chunk[:1] == b">" and b"\r" not in chunk:
            newline = chunk.find(b"\n")
            title, body = (chunk[1:], b"") if newline < 0 else (chunk[1:newline], chunk[newline + 1:])
            sequence = body.replace(b"\n", b"")
            if not sequence or sequence.isalpha():
                number += 1
                yield _RawRecord(number, start, start + len(chunk), title.rstrip(), [sequence] if sequence else [], None)
                continue
        for record in _line_records(chunk.splitlines(keepends=True), start, number, line_no, preamble):
            number = record.number
            yield record


def _record_chunks(stream: BinaryIO, copy: BinaryIO | None, offset: int) -> Iterator[tuple[int, bytes, int]]:
    """(byte offset, bytes, line number of its first line) of each piece of the stream that starts
    at a header line ('>' at a line start; the first piece may be text before any header)."""
    pending, line_no = b"", 1
    while True:
        block = stream.read(_BLOCK_BYTES)
        if copy is not None and block:
            copy.write(block)
        pending += block
        if block:
            cut = pending.rfind(b"\n>")
            if cut < 0:
                continue
            data, pending = pending[:cut + 1], pending[cut + 1:]
        else:
            data, pending = pending, b""
        at = 0
        while at < len(data):
            following = data.find(b"\n>", at)
            end = len(data) if following < 0 else following + 1
            piece = data[at:end]
            yield offset, piece, line_no
            offset += len(piece)
            line_no += len(piece.splitlines()) if b"\r" in piece else piece.count(b"\n")  # universal newlines
            at = end
        if not block:
            return


def _line_records(lines: Iterable[bytes], offset: int, number: int, line_no: int,
                  preamble: list | None) -> Iterator[_RawRecord]:
    """The line-by-line rules for the records in ``lines`` (the first numbered ``line_no``)."""
    record: _RawRecord | None = None
    line_no -= 1
    for line in _universal_lines(lines):
        line_no += 1
        if line[:1] == b">":
            if record is not None:
                record.end = offset
                yield record
            number += 1
            record = _RawRecord(number, offset, offset, line[1:].rstrip(), [], None)
        else:
            body = line.rstrip()
            spaced = False
            if body and not body.isalpha():  # look at it as text (Unicode whitespace too)
                text = body.decode("utf-8", "replace").rstrip()
                body, spaced = text.encode(), any(c.isspace() for c in text)
            if body:
                if record is None:
                    if preamble is not None and not preamble:
                        preamble.append(f"line {line_no}: sequence data before the first '>' header")
                else:
                    if spaced and record.problem is None:
                        record.problem = f"line {line_no}: whitespace inside the sequence"
                    record.chunks.append(body)
        offset += len(line)
    if record is not None:
        record.end = offset
        yield record


def _universal_lines(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Binary lines split the way text mode's universal newlines split them (a lone ``\\r`` ends a
    line too)."""
    for line in lines:
        if b"\r" in line and not (line.endswith(b"\r\n") and line.count(b"\r") == 1):
            yield from line.splitlines(keepends=True)
        else:
            yield line


def _judge(raw: _RawRecord) -> tuple[str, str, str, str | None]:
    """(seq_id, description, sequence, reason or None) of one record, duplicate IDs aside."""
    title = raw.title.decode("utf-8", "replace").rstrip()
    seq_id = title.split()[0] if title and not title[0].isspace() else ""
    description = title[len(seq_id):].strip()
    sequence, reason = check_sequence(b"".join(raw.chunks).decode("utf-8", "replace"))
    if raw.problem:
        reason = raw.problem
    elif not seq_id:
        reason = "empty ID (the header must start with an identifier right after '>')"
    return seq_id, description, sequence, reason


@dataclass
class FastaIndex:
    """The valid records of a FASTA file, located by byte spans in ``path`` (a plain-text file: the
    input, or the decompressed copy ``scan_fasta`` wrote), without their sequences."""

    path: Path
    sha256: str  # of the input's bytes as stored (compressed if gzipped)
    starts: np.ndarray  # int64, byte offset of each valid record's header, in file order
    ends: np.ndarray  # int64, byte offset past each valid record
    numbers: np.ndarray  # int64, 1-based record numbers
    lengths: np.ndarray  # int64, residues
    keys: np.ndarray  # uint64, the first 8 bytes of each sequence's sha256 (candidates for identical sequences)
    rejects: list[RejectedRecord]

    def __len__(self) -> int:
        return len(self.numbers)

    def rejected_between(self, first_number: int, last_number: int) -> tuple[int, ...]:
        """Record numbers of rejected records between two record numbers (what a span must skip)."""
        numbers = [r.record_number for r in self.rejects] if len(self.rejects) < 64 else self._reject_numbers()
        lo, hi = bisect.bisect_right(numbers, first_number), bisect.bisect_left(numbers, last_number)
        return tuple(numbers[lo:hi])

    def _reject_numbers(self) -> list[int]:
        if getattr(self, "_numbers_cache", None) is None or len(self._numbers_cache) != len(self.rejects):
            self._numbers_cache = [r.record_number for r in self.rejects]  # sorted: rejects are in file order
        return self._numbers_cache

    def read(self, first: int, last: int) -> list[ProteinRecord]:
        """Valid records ``first``..``last`` (0-based, inclusive) read back from ``path``."""
        lo, hi = int(self.numbers[first]), int(self.numbers[last])
        return read_span(self.path, int(self.starts[first]), int(self.ends[last]), lo,
                         self.rejected_between(lo, hi), expected=last - first + 1)


def read_span(path: str | Path, start: int, end: int, first_number: int, skip: Iterable[int] = (),
              expected: int | None = None) -> list[ProteinRecord]:
    """The valid records in bytes ``start``..``end`` of a plain FASTA file whose first record is
    record ``first_number``; records numbered in ``skip`` (rejected when the file was scanned) are
    left out. A record that no longer passes the policy, or a count other than ``expected``, means
    the file changed since it was scanned: an InputError."""
    skip = set(skip)
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    records = []
    for raw in _raw_records(io.BytesIO(data), offset=start, number=first_number - 1):
        if raw.number in skip:
            continue
        seq_id, description, sequence, reason = _judge(raw)
        if reason is not None:
            raise InputError(f"{path}: record {raw.number} '{seq_id}' is no longer valid ({reason}): "
                             f"the file changed since it was planned")
        records.append(ProteinRecord(seq_id, sequence, description, raw.number))
    if expected is not None and len(records) != expected:
        raise InputError(f"{path}: bytes {start}..{end} hold {len(records)} valid records, not {expected}: "
                         f"the file changed since it was planned")
    return records


def _open_binary(path: Path) -> BinaryIO:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def is_gzipped(path: str | Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == b"\x1f\x8b"


def scan_fasta(path: str | Path, copy_to: str | Path | None = None) -> FastaIndex:
    """Validate a plain or gzipped FASTA file in one streaming pass and locate its valid records.

    With ``copy_to`` the file's (decompressed) bytes are written there and the index points into
    that copy; without it the input must be plain text and the index points into it. Memory is a
    few numpy arrays (about 40 bytes a record) plus the rejects, never the sequences. Duplicate IDs
    are found by a 64-bit hash of every ID and confirmed by reading the colliding headers back."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FASTA input not found: {path}")
    if copy_to is None and is_gzipped(path):
        raise ValueError(f"{path} is gzipped: scan_fasta needs copy_to, a plain copy to index")
    target = Path(copy_to) if copy_to is not None else path
    digest = hashlib.sha256()
    numbers, starts, ends, lengths, keys, id_hashes, ok = (array("q") for _ in range(7))
    seq_rejects: dict[int, RejectedRecord] = {}  # participants in the duplicate check, invalid by their sequence
    rejects: list[RejectedRecord] = []
    preamble: list[str] = []
    with open(path, "rb") as raw_file:
        hashing = _HashingReader(raw_file, digest)
        buffered = io.BufferedReader(hashing, 1 << 20)
        handle = gzip.GzipFile(fileobj=buffered, mode="rb") if is_gzipped(path) else buffered
        with (open(copy_to, "wb") if copy_to is not None else contextlib.nullcontext()) as copy:
            for raw in _raw_records(handle, copy, preamble=preamble):
                seq_id, _, sequence, reason = _judge(raw)
                if raw.problem or not seq_id:
                    rejects.append(RejectedRecord(raw.number, seq_id, reason))
                    continue
                if reason is not None:
                    seq_rejects[raw.number] = RejectedRecord(raw.number, seq_id, reason)
                numbers.append(raw.number)
                starts.append(raw.start)
                ends.append(raw.end)
                lengths.append(len(sequence))
                keys.append(int.from_bytes(hashlib.sha256(sequence.encode()).digest()[:8], "little", signed=True))
                id_hashes.append(hash(seq_id))
                ok.append(reason is None)
        while buffered.read(1 << 20):  # bytes after the end of a gzip stream still count in the sha256
            pass
    valid = np.frombuffer(ok, dtype=np.int64).astype(bool) if ok else np.zeros(0, dtype=bool)
    column = {name: np.frombuffer(a, dtype=np.int64) if a else np.zeros(0, dtype=np.int64)
              for name, a in (("numbers", numbers), ("starts", starts), ("ends", ends), ("lengths", lengths),
                              ("keys", keys), ("ids", id_hashes))}
    for index, first_valid in _duplicate_ids(target, column["ids"], column["starts"], column["numbers"], valid):
        number = int(column["numbers"][index])
        valid[index] = False
        seq_rejects[number] = RejectedRecord(number, _header_id(target, int(column["starts"][index])),
                                             f"duplicate ID (first seen at record {first_valid})")
    rejects = sorted(rejects + list(seq_rejects.values()), key=lambda r: r.record_number)
    if preamble:
        rejects.insert(0, RejectedRecord(0, "", preamble[0]))
    if not valid.any() and not rejects:
        rejects.append(RejectedRecord(0, "", "no FASTA records found (the file is empty or has no '>' header)"))
    return FastaIndex(target, digest.hexdigest(), column["starts"][valid].copy(), column["ends"][valid].copy(),
                      column["numbers"][valid].copy(), column["lengths"][valid].copy(),
                      column["keys"][valid].view(np.uint64).copy(), rejects)


class _HashingReader(io.RawIOBase):
    """A file's bytes passed through while their sha256 is taken (the run id hashes the input as stored)."""

    def __init__(self, raw: BinaryIO, digest):
        self._raw, self._digest = raw, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        self._digest.update(data)
        buffer[: len(data)] = data
        return len(data)


def _header_id(path: Path, start: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(start)
        title = fh.readline()[1:].rstrip().decode("utf-8", "replace")
    return title.split()[0] if title and not title[0].isspace() else ""


def _duplicate_ids(path: Path, id_hashes: np.ndarray, starts: np.ndarray, numbers: np.ndarray,
                   valid: np.ndarray) -> list[tuple[int, int]]:
    """(index, record number of the first valid record with that ID) of each record rejected as a
    duplicate ID: a later record whose ID a valid earlier record has (the first one is kept)."""
    if len(id_hashes) < 2:
        return []
    order = np.argsort(id_hashes, kind="stable")
    ordered = id_hashes[order]
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return []
    candidates = np.unique(np.concatenate([order[1:][same], order[:-1][same]]))
    by_id: dict[str, list[int]] = {}
    for index in candidates.tolist():  # rare: the IDs repeated in the file, or 64-bit hash collisions
        by_id.setdefault(_header_id(path, int(starts[index])), []).append(index)
    found = []
    for members in by_id.values():
        first_valid = None
        for index in sorted(members, key=lambda i: numbers[i]):
            if first_valid is not None:
                found.append((index, first_valid))
            elif valid[index]:
                first_valid = int(numbers[index])
    return found


def read_fasta(path: str | Path) -> FastaContents:
    """Read a plain or gzipped FASTA file; valid records and rejected ones, in file order (every
    record in memory: for inputs that may not fit, ``scan_fasta`` and ``read_span``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FASTA input not found: {path}")
    with tempfile.TemporaryDirectory(prefix="plmscreen-fasta-") as tmp:
        index = scan_fasta(path, Path(tmp) / "plain.fasta" if is_gzipped(path) else None)
        records = index.read(0, len(index) - 1) if len(index) else []
    return FastaContents(records, index.rejects, index.sha256)


def write_rejects(rejects: list[RejectedRecord], path: str | Path) -> None:
    """Rejected records as TSV (record_number, seq_id, reason)."""
    lines = ["record_number\tseq_id\treason"]
    lines += [f"{r.record_number}\t{r.seq_id}\t{r.reason}" for r in rejects]
    Path(path).write_text("\n".join(lines) + "\n")


def standard_proteins(fasta: str | Path, min_length: int, error: type[Exception]) -> tuple[list[tuple[str, str]], "FastaContents"]:
    """(seq_id, sequence) of the records made only of the 20 standard residues and at least
    ``min_length`` long, and the file's contents; ``error`` (the caller's exception class) for a
    missing file or one with invalid records (the experiments need every record readable)."""
    try:
        contents = read_fasta(fasta)
    except FileNotFoundError as exc:
        raise error(str(exc)) from None
    if contents.rejects:
        raise error(f"{fasta}: {len(contents.rejects)} invalid record(s), first: {contents.rejects[0]}")
    usable = [(r.seq_id, r.sequence) for r in contents.records
              if len(r.sequence) >= min_length and set(r.sequence) <= STANDARD_RESIDUES]
    return usable, contents
