#!/usr/bin/env python3
"""Independent reference of the dropkit spec (SPEC.md sections 1, 2 and 4) in pure Python.

It shares no code with the Rust or CUDA backends. It checks its Philox4x32-10 against the
Random123 known answers quoted in SPEC section 1, then writes the known-answer files that
the Rust tests read:

    tests/data/keep_bits_vectors.txt   seed offset p n w0 w1 ...   (packed keep bits)
    tests/data/philox_words.txt        seed offset i u_i           (the stream layout)
    tests/data/scales.txt              p t q_f64_hex s_f32_hex s_f64_hex

Python's float is IEEE 754 binary64 with round-to-nearest-even, the same f64 as the spec.
Output is fully deterministic: run `python3 scripts/spec_vectors.py` from anywhere and it
rewrites the three files next to the script's repository (or under --out-dir).
"""

from __future__ import annotations

import argparse
import math
import os
import struct

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

# SPEC section 1 constants.
M0 = 0xD2511F53
M1 = 0xCD9E8D57
W0 = 0x9E3779B9
W1 = 0xBB67AE85
TWO32 = 1 << 32


# --------------------------------------------------------------------------------------
# Section 1: the random stream
# --------------------------------------------------------------------------------------

def _mulhilo(a: int, b: int) -> tuple[int, int]:
    """Full 64-bit product of two u32 values, as (hi32, lo32)."""
    prod = (a & MASK32) * (b & MASK32)
    return (prod >> 32) & MASK32, prod & MASK32


def philox4x32_10(counter: list[int], key: list[int]) -> list[int]:
    """Philox4x32-10: ten rounds, key bumped between rounds (not before the first)."""
    c0, c1, c2, c3 = (x & MASK32 for x in counter)
    k0, k1 = (x & MASK32 for x in key)
    for rnd in range(10):
        if rnd > 0:
            k0 = (k0 + W0) & MASK32
            k1 = (k1 + W1) & MASK32
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


# Known answers from the SPEC table (Random123 kat_vectors).
KAT = [
    ([0x00000000, 0x00000000, 0x00000000, 0x00000000], [0x00000000, 0x00000000],
     [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF], [0xFFFFFFFF, 0xFFFFFFFF],
     [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


def check_kat() -> None:
    for counter, key, expected in KAT:
        got = philox4x32_10(counter, key)
        assert got == expected, (
            f"Philox KAT failed: counter={counter} key={key} "
            f"got={[f'{x:08x}' for x in got]} expected={[f'{x:08x}' for x in expected]}")


def lo32(x: int) -> int:
    return x & MASK32


def hi32(x: int) -> int:
    return (x >> 32) & MASK32


def philox_block(seed: int, offset: int, g: int) -> list[int]:
    """The four words of decisions 4g .. 4g+3."""
    assert 0 <= seed <= MASK64 and 0 <= offset <= MASK64 and 0 <= g <= MASK64 >> 2
    counter = [lo32(g), hi32(g), lo32(offset), hi32(offset)]
    key = [lo32(seed), hi32(seed)]
    return philox4x32_10(counter, key)


def philox_word(seed: int, offset: int, i: int) -> int:
    """u_i of SPEC section 1."""
    assert 0 <= i <= MASK64
    return philox_block(seed, offset, i >> 2)[i & 3]


# --------------------------------------------------------------------------------------
# Section 2: probability, threshold, scale
# --------------------------------------------------------------------------------------

def threshold(p: float) -> int:
    """t = floor(p * 2^32 + 0.5), computed in f64, as an integer in [0, 2^32]."""
    if not isinstance(p, float):
        raise TypeError("p must be a Python float (IEEE f64)")
    if math.isnan(p) or math.isinf(p) or p < 0.0 or p > 1.0:
        raise ValueError(f"p must be finite and in [0, 1], got {p!r}")
    # p * 4294967296.0 is an f64 multiply, + 0.5 an f64 add; both round to nearest even.
    t = math.floor(p * 4294967296.0 + 0.5)
    assert 0 <= t <= TWO32
    return t


def dropped(u: int, t: int) -> bool:
    return u < t


def keep_prob(t: int) -> float:
    """q = (2^32 - t) / 2^32 in f64 (both operands exact in f64, so one rounding)."""
    return float(TWO32 - t) / 4294967296.0


def scale_f64(t: int) -> float:
    return 1.0 / keep_prob(t)


def f64_bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def f64_to_f32_bits(x: float) -> int:
    """Round an f64 once to f32 (round to nearest even) and return the f32 bits."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


# --------------------------------------------------------------------------------------
# Section 4: packed keep bits
# --------------------------------------------------------------------------------------

def keep_bits(seed: int, offset: int, p: float, n: int) -> list[int]:
    """ceil(n/32) u32 words; bit b of word w is element 32w+b; 1 = kept; tail bits 0."""
    t = threshold(p)
    words = [0] * ((n + 31) // 32)
    for i in range(n):
        if not dropped(philox_word(seed, offset, i), t):
            words[i >> 5] |= 1 << (i & 31)
    return words


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------

SEED_DEAD = 0xDEADBEEFCAFEF00D
U64_MAX = (1 << 64) - 1
OFF_BIG = (1 << 32) + 5

# (seed, offset, p, n). Together these cover every seed in {0, 42, 0xDEADBEEFCAFEF00D,
# 2^64-1}, every offset in {0, 1, 7, 2^32+5, 2^64-1}, every p in {0, 1e-9, 0.1, 0.5, 0.9,
# 1, 1/3} and every n in {0, 1, 3, 4, 5, 31, 32, 33, 100, 257}.
KEEP_BITS_CASES = [
    (0, 0, 0.0, 0),
    (42, 1, 1e-9, 1),
    (SEED_DEAD, 7, 0.1, 3),
    (U64_MAX, OFF_BIG, 0.5, 4),
    (0, U64_MAX, 0.9, 5),
    (42, 0, 1.0, 31),
    (SEED_DEAD, 1, 1.0 / 3.0, 32),
    (U64_MAX, 7, 0.1, 33),
    (0, OFF_BIG, 0.5, 100),
    (42, U64_MAX, 1.0 / 3.0, 257),
    (SEED_DEAD, 0, 0.5, 257),
    (U64_MAX, 1, 0.9, 100),
    (42, 7, 0.0, 33),          # p = 0: every bit set below n, tail zero
    (0, 1, 1.0, 100),          # p = 1: all zero
    (SEED_DEAD, OFF_BIG, 1e-9, 257),
]

# (seed, offset, i). Includes every lane 0..3, indices >= 2^32 (so hi32(g) != 0), the
# largest index, and offsets whose high word is non-zero.
PHILOX_WORD_CASES = [
    (0, 0, 0),
    (0, 0, 1),
    (0, 0, 2),
    (0, 0, 3),
    (0, 0, 4),
    (42, 0, 5),
    (42, 1, 6),
    (42, 7, 7),
    (SEED_DEAD, 0, 0),
    (SEED_DEAD, OFF_BIG, 13),
    (SEED_DEAD, OFF_BIG, 1 << 32),
    (SEED_DEAD, OFF_BIG, (1 << 32) + 1),
    (SEED_DEAD, 1, (1 << 34) + 2),            # g = 2^32: hi32(g) = 1, lo32(g) = 0
    (SEED_DEAD, 1, (1 << 34) + 7),            # g = 2^32 + 1, lane 3
    (U64_MAX, U64_MAX, 0),
    (U64_MAX, U64_MAX, U64_MAX),              # g = 2^62 - 1, lane 3
    (U64_MAX, 7, U64_MAX - 1),                # lane 2
    (0, U64_MAX, 0x123456789ABCDEF0),         # lane 0
    (42, OFF_BIG, 0x0FEDCBA987654321),        # lane 1
    (1 << 32, 0, 0),                          # seed with only the high key word set
    (1, 1 << 32, 0),                          # offset with only the high word set
]

SCALE_PS = [0.0, 1e-9, 0.1, 0.25, 0.5, 0.9, 1.0 / 3.0, 0.999999]


def _self_checks() -> None:
    check_kat()
    # Lane layout: one Philox call serves decisions 4g .. 4g+3.
    blk = philox_block(SEED_DEAD, OFF_BIG, (1 << 32) + 3)
    for lane in range(4):
        assert philox_word(SEED_DEAD, OFF_BIG, ((((1 << 32) + 3) << 2) | lane)) == blk[lane]
    # The all-ones KAT through the (seed, offset, i) interface: g = 2^64/4 - 1 only reaches
    # hi32(g) = 0x3fffffff, so instead check the zero KAT through the interface.
    assert [philox_word(0, 0, i) for i in range(4)] == KAT[0][2]
    # Threshold edge cases.
    assert threshold(0.0) == 0 and threshold(1.0) == TWO32 and threshold(0.5) == 1 << 31
    assert threshold(1e-9) == 4            # 4.294967296 + 0.5 -> 4
    assert scale_f64(threshold(0.0)) == 1.0
    assert scale_f64(threshold(0.5)) == 2.0
    for bad in (float("nan"), float("inf"), -float("inf"), -1e-300, 1.0000000000000002):
        try:
            threshold(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"threshold accepted {bad!r}")
    # Keep-bit edge cases.
    assert keep_bits(1, 2, 0.0, 33) == [0xFFFFFFFF, 0x00000001]
    assert keep_bits(1, 2, 1.0, 33) == [0, 0]
    assert keep_bits(1, 2, 0.5, 0) == []


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _header(what: str, sections: str, fmt: str) -> list[str]:
    return [
        f"# {what}",
        f"# Generated by scripts/spec_vectors.py from SPEC.md {sections};",
        "# an independent pure-Python reference (not derived from the Rust or CUDA code).",
        "# Do not edit by hand: rerun `python3 scripts/spec_vectors.py`.",
        f"# Format: {fmt}",
    ]


def write_keep_bits(path: str) -> None:
    lines = _header(
        "Packed keep-bit known answers (1 = kept, bit b of word w = element 32w+b, tail 0).",
        "sections 1, 2, 4",
        "seed offset p n w0 w1 ...   (seed, offset, n decimal; p as a shortest round-trip "
        "decimal of the f64; words 8-digit lowercase hex, no 0x)",
    )
    for seed, offset, p, n in KEEP_BITS_CASES:
        assert float(repr(p)) == p
        words = keep_bits(seed, offset, p, n)
        assert len(words) == (n + 31) // 32
        fields = [str(seed), str(offset), repr(p), str(n)] + [f"{w:08x}" for w in words]
        lines.append(" ".join(fields))
    _write(path, lines)


def write_philox_words(path: str) -> None:
    lines = _header(
        "Random words u_i of the stream: counter = [lo32(i>>2), hi32(i>>2), lo32(offset), "
        "hi32(offset)], key = [lo32(seed), hi32(seed)], lane = i & 3.",
        "section 1",
        "seed offset i u_i   (seed, offset, i decimal; u_i 8-digit lowercase hex)",
    )
    lanes = set()
    for seed, offset, i in PHILOX_WORD_CASES:
        lanes.add(i & 3)
        lines.append(f"{seed} {offset} {i} {philox_word(seed, offset, i):08x}")
    assert lanes == {0, 1, 2, 3}
    assert any(i >= 1 << 32 for _, _, i in PHILOX_WORD_CASES)
    _write(path, lines)


def write_scales(path: str) -> None:
    lines = _header(
        "Threshold and scale: t = floor(p*2^32 + 0.5) in f64; q = (2^32 - t)/2^32 in f64; "
        "s64 = 1/q in f64; s32 = s64 rounded once to f32 (nearest even).",
        "section 2",
        "p t q_f64_hex s_f32_hex s_f64_hex   (p shortest round-trip decimal; t decimal; "
        "f64 bits as 16 hex digits, f32 bits as 8 hex digits, lowercase, no 0x)",
    )
    for p in SCALE_PS:
        assert float(repr(p)) == p
        t = threshold(p)
        q = keep_prob(t)
        s64 = 1.0 / q
        lines.append(
            f"{p!r} {t} {f64_bits(q):016x} {f64_to_f32_bits(s64):08x} {f64_bits(s64):016x}")
    _write(path, lines)


def _write(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path} ({sum(1 for l in lines if not l.startswith('#'))} cases)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.path.join(_repo_root(), "tests", "data"),
                    help="directory for the generated files (default: <repo>/tests/data)")
    ap.add_argument("--check-only", action="store_true",
                    help="run the self checks (Philox KATs etc.) and write nothing")
    args = ap.parse_args()
    _self_checks()
    print("self checks passed (3 Philox4x32-10 known answers from SPEC section 1)")
    if args.check_only:
        return
    write_keep_bits(os.path.join(args.out_dir, "keep_bits_vectors.txt"))
    write_philox_words(os.path.join(args.out_dir, "philox_words.txt"))
    write_scales(os.path.join(args.out_dir, "scales.txt"))


if __name__ == "__main__":
    main()
