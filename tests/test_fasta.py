"""FASTA policy, case by case: what is kept, what is rejected and why."""

import gzip

import pytest

from plmscreen.screening.input import InvalidFastaError, read_fasta, write_rejects


def _write(tmp_path, text, name="in.fasta"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_ids_verbatim_uppercases_and_strips_trailing_stop(tmp_path):
    path = _write(tmp_path, ">sp|P1|A_ECOLI some description\nmkt\nAYI*\n\n>id2\nACDE\n")
    contents = read_fasta(path)
    assert contents.rejects == []
    assert [(r.seq_id, r.sequence, r.description) for r in contents.records] == [
        ("sp|P1|A_ECOLI", "MKTAYI", "some description"),
        ("id2", "ACDE", ""),
    ]
    assert [r.record_number for r in contents.records] == [1, 2]


def test_gzipped_input_reads_the_same(tmp_path):
    text = ">a\nMKV\n>b\nWWY\n"
    plain = read_fasta(_write(tmp_path, text))
    gz = tmp_path / "in.fasta.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    assert [(r.seq_id, r.sequence) for r in read_fasta(gz).records] == [(r.seq_id, r.sequence) for r in plain.records]


def test_rare_and_ambiguous_codes_are_kept(tmp_path):
    contents = read_fasta(_write(tmp_path, ">a\nMXBZUOJK\n"))
    assert contents.records[0].sequence == "MXBZUOJK"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (">bad\nMK1V\n", "invalid residue '1' at position 3"),
        (">bad\nMK-V\n", "invalid residue '-' at position 3"),
        (">bad\nMK.V\n", "invalid residue '.' at position 3"),
        (">bad\nMK*V\n", "invalid residue stop '*' at position 3"),
        (">bad\nMK V\n", "whitespace inside the sequence"),
        (">bad\n\n", "empty sequence"),
        (">bad\n*\n", "empty sequence"),
        (">\nMKV\n", "empty ID"),
        ("> bad\nMKV\n", "empty ID"),
    ],
)
def test_invalid_records_are_rejected_with_record_and_reason(tmp_path, body, reason):
    path = _write(tmp_path, ">good1\nMKV\n" + body + ">good2\nACD\n")
    contents = read_fasta(path)
    assert [r.seq_id for r in contents.records] == ["good1", "good2"]
    assert len(contents.rejects) == 1
    reject = contents.rejects[0]
    assert reject.record_number == 2
    assert reason in reject.reason
    with pytest.raises(InvalidFastaError) as err:
        raise InvalidFastaError(path, contents.rejects)
    assert "record 2" in str(err.value) and reason in str(err.value)


def test_duplicate_ids_keep_the_first_and_name_it(tmp_path):
    contents = read_fasta(_write(tmp_path, ">a\nMKV\n>b\nAAA\n>a\nWWW\n"))
    assert [(r.seq_id, r.sequence) for r in contents.records] == [("a", "MKV"), ("b", "AAA")]
    assert contents.rejects[0].seq_id == "a"
    assert contents.rejects[0].record_number == 3
    assert "duplicate ID (first seen at record 1)" in contents.rejects[0].reason


def test_text_before_first_header_is_rejected(tmp_path):
    contents = read_fasta(_write(tmp_path, "MKVLA\n>a\nMKV\n"))
    assert [r.seq_id for r in contents.records] == ["a"]
    assert contents.rejects[0].record_number == 0
    assert "before the first '>' header" in contents.rejects[0].reason


def test_file_without_any_header_is_rejected(tmp_path):
    contents = read_fasta(_write(tmp_path, "MKVLA\nACDE\n"))
    assert contents.records == []
    assert "before the first '>' header" in contents.rejects[0].reason


def test_empty_file_is_rejected(tmp_path):
    contents = read_fasta(_write(tmp_path, ""))
    assert contents.records == [] and "no FASTA records" in contents.rejects[0].reason


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fasta"):
        read_fasta(tmp_path / "nope.fasta")


def test_rejects_file_lists_every_reject(tmp_path):
    contents = read_fasta(_write(tmp_path, ">a\nMK1\n>b\nMKV\n>b\nMKV\n"))
    out = tmp_path / "rejects.tsv"
    write_rejects(contents.rejects, out)
    lines = out.read_text().splitlines()
    assert lines[0] == "record_number\tseq_id\treason"
    assert lines[1].startswith("1\ta\tinvalid residue '1'")
    assert lines[2].startswith("3\tb\tduplicate ID")


def test_sequence_sha256_is_of_the_normalised_sequence(tmp_path):
    import hashlib

    record = read_fasta(_write(tmp_path, ">a\nmkv*\n")).records[0]
    assert record.sha256 == hashlib.sha256(b"MKV").hexdigest()


# -- Streaming: scan_fasta / read_span against the previous whole-file reader ----------------------


def _reference_read(path):
    """The reader plmscreen had before streaming (Biopython's SimpleFastaParser on text-mode lines,
    plus an audit of what it forgives), kept here as the independent check of the streaming one."""
    import hashlib
    import io

    from Bio.SeqIO.FastaIO import SimpleFastaParser

    from plmscreen.screening.input import ALLOWED_RESIDUES

    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    handle = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", errors="replace")
    problems, headers, numbered = {}, 0, []

    def audited():
        nonlocal headers
        for line_no, line in enumerate(handle, start=1):
            if line.startswith(">"):
                headers += 1
            else:
                body = line.rstrip("\r\n").rstrip()
                if body and headers not in problems:
                    if headers == 0:
                        problems[0] = f"line {line_no}: sequence data before the first '>' header"
                    elif any(c.isspace() for c in body):
                        problems[headers] = f"line {line_no}: whitespace inside the sequence"
            yield line

    records, rejects, first_seen = [], [], {}
    for number, (title, seq) in enumerate(SimpleFastaParser(audited()), start=1):
        seq_id = title.split()[0] if title and not title[0].isspace() else ""
        seq = seq.upper()
        seq = seq[:-1] if seq.endswith("*") else seq
        reason = None
        if not seq:
            reason = "empty sequence"
        else:
            bad = next(((i, c) for i, c in enumerate(seq, start=1) if c not in ALLOWED_RESIDUES), None)
            if bad:
                what = "stop '*'" if bad[1] == "*" else f"'{bad[1]}'"
                reason = f"invalid residue {what} at position {bad[0]}"
        if problems.get(number):
            reason = problems[number]
        elif not seq_id:
            reason = "empty ID"
        elif seq_id in first_seen:
            reason = f"duplicate ID (first seen at record {first_seen[seq_id]})"
        if reason is None:
            first_seen[seq_id] = number
            records.append((seq_id, seq, title[len(seq_id):].strip(), number, hashlib.sha256(seq.encode()).hexdigest()))
        else:
            rejects.append((number, seq_id, reason))
    if 0 in problems:
        rejects.insert(0, (0, "", problems[0]))
    if not records and not rejects:
        rejects.append((0, "", "no FASTA records found"))
    return records, rejects, hashlib.sha256(path.read_bytes()).hexdigest()


def _as_reference(contents):
    return ([(r.seq_id, r.sequence, r.description, r.record_number, r.sha256) for r in contents.records],
            [(r.record_number, r.seq_id, r.reason) for r in contents.rejects], contents.sha256)


def _random_fasta(rng) -> str:
    ids = ["a", "b", "c", "sp|P1|X", "", " x", "é"]
    bodies = ["MKV", "mkv", "ACDEFGHIKLMNPQRSTVWY", "XBZUOJ", "MK1", "MK V", "MK\tV", "*", "MKV*", "M*K", "", "  ",
              " MK", "MK-", "\xa0M", "MK\xa0", "M\rK"]
    lines = [rng.choice(["junk", "", "MKV"])] if rng.random() < 0.1 else []
    for _ in range(rng.randint(0, 6)):
        lines.append(">" + rng.choice(ids) + rng.choice(["", " desc", "  two words"]))
        lines += [rng.choice(bodies) for _ in range(rng.randint(0, 3))]
    return rng.choice(["\n", "\r\n"]).join(lines) + rng.choice(["", "\n"])


@pytest.mark.parametrize("block_bytes", [1 << 22, 3, 17])  # records cut across the reader's blocks too
def test_streaming_reader_agrees_with_the_whole_file_reader_on_random_inputs(tmp_path, monkeypatch, block_bytes):
    import random

    import plmscreen.screening.input as input_module

    monkeypatch.setattr(input_module, "_BLOCK_BYTES", block_bytes)
    rng = random.Random(13 + block_bytes)
    for trial in range(400):
        text = _random_fasta(rng)
        path = _write(tmp_path, text, f"t{trial}.fasta")
        if trial % 3 == 0:
            path = tmp_path / f"t{trial}.fasta.gz"
            path.write_bytes(gzip.compress(text.encode()))
        records, rejects, sha = _reference_read(path)
        got_records, got_rejects, got_sha = _as_reference(read_fasta(path))
        assert got_records == records, text
        assert [(n, i) for n, i, _ in got_rejects] == [(n, i) for n, i, _ in rejects], text
        assert all(want in reason for (_, _, reason), (_, _, want) in zip(got_rejects, rejects)), text
        assert got_sha == sha


def test_duplicate_ids_are_confirmed_by_their_text_when_hashes_collide(tmp_path, monkeypatch):
    import plmscreen.screening.input as input_module

    text = ">a\nMKV\n>b\nAAA\n>a\nWWW\n>c\nMK1\n>c\nMMM\n>b x\nCCC\n"
    want = _as_reference(read_fasta(_write(tmp_path, text)))
    monkeypatch.setattr(input_module, "hash", lambda _: 7, raising=False)  # every ID collides
    got = _as_reference(read_fasta(_write(tmp_path, text, "collide.fasta")))
    assert got[:2] == want[:2]
    assert [r[0] for r in got[0]] == ["a", "b", "c"]  # 'c' at record 5: its first 'c' was invalid
    assert [(n, reason.split(" (allowed")[0]) for n, _, reason in got[1]] == [
        (3, "duplicate ID (first seen at record 1)"), (4, "invalid residue '1' at position 3"),
        (6, "duplicate ID (first seen at record 2)")]


def test_scan_keeps_spans_not_sequences_and_spans_read_back_every_valid_record(tmp_path):
    from plmscreen.screening.input import read_span, scan_fasta

    text = ">a d1\nMKVL\nAAA\n>bad\nMK1\n>b\nWW\n>a\nCC\n>c\nMKV*\n"
    gz = tmp_path / "in.fasta.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    index = scan_fasta(gz, tmp_path / "copy.fasta")
    assert (tmp_path / "copy.fasta").read_text() == text  # the decompressed bytes, as they were
    assert index.sha256 == __import__("hashlib").sha256(gz.read_bytes()).hexdigest()
    assert index.lengths.tolist() == [7, 2, 3] and index.numbers.tolist() == [1, 3, 5]
    assert [r.record_number for r in index.rejects] == [2, 4]
    assert [(r.seq_id, r.sequence) for r in index.read(0, 2)] == [("a", "MKVLAAA"), ("b", "WW"), ("c", "MKV")]
    # One record's span alone, and a span over rejected records that it must skip.
    assert [r.seq_id for r in read_span(index.path, int(index.starts[1]), int(index.ends[1]), 3)] == ["b"]
    assert [r.seq_id for r in index.read(1, 2)] == ["b", "c"]
    with pytest.raises(ValueError, match="gzipped"):
        scan_fasta(gz)


def test_a_changed_file_under_a_span_is_an_error_not_other_records(tmp_path):
    from plmscreen.screening.errors import InputError
    from plmscreen.screening.input import scan_fasta

    path = _write(tmp_path, ">a\nMKV\n>b\nWWWWWY\n>c\nAAA\n")
    index = scan_fasta(path)
    path.write_text(">a\nMKV\n>b\nWWW1WY\n>c\nAAA\n")
    with pytest.raises(InputError, match="record 2 'b' is no longer valid"):
        index.read(0, 2)
    path.write_text(">a\nMKV\n>b\nW\n>d\nA\n>c\nAAA\n")  # b's ten bytes now hold two records
    with pytest.raises(InputError, match="hold 2 valid records, not 1"):
        index.read(1, 1)
