"""Record checksums: a CRC-32 trailer under which any run of sealed records checks as one.

Pure: no I/O. A record is sealed by appending the *pure* CRC-32 of its body (zero initial
register, no final xor), little-endian. The pure CRC of a sealed record is then 0, and the
CRC is linear, so the pure CRC of any concatenation of sealed records is 0 as well: a
reader verifies a whole batch with one C call over the joined bytes (~22 ns per ~60-byte
record here, against ~460 ns to decode it), and looks record by record only on a mismatch,
to name the bad one. ``zlib.crc32(data, 0xFFFFFFFF)`` starts from a zero register and
returns the register inverted, so a pure CRC of 0 is a return value of ``0xFFFFFFFF``.

What it catches: any burst of up to 32 flipped bits and any odd number of flips in one
record, and other damage with odds of 1 in 2**32. What it cannot tell apart: leading zero
bytes (a zero register stays zero), so an all-zero record checks; such a record is never a
valid envelope, and the decoder that runs next refuses it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import Final

__all__ = ["TRAILER", "all_intact", "intact", "seal"]

TRAILER: Final = 4
"""Bytes the checksum adds to a sealed record (it is the record's last four bytes)."""

_ONES: Final = 0xFFFFFFFF
_le32: Final = struct.Struct("<I").pack
_crc32: Final = zlib.crc32


def seal(body: bytes) -> bytes:
    """``body`` with its checksum appended; ``intact`` holds for the result."""
    return body + _le32(_crc32(body, _ONES) ^ _ONES)


def intact(record: bytes) -> bool:
    """True if ``record`` (a sealed record, or several joined) checks."""
    return _crc32(record, _ONES) == _ONES


def all_intact(records: Iterable[bytes]) -> bool:
    """True if every record checks: one CRC over their concatenation (see the module doc).

    A corruption in one record could in principle be cancelled by one in another; that
    takes two independent faults whose CRCs match exactly (odds of 1 in 2**32).
    """
    return _crc32(b"".join(records), _ONES) == _ONES
