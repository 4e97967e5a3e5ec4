"""IPv6-to-IPv6 network prefix translation (RFC 6296), as pure functions.

NPTv6 maps an inside prefix onto an outside one of the same length, 1:1 and stateless, and
keeps the mapping checksum-neutral: the one's-complement sum of the address does not change,
so TCP/UDP/ICMPv6 checksums stay valid without being touched. When the two prefixes' sums
differ, RFC 6296 puts the difference (the "adjustment") into one 16-bit word of the address:
word 3 (bits 48-63) for prefixes of /48 or shorter (which must then not be 0xFFFF), else
the first word of the interface identifier that is not 0xFFFF.

A lab picks each NPTv6 router's outside prefix so that the adjustment is zero
(`neutral_prefix`): the host part then comes out exactly as it went in, and the router's
nft prefix rules (which keep the host part) are RFC 6296's mapping.
"""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network

NPT_BASE = IPv6Network("2001:db8:2::/48")  # where the lab's outside NPTv6 prefixes live


def _words(value: int) -> list[int]:
    return [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]


def _join(words: list[int]) -> int:
    out = 0
    for word in words:
        out = (out << 16) | word
    return out


def ones_add(a: int, b: int) -> int:
    total = a + b
    return (total & 0xFFFF) + (total >> 16)


def ones_sum(words: list[int]) -> int:
    total = 0
    for word in words:
        total = ones_add(total, word)
    return total


def prefix_sum(prefix: IPv6Network) -> int:
    """One's-complement sum of the prefix's words (its host bits are zero)."""
    return ones_sum(_words(int(prefix.network_address)))


def adjustment(inside: IPv6Network, outside: IPv6Network) -> int:
    """What translating inside -> outside adds to the adjusted word (RFC 6296 section 3.1)."""
    return ones_add(prefix_sum(inside), ~prefix_sum(outside) & 0xFFFF)


def translate(address: IPv6Address, inside: IPv6Network, outside: IPv6Network) -> IPv6Address:
    """Map `address` (in `inside`) to `outside`, checksum-neutrally (RFC 6296 sections 3.2-3.5)."""
    if inside.prefixlen != outside.prefixlen:
        raise ValueError("NPTv6 maps prefixes of one length")
    if address not in inside:
        raise ValueError(f"{address} is not in {inside}")
    if inside.prefixlen > 64:
        raise ValueError("NPTv6 prefixes are /64 or shorter")
    host_mask = (1 << (128 - inside.prefixlen)) - 1
    value = int(outside.network_address) | (int(address) & host_mask)
    adj = adjustment(inside, outside)
    if adj in (0, 0xFFFF):
        return IPv6Address(value)  # equal sums (+0 or -0): nothing to adjust
    words = _words(value)
    if inside.prefixlen <= 48:
        index = 3
        if words[index] == 0xFFFF:
            # -0 in one's complement: the adjusted word would come back as +0 (RFC 6296
            # section 3.4 gives such a subnet word no mapping).
            raise ValueError(f"{address}: a subnet word of 0xFFFF cannot carry the adjustment")
    else:
        index = next((i for i in range(4, 8) if words[i] != 0xFFFF), -1)
        if index < 0:
            raise ValueError(f"{address}: no word of its interface identifier can carry the adjustment")
    word = ones_add(words[index], adj)
    words[index] = 0 if word == 0xFFFF else word
    return IPv6Address(_join(words))


def neutral_prefix(inside: IPv6Network, base: IPv6Network = NPT_BASE) -> IPv6Network:
    """The /64 in `base` (a /48) whose sum equals `inside`'s: translation leaves the host part
    as it is. The subnet word that makes it so is computed, not searched."""
    if inside.prefixlen != 64 or base.prefixlen != 48:
        raise ValueError("neutral_prefix maps a /64 into a /48")
    word = ones_add(prefix_sum(inside), ~prefix_sum(base) & 0xFFFF)
    if word == 0xFFFF:
        word = 0  # -0 and +0 are one value in one's complement
    return IPv6Network((int(base.network_address) | (word << 64), 64))
