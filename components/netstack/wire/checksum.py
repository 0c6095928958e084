"""RFC 1071 Internet checksum, computed with one big-integer reduction instead of a word loop.

Why it works: 2**16 == 1 (mod 0xFFFF), so a byte string read as one big-endian integer is
congruent mod 0xFFFF to the sum of its 16-bit words, which is exactly what the one's
complement end-around-carry sum computes. The only trap: a non-zero sum that is a multiple of
0xFFFF folds to 0xFFFF ("negative zero"), never to 0, so the checksum is then 0x0000; only an
all-zero input has sum 0 and checksum 0xFFFF.
"""

from __future__ import annotations

_from_bytes = int.from_bytes


def ones_complement_sum(data: bytes | memoryview, initial: int = 0) -> int:
    """The folded 16-bit one's complement sum (not inverted) of data plus `initial`."""
    total = _from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8  # RFC 1071: an odd byte is padded with a zero byte on the right
    total += initial
    if total == 0:
        return 0
    folded = total % 0xFFFF
    return folded if folded else 0xFFFF


def internet_checksum(data: bytes | memoryview, initial: int = 0) -> int:
    """The 16-bit Internet checksum (RFC 1071) of data, `initial` being a partial sum to add.

    To verify a received header or segment, call it over the bytes including the checksum
    field (and the pseudo-header sum as `initial`): the result is 0 when the checksum is good.
    """
    total = _from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8  # RFC 1071: an odd byte is padded with a zero byte on the right
    total += initial
    if total == 0:
        return 0xFFFF
    folded = total % 0xFFFF
    # folded == 0 with a non-zero total means the folded sum is 0xFFFF: checksum 0.
    return 0xFFFF - folded if folded else 0


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Partial sum of the IPv4 (RFC 768/793) or IPv6 (RFC 8200 §8.1) pseudo-header.

    src and dst are 4- or 16-byte packed addresses. The result is a plain integer, congruent
    (mod 0xFFFF) to the pseudo-header's word sum, to be passed as `initial`.
    """
    # IPv4 words: src, dst, (0, proto), length.  IPv6: src, dst, 32-bit length,
    # 24 zero bits + next header.  Both reduce to the same congruent sum.
    return _from_bytes(src, "big") + _from_bytes(dst, "big") + proto + length


def checksum_adjust(checksum: int, old_word: int, new_word: int) -> int:
    """A checksum after one 16-bit word of the covered data changed from old_word to new_word.

    RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'); used when forwarding decrements the TTL.
    """
    total = (~checksum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def naive_checksum(data: bytes | memoryview, initial: int = 0) -> int:
    """Word-by-word RFC 1071 reference loop; for tests and the benchmark only."""
    data = bytes(data)
    if len(data) & 1:
        data += b"\0"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
