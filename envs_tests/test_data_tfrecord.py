"""TFRecord framing: CRC32C, reading, writing, and the errors of corrupt files."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trafficbots_gym.data.tfrecord import (TFRecordError, crc32c, encode_record, iter_records, masked_crc32c,
                                           read_records, write_records)

from conftest import WOMD_TFRECORD


def _crc32c_bitwise(data: bytes) -> int:
    """Textbook bit-at-a-time CRC-32C, independent of the table code under test."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("data, expected", [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),             # RFC 3720 B.4 test vectors
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_matches_published_test_vectors(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected


@pytest.mark.parametrize("size", [1023, 1024, 1025, 4096, 5000, 65_537])
def test_crc32c_of_long_inputs_matches_bitwise_crc(size: int) -> None:
    data = os.urandom(size)
    assert crc32c(data) == _crc32c_bitwise(data)


def test_real_womd_file_has_one_record_whose_crcs_verify() -> None:
    records = read_records(WOMD_TFRECORD)
    assert len(records) == 1
    assert len(records[0]) == 952_947


def test_written_records_read_back_identically(tmp_path: Path) -> None:
    records = [b"", b"a", os.urandom(5000), os.urandom(70_000)]
    path = tmp_path / "x.tfrecord"
    assert write_records(path, records) == 4
    assert read_records(path) == records
    assert [p.name for p in tmp_path.iterdir()] == ["x.tfrecord"]  # no temp file left behind


def test_encoded_record_has_reference_layout() -> None:
    framed = encode_record(b"hello")
    length, length_crc = struct.unpack("<QI", framed[:12])
    assert length == 5 and length_crc == masked_crc32c(framed[:8])
    assert framed[12:17] == b"hello"
    assert struct.unpack("<I", framed[17:])[0] == masked_crc32c(b"hello")


def test_empty_file_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "empty.tfrecord"
    path.write_bytes(b"")
    assert read_records(path) == []


def _three_records(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "three.tfrecord"
    write_records(path, [b"first record", b"second record", b"third record"])
    return path, path.read_bytes()


def test_truncated_length_header_names_file_and_record(tmp_path: Path) -> None:
    path, blob = _three_records(tmp_path)
    first = len(encode_record(b"first record"))
    path.write_bytes(blob[:first + 5])
    with pytest.raises(TFRecordError, match=r"three\.tfrecord, record 1 .*truncated length header") as info:
        read_records(path)
    assert info.value.record == 1 and info.value.offset == first and not info.value.recoverable


def test_truncated_data_names_file_and_record(tmp_path: Path) -> None:
    path, blob = _three_records(tmp_path)
    path.write_bytes(blob[:-3])
    items = list(iter_records(path))
    assert items[:2] == [b"first record", b"second record"]
    assert isinstance(items[2], TFRecordError) and "record 2" in str(items[2]) and "truncated data" in str(items[2])


def test_data_crc_mismatch_skips_only_that_record(tmp_path: Path) -> None:
    path, blob = _three_records(tmp_path)
    first = len(encode_record(b"first record"))
    corrupt = bytearray(blob)
    corrupt[first + 12 + 3] ^= 0x01  # flip one bit in the data of record 1
    path.write_bytes(bytes(corrupt))
    items = list(iter_records(path))
    assert items[0] == b"first record" and items[2] == b"third record"
    assert isinstance(items[1], TFRecordError) and items[1].recoverable
    assert "record 1" in str(items[1]) and "data CRC mismatch" in str(items[1])
    with pytest.raises(TFRecordError, match="data CRC mismatch"):
        read_records(path)


def test_length_crc_mismatch_ends_the_file(tmp_path: Path) -> None:
    path, blob = _three_records(tmp_path)
    corrupt = bytearray(blob)
    corrupt[0] ^= 0x40  # the length no longer matches its CRC: record boundaries are unknown
    path.write_bytes(bytes(corrupt))
    items = list(iter_records(path))
    assert len(items) == 1 and isinstance(items[0], TFRecordError) and not items[0].recoverable
    assert "length CRC mismatch" in str(items[0])


def test_unverified_reading_ignores_crcs(tmp_path: Path) -> None:
    path, blob = _three_records(tmp_path)
    corrupt = bytearray(blob)
    corrupt[14] ^= 0x01
    path.write_bytes(bytes(corrupt))
    assert len(read_records(path, verify=False)) == 3


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300))
def test_random_bytes_only_ever_give_records_or_tfrecord_errors(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "fuzz.tfrecord"
    path.write_bytes(blob)
    items = list(iter_records(path))
    assert all(isinstance(i, (bytes, TFRecordError)) for i in items)
    try:
        read_records(path)
    except TFRecordError as e:
        assert str(path) in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.binary(max_size=64), min_size=1, max_size=4), cut=st.integers(0, 10_000),
       flip=st.integers(0, 10_000))
def test_truncated_or_bit_flipped_files_never_crash(tmp_path: Path, records: list[bytes], cut: int, flip: int) -> None:
    path = tmp_path / "fuzz.tfrecord"
    write_records(path, records)
    blob = bytearray(path.read_bytes())
    blob[flip % len(blob)] ^= 1 << (flip % 8)
    path.write_bytes(bytes(blob[:cut % (len(blob) + 1)]))
    items = list(iter_records(path))
    good = [i for i in items if isinstance(i, bytes)]
    assert len(good) <= len(records)
    assert all(g in records for g in good)  # a corrupted record never comes back as valid data
    fatal = [i for i, item in enumerate(items) if isinstance(item, TFRecordError) and not item.recoverable]
    assert fatal in ([], [len(items) - 1])  # a broken frame is always the last item
