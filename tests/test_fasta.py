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
