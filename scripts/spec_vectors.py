#!/usr/bin/env python3
"""Independent reference of the dropkit spec (SPEC.md sections 1, 2 and 4, and docs/spec.md
section 6.3, the fused dropout + residual add + row norm) in pure Python.

It shares no code with the Rust or CUDA backends. It checks its Philox4x32-10 against the
Random123 known answers quoted in SPEC section 1, then writes the known-answer files that
the Rust tests read:

    tests/data/keep_bits_vectors.txt   seed offset p n w0 w1 ...   (packed keep bits)
    tests/data/philox_words.txt        seed offset i u_i           (the stream layout)
    tests/data/scales.txt              p t q_f64_hex s_f32_hex s_f64_hex
    tests/data/add_norm_vectors.txt    docs/spec.md 6.3 cases: inputs, z, s, mean, rstd, keep,
                                       dx, dresidual, dbias, dgamma, dbeta (format in its header)

Python's float is IEEE 754 binary64 with round-to-nearest-even, the same f64 as the spec.
Output is fully deterministic: run `python3 scripts/spec_vectors.py` from anywhere and it
rewrites the four files next to the script's repository (or under --out-dir).
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


# --------------------------------------------------------------------------------------
# docs/spec.md section 6.3: fused dropout + residual add + row norm (LayerNorm, RMSNorm)
# --------------------------------------------------------------------------------------
#
# Every float is a Python float (IEEE binary64). A value "in" f32/f16/bf16 is a Python
# float that the format represents exactly. For C = f32 each single +, -, *, /, sqrt is
# done in f64 and rounded once to f32: since 53 >= 2*24 + 2 the f64 result rounded to
# f32 is the correctly rounded f32 result (no harmful double rounding), subnormals
# included. For C = f64 the Python operation is the C operation (division by zero is
# done by hand, since Python raises there).

INF = math.inf
NAN = math.nan


class _Fmt:
    """A binary format: p significand bits (implicit bit included), emin = exponent of
    the smallest normal, emax = exponent of the largest finite binade."""

    def __init__(self, name: str, p: int, emin: int, emax: int, hexdigits: int):
        self.name, self.p, self.emin, self.emax, self.hexdigits = name, p, emin, emax, hexdigits
        self.max_finite = math.ldexp((1 << p) - 1, emax + 1 - p)


FMTS = {
    "f16": _Fmt("f16", 11, -14, 15, 4),
    "bf16": _Fmt("bf16", 8, -126, 127, 4),
    "f32": _Fmt("f32", 24, -126, 127, 8),
    "f64": _Fmt("f64", 53, -1022, 1023, 16),
}

CANONICAL_NAN = {"f16": 0x7E00, "bf16": 0x7FC0, "f32": 0x7FC00000, "f64": 0x7FF8000000000000}


def _round_exact(x: float, fmt: _Fmt) -> float:
    """Round the f64 x once, to nearest even, into fmt (exact integer arithmetic).

    Overflow gives +-inf exactly when round-to-nearest-even does (|x| >= max_finite +
    half an ulp, the tie going to the even 2^(emax+1)); underflow goes to subnormals or
    a signed zero. NaN and +-inf pass through."""
    if x != x or x in (INF, -INF) or x == 0.0:
        return x
    ax = abs(x)
    e = math.frexp(ax)[1] - 1                   # 2^e <= ax < 2^(e+1)
    ulp = max(e, fmt.emin) - (fmt.p - 1)         # exponent of the ulp at ax (subnormal: fixed)
    n, d = ax.as_integer_ratio()
    if ulp >= 0:
        d <<= ulp
    else:
        n <<= -ulp
    q, r = divmod(n, d)
    if 2 * r > d or (2 * r == d and q & 1):
        q += 1
    res = math.ldexp(q, ulp)                     # q <= 2^p: exact
    if res > fmt.max_finite:
        res = INF
    return math.copysign(res, x)


def round_f32(x: float) -> float:
    """f64 -> f32, nearest even; +-inf on overflow (struct raises where the result is inf)."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(INF, x)


def round_f16(x: float) -> float:
    return _round_exact(x, FMTS["f16"])


def round_bf16(x: float) -> float:
    return _round_exact(x, FMTS["bf16"])


def round_to(x: float, dt: str) -> float:
    """One correct rounding from f64 to dt (for f16 and bf16 no intermediate f32)."""
    if dt == "f64":
        return x
    if dt == "f32":
        return round_f32(x)
    return _round_exact(x, FMTS[dt])


def bf16_bits_from_f32_bits(b: int) -> int:
    """Round-to-nearest-even on an f32 bit pattern (an independent path, for checks)."""
    if (b & 0x7F800000) == 0x7F800000 and (b & 0x007FFFFF):
        return 0x7FC0
    lsb = (b >> 16) & 1
    return ((b + 0x7FFF + lsb) >> 16) & 0xFFFF


def float_bits(x: float, dt: str) -> int:
    """Raw bits of x in dt (x must be representable); NaN as the canonical quiet NaN."""
    if x != x:
        return CANONICAL_NAN[dt]
    assert round_to(x, dt) == x, (x, dt)
    if dt == "f64":
        return struct.unpack("<Q", struct.pack("<d", x))[0]
    if dt == "f32":
        return struct.unpack("<I", struct.pack("<f", x))[0]
    if dt == "f16":
        return struct.unpack("<H", struct.pack("<e", x))[0]
    b = struct.unpack("<I", struct.pack("<f", x))[0]
    assert b & 0xFFFF == 0
    return b >> 16


def float_hex(x: float, dt: str) -> str:
    return f"{float_bits(x, dt):0{FMTS[dt].hexdigits}x}"


def compute_type(t: str) -> str:
    return "f64" if t == "f64" else "f32"


def _ieee_div(a: float, b: float) -> float:
    if b == 0.0:
        if a != a or a == 0.0:
            return NAN
        neg = (math.copysign(1.0, a) < 0) != (math.copysign(1.0, b) < 0)
        return -INF if neg else INF
    return a / b


class CArith:
    """Single IEEE operations in the compute type C, each rounded once to nearest even."""

    def __init__(self, c: str):
        assert c in ("f32", "f64")
        self.c = c
        self.r = round_f32 if c == "f32" else (lambda v: v)

    def add(self, a: float, b: float) -> float:
        return self.r(a + b)

    def sub(self, a: float, b: float) -> float:
        return self.r(a - b)

    def mul(self, a: float, b: float) -> float:
        return self.r(a * b)

    def div(self, a: float, b: float) -> float:
        return self.r(_ieee_div(a, b))

    def sqrt(self, a: float) -> float:
        return self.r(math.sqrt(a))            # a is >= 0, -0, +inf or NaN here

    def row_sum(self, f: list[float]) -> float:
        """S(f): 32 lanes striding by 32 from +0, then w = 16, 8, 4, 2, 1: acc_l += acc_{l+w}."""
        acc = [0.0] * 32
        for j, v in enumerate(f):
            acc[j & 31] = self.add(acc[j & 31], v)
        w = 16
        while w >= 1:
            for lane in range(w):
                acc[lane] = self.add(acc[lane], acc[lane + w])
            w >>= 1
        return acc[0]


def warp_butterfly_sum(ar: CArith, f: list[float]) -> float:
    """An independent statement of S(f) for the checks: all 32 lanes of a warp run the
    xor butterfly (acc_l = acc_l + acc_{l ^ w}, all lanes at once); lane 0's result."""
    acc = [0.0] * 32
    for j, v in enumerate(f):
        acc[j % 32] = ar.add(acc[j % 32], v)
    for w in (16, 8, 4, 2, 1):
        acc = [ar.add(acc[lane], acc[lane ^ w]) for lane in range(32)]
    return acc[0]


def blocked_column_sums(vals: list[list[float]], h: int, out_dt: str) -> list[float]:
    """docs/spec.md 6.2 note: blocks of 256 rows, f64 partials in increasing r, then the
    partials in increasing block, every add in f64 from +0.0, one rounding f64 -> out_dt."""
    n = len(vals)
    out = []
    for c in range(h):
        total = 0.0
        for b0 in range(0, n, 256):
            partial = 0.0
            for r in range(b0, min(b0 + 256, n)):
                partial = partial + vals[r][c]
            total = total + partial
        out.append(round_to(total, out_dt))
    return out


def add_norm(case: dict) -> dict:
    """The forward and backward of docs/spec.md 6.3 for one case; returns the outputs."""
    norm, t_dt, r_dt = case["norm"], case["T"], case["R"]
    n, h_int = case["N"], case["H"]
    assert norm in ("layer", "rms") and h_int >= 1
    assert r_dt == t_dt or (r_dt == "f32" and t_dt in ("f16", "bf16"))
    c_dt = compute_type(t_dt)
    ar = CArith(c_dt)
    eps = case["eps"]
    assert isinstance(eps, float) and math.isfinite(eps) and eps >= 0.0
    assert case["index_base"] % h_int == 0
    training = case["training"]
    x, bias, res = case["x"], case["bias"], case["residual"]
    gamma, beta, dz, ds = case["gamma"], case["beta"], case["dz"], case["ds"]
    assert (beta is not None) == (norm == "layer")
    t = threshold(case["p"])
    s = ar.r(scale_f64(t)) if (training and t < TWO32) else None   # p = 1: never consulted
    h = float(h_int)                                   # to_C(H), exact
    e = ar.r(eps)                                      # round_C(eps)

    keep, z, s_out, means, rstds = [], [], [], [], []
    dx, dres, dgamma_terms, dbeta_terms, dx_rows = [], [], [], [], []
    for r in range(n):
        base = r * h_int
        row_keep = []
        for j in range(h_int):
            if training:
                u = philox_word(case["seed"], case["offset"], case["index_base"] + base + j)
                row_keep.append(not dropped(u, t))
            else:
                row_keep.append(True)
        # Forward: the pre-norm sum.
        v = []
        for j in range(h_int):
            i = base + j
            a = ar.add(x[i], bias[j]) if bias is not None else x[i]
            if not training:
                m = a                                  # eval: no multiply
            else:
                m = ar.mul(a, s) if row_keep[j] else 0.0
            sj = round_to(ar.add(res[i], m), r_dt) if res is not None else round_to(m, r_dt)
            v.append(sj)                               # v_j = to_C(s_j): exact
        # The norm.
        if norm == "layer":
            mean = ar.div(ar.row_sum(v), h)
            d = [ar.sub(vj, mean) for vj in v]
            var = ar.div(ar.row_sum([ar.mul(dj, dj) for dj in d]), h)
            rstd = ar.div(1.0, ar.sqrt(ar.add(var, e)))
            y = [ar.mul(dj, rstd) for dj in d]
            zr = [round_to(ar.add(ar.mul(y[j], gamma[j]), beta[j]), t_dt) for j in range(h_int)]
        else:
            mean = 0.0
            ms = ar.div(ar.row_sum([ar.mul(vj, vj) for vj in v]), h)
            rstd = ar.div(1.0, ar.sqrt(ar.add(ms, e)))
            y = [ar.mul(vj, rstd) for vj in v]
            zr = [round_to(ar.mul(y[j], gamma[j]), t_dt) for j in range(h_int)]
        # Backward (y recomputed from v, mean, rstd exactly as in the forward: same values).
        dzr = dz[base:base + h_int]
        g = [ar.mul(dzr[j], gamma[j]) for j in range(h_int)]
        c1 = ar.div(ar.row_sum([ar.mul(g[j], y[j]) for j in range(h_int)]), h)
        if norm == "layer":
            c2 = ar.div(ar.row_sum(g), h)
            tj = [ar.mul(ar.sub(ar.sub(g[j], ar.mul(y[j], c1)), c2), rstd) for j in range(h_int)]
        else:
            tj = [ar.mul(ar.sub(g[j], ar.mul(y[j], c1)), rstd) for j in range(h_int)]
        u = [ar.add(tj[j], ds[base + j]) if ds is not None else tj[j] for j in range(h_int)]
        if res is not None:
            dres.extend(round_to(uj, r_dt) for uj in u)
        if not training:
            dxr = [round_to(uj, t_dt) for uj in u]
        else:
            dxr = [round_to(ar.mul(u[j], s), t_dt) if row_keep[j] else 0.0
                   for j in range(h_int)]
        dx.extend(dxr)
        dx_rows.append(dxr)
        dgamma_terms.append([ar.mul(dzr[j], y[j]) for j in range(h_int)])
        dbeta_terms.append(list(dzr))
        keep.extend(row_keep)
        z.extend(zr)
        s_out.extend(v)
        means.append(mean)
        rstds.append(rstd)
    out = {
        "z": z, "s": s_out, "mean": means, "rstd": rstds, "keep": keep, "dx": dx,
        "dresidual": dres if res is not None else None,
        "dbias": blocked_column_sums(dx_rows, h_int, t_dt) if bias is not None else None,
        "dgamma": blocked_column_sums(dgamma_terms, h_int, t_dt),
        "dbeta": blocked_column_sums(dbeta_terms, h_int, t_dt) if norm == "layer" else None,
        "scale": s,
    }
    return out


# ---- deterministic inputs ------------------------------------------------------------

class _Lcg:
    """64-bit LCG (Knuth's MMIX constants); uniform() takes the top 53 bits."""

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) & MASK64
        return self.state

    def uniform(self) -> float:
        return (self.next_u64() >> 11) / 9007199254740992.0

    def normalish(self) -> float:
        """Sum of four uniforms, centred and doubled: a bell shape on [-4, 4)."""
        return 2.0 * (self.uniform() + self.uniform() + self.uniform() + self.uniform() - 2.0)


def _fnv1a64(text: str) -> int:
    hsh = 0xCBF29CE484222325
    for ch in text.encode("ascii"):
        hsh = ((hsh ^ ch) * 0x100000001B3) & MASK64
    return hsh


def make_case(name: str, norm: str, t_dt: str, n: int, h: int, seed: int, offset: int, *,
              r_dt: str | None = None, index_base: int = 0, p: float = 0.25,
              eps: float = 1e-5, training: int = 1, bias: bool = True,
              residual: bool = True, ds: bool = True) -> dict:
    r_dt = r_dt or t_dt
    rng = _Lcg(_fnv1a64(name))
    nh = n * h

    def vec(k: int, dt: str, f) -> list[float]:
        return [round_to(f(), dt) for _ in range(k)]

    case = {
        "name": name, "norm": norm, "T": t_dt, "R": r_dt, "N": n, "H": h, "seed": seed,
        "offset": offset, "index_base": index_base, "p": p, "eps": eps, "training": training,
    }
    case["x"] = vec(nh, t_dt, rng.normalish)
    case["bias"] = vec(h, t_dt, lambda: 0.25 * rng.normalish()) if bias else None
    case["residual"] = vec(nh, r_dt, rng.normalish) if residual else None
    case["gamma"] = vec(h, t_dt, lambda: 1.0 + 0.5 * (rng.uniform() - 0.5))
    case["beta"] = vec(h, t_dt, lambda: 0.5 * (rng.uniform() - 0.5)) if norm == "layer" else None
    case["dz"] = vec(nh, t_dt, rng.normalish)
    case["ds"] = vec(nh, r_dt, lambda: 0.5 * rng.normalish()) if ds else None
    return case


def _case_keep(case: dict, r: int) -> list[bool]:
    h, t = case["H"], threshold(case["p"])
    return [not dropped(philox_word(case["seed"], case["offset"],
                                    case["index_base"] + r * h + j), t) for j in range(h)]


def _edge_case(name: str, norm: str) -> dict:
    """f32, H = 8, N = 5: constant row, NaN in a kept x, +inf residual, |v| ~ 1e30, ~1e-30."""
    h = 8
    case = make_case(name, norm, "f32", 5, h, 42, 7)
    rng = _Lcg(_fnv1a64(name + "/edge"))
    x, res = case["x"], case["residual"]
    case["bias"] = [0.0] * h                           # zero bias (row 0 must stay constant)
    for j in range(h):
        x[j] = 0.0                                     # row 0: x all equal (so m_j = +0 kept
        res[j] = 1.25                                  # or dropped), residual all equal
    kept1 = [j for j, k in enumerate(_case_keep(case, 1)) if k]
    assert kept1
    x[1 * h + kept1[0]] = NAN                          # row 1: NaN in a kept x
    res[2 * h + 3] = INF                               # row 2: +inf in the residual
    for j in range(h):                                 # row 3: d*d (v*v) overflows f32
        x[3 * h + j] = round_f32(1e30 * rng.normalish())
        res[3 * h + j] = round_f32(1e30 * rng.normalish())
    for j in range(h):                                 # row 4: tiny values
        x[4 * h + j] = round_f32(1e-30 * rng.normalish())
        res[4 * h + j] = round_f32(1e-30 * rng.normalish())
    return case


def _eps0_case(name: str, norm: str) -> dict:
    """eps = 0 on a constant row: rstd = +inf, y = 0 * inf = NaN (RMS: the row is all +0)."""
    case = make_case(name, norm, "f32", 1, 4, SEED_DEAD, OFF_BIG, eps=0.0)
    case["bias"] = [0.0] * 4
    case["x"] = [0.0] * 4
    case["residual"] = [-2.5 if norm == "layer" else 0.0] * 4
    return case


def _dropped_nonfinite_case(name: str) -> dict:
    """NaN and -inf in x only where dropped: m_j = +0 whatever x holds, the row is finite."""
    offset = 100
    while True:
        case = make_case(name, "layer", "f32", 1, 8, 42, offset)
        dropped_js = [j for j, k in enumerate(_case_keep(case, 0)) if not k]
        if len(dropped_js) >= 2:
            break
        offset += 1
    case["x"][dropped_js[0]] = NAN
    case["x"][dropped_js[1]] = -INF
    return case


def _colsum_case(name: str, norm: str, t_dt: str, seed: int, offset: int) -> dict:
    """N = 300, H = 3. dz column 0 gets +2^60 at row 0 and -2^60 at row 256: the blocked
    f64 order (partials of rows 0..255 and 256..299) then differs from a plain running sum
    (the +-2^60 absorb the small terms of their own block only)."""
    case = make_case(name, norm, t_dt, 300, 3, seed, offset)
    case["dz"][0 * 3 + 0] = math.ldexp(1.0, 60)
    case["dz"][256 * 3 + 0] = -math.ldexp(1.0, 60)
    return case


def add_norm_cases() -> list[dict]:
    seeds = [(42, 7), (SEED_DEAD, OFF_BIG), (0, 0), (U64_MAX, 1), (1234567, U64_MAX),
             (1 << 32, 3)]
    cases = []
    k = 0
    for norm in ("layer", "rms"):
        for t_dt in ("f32", "f64", "f16", "bf16"):
            for h in (1, 5, 32, 33, 100):
                seed, offset = seeds[k % len(seeds)]
                k += 1
                cases.append(make_case(f"main_{norm}_{t_dt}_h{h}", norm, t_dt, 3, h, seed, offset))
    for norm in ("layer", "rms"):
        for t_dt in ("f16", "bf16"):
            cases.append(make_case(f"resf32_{norm}_{t_dt}_h37", norm, t_dt, 4, 37, SEED_DEAD,
                                   OFF_BIG + 1, r_dt="f32"))
    for norm in ("layer", "rms"):
        for tag, b, r, d in (("nobias", False, True, True), ("noresidual", True, False, True),
                             ("nods", True, True, False), ("none", False, False, False)):
            cases.append(make_case(f"opt_{norm}_f32_{tag}", norm, "f32", 2, 40, 42, 7,
                                   bias=b, residual=r, ds=d))
    for t_dt in ("f32", "bf16"):
        cases.append(make_case(f"eval_layer_{t_dt}_h64", "layer", t_dt, 2, 64, 42, 7,
                               p=0.5, training=0))
    cases.append(make_case("p0_layer_f32_h16", "layer", "f32", 2, 16, U64_MAX, U64_MAX, p=0.0))
    cases.append(make_case("p1_layer_f32_h16", "layer", "f32", 2, 16, 0, 1, p=1.0))
    cases.append(make_case("shard_layer_f32_h24", "layer", "f32", 2, 24, SEED_DEAD, 7,
                           index_base=2 * 24))
    cases.append(_colsum_case("colsum_layer_f32_n300", "layer", "f32", 42, OFF_BIG))
    cases.append(_colsum_case("colsum_layer_bf16_n300", "layer", "bf16", SEED_DEAD, 9))
    cases.append(_colsum_case("colsum_rms_f32_n300", "rms", "f32", 0, 11))
    cases.append(_edge_case("edge_layer_f32_h8", "layer"))
    cases.append(_edge_case("edge_rms_f32_h8", "rms"))
    cases.append(_eps0_case("edge_eps0_layer_f32_h4", "layer"))
    cases.append(_eps0_case("edge_eps0_rms_f32_h4", "rms"))
    cases.append(_dropped_nonfinite_case("edge_dropped_nonfinite_layer_f32_h8"))
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names)
    return cases


def _case_lines(case: dict, out: dict) -> list[str]:
    t_dt, r_dt, c_dt = case["T"], case["R"], compute_type(case["T"])

    def line(tag: str, vals, dt: str) -> str:
        return " ".join([tag] + [float_hex(v, dt) for v in vals])

    assert float(repr(case["p"])) == case["p"] and float(repr(case["eps"])) == case["eps"]
    lines = [
        f"case {case['name']} norm={case['norm']} T={t_dt} R={r_dt} N={case['N']} "
        f"H={case['H']} seed={case['seed']} offset={case['offset']} "
        f"index_base={case['index_base']} p={case['p']!r} eps={case['eps']!r} "
        f"training={case['training']}",
        line("x", case["x"], t_dt),
    ]
    if case["bias"] is not None:
        lines.append(line("bias", case["bias"], t_dt))
    if case["residual"] is not None:
        lines.append(line("residual", case["residual"], r_dt))
    lines.append(line("gamma", case["gamma"], t_dt))
    if case["beta"] is not None:
        lines.append(line("beta", case["beta"], t_dt))
    lines.append(line("dz", case["dz"], t_dt))
    if case["ds"] is not None:
        lines.append(line("ds", case["ds"], r_dt))
    lines.append(line("z", out["z"], t_dt))
    lines.append(line("s", out["s"], r_dt))
    lines.append(line("mean", out["mean"], c_dt))
    lines.append(line("rstd", out["rstd"], c_dt))
    lines.append("keep " + "".join("1" if k else "0" for k in out["keep"]))
    lines.append(line("dx", out["dx"], t_dt))
    if out["dresidual"] is not None:
        lines.append(line("dresidual", out["dresidual"], r_dt))
    if out["dbias"] is not None:
        lines.append(line("dbias", out["dbias"], t_dt))
    lines.append(line("dgamma", out["dgamma"], t_dt))
    if out["dbeta"] is not None:
        lines.append(line("dbeta", out["dbeta"], t_dt))
    lines.append("end")
    return lines


def write_add_norm(path: str) -> None:
    lines = [
        "# Fused dropout + residual add + row norm (LayerNorm / RMSNorm) known answers.",
        "# Generated by scripts/spec_vectors.py from docs/spec.md section 6.3 (with sections",
        "# 2, 3 and the 6.2 column-sum note; SPEC.md sections 2-3, 6-7);",
        "# an independent pure-Python reference (not derived from the Rust or CUDA code).",
        "# Do not edit by hand: rerun `python3 scripts/spec_vectors.py`.",
        "# Format: one block per case:",
        "#   case <name> norm=<layer|rms> T=<dtype> R=<dtype> N=<rows> H=<h> seed=<dec>",
        "#        offset=<dec> index_base=<dec> p=<f64 repr> eps=<f64 repr> training=<0|1>",
        "#   x <N*H in T> | bias <H in T> | residual <N*H in R> | gamma <H in T> |",
        "#   beta <H in T> | dz <N*H in T> | ds <N*H in R>            (inputs)",
        "#   z <N*H in T> | s <N*H in R> | mean <N in C> | rstd <N in C> |",
        "#   keep <N*H chars 0/1, one token, 1 = kept> | dx <N*H in T> | dresidual <N*H in R> |",
        "#   dbias <H in T> | dgamma <H in T> | dbeta <H in T>           (outputs)",
        "#   end",
        "# Lines bias/residual/ds are omitted when that input is absent (and dresidual without",
        "# a residual, dbias without a bias); beta and dbeta exist for norm=layer only; mean is",
        "# +0 for rms. C = f32 for T in {f32, f16, bf16}, f64 for T = f64. Floats are raw bits",
        "# in lowercase hex without 0x (4 digits f16/bf16, 8 f32, 16 f64); NaN is written as",
        "# the canonical quiet NaN (7e00, 7fc0, 7fc00000, 7ff8000000000000) and compared as",
        "# 'is NaN'. Element (r, j) is local i = r*H + j and uses decision index_base + i.",
    ]
    cases = add_norm_cases()
    for case in cases:
        lines.extend(_case_lines(case, add_norm(case)))
    _write(path, lines, count=len(cases))


def _fd_loss(case: dict) -> float:
    """sum(z*dz) + sum(s*ds) in f64: the backward's dx, dresidual, dbias, dgamma, dbeta
    are its gradients (a T = f64 case)."""
    out = add_norm(case)
    terms = [a * b for a, b in zip(out["z"], case["dz"])]
    terms += [a * b for a, b in zip(out["s"], case["ds"])]
    return math.fsum(terms)


def _norm_self_checks() -> dict:
    """Checks of the section 6.3 model; returns a few measured numbers for the report."""
    info = {}
    rng = _Lcg(_fnv1a64("self-checks"))
    # 1. Roundings. f32 via struct against the exact-integer rounding; f16 exact rounding
    #    against struct 'e' (its OverflowError meaning inf); bf16 against RNE on f32 bits.
    tricky = [65504.0, 65519.99, 65520.0, 65536.0, -65520.0, 1e5, 5.960464477539063e-08,
              2.9802322387695312e-08, 2.9802322387695315e-08, 1e-300, -0.0, 0.0,
              3.4028234663852886e38, 3.4028235677973362e38, 3.4028235677973366e38,
              -3.5e38, 1e-45, 7e-46, 1.401298464324817e-45, 1.5 * 2.0 ** -149, 1e308]
    samples = tricky + [math.ldexp(rng.uniform() - 0.5, int(rng.uniform() * 300) - 150)
                        for _ in range(4000)]
    for v in samples:
        assert float_bits(round_f32(v), "f32") == float_bits(_round_exact(v, FMTS["f32"]), "f32"), v
        try:
            ref16 = struct.unpack("<e", struct.pack("<e", v))[0]
        except OverflowError:
            ref16 = math.copysign(INF, v)
        assert float_bits(round_f16(v), "f16") == float_bits(ref16, "f16"), v
        f = round_f32(v)
        fb = struct.unpack("<I", struct.pack("<f", f))[0]
        assert float_bits(round_bf16(f), "bf16") == bf16_bits_from_f32_bits(fb), v
    assert round_f16(65519.99) == 65504.0 and round_f16(65520.0) == INF
    assert round_f32(3.4028235677973366e38) == INF and round_f32(-3.5e38) == -INF
    assert bf16_bits_from_f32_bits(0x7FC00001) == 0x7FC0
    #    f64 -> f16 / bf16 is one rounding: just above a tie, a detour through f32 would
    #    land on the tie and round to even instead.
    assert float_bits(round_f16(1.0 + 2.0 ** -11 + 2.0 ** -40), "f16") == 0x3C01
    assert float_bits(round_f16(round_f32(1.0 + 2.0 ** -11 + 2.0 ** -40)), "f16") == 0x3C00
    assert float_bits(round_bf16(1.0 + 2.0 ** -8 + 2.0 ** -40), "bf16") == 0x3F81
    assert float_bits(round_bf16(round_f32(1.0 + 2.0 ** -8 + 2.0 ** -40)), "bf16") == 0x3F80

    # 2. S(f): equals the all-lanes xor butterfly bit for bit, and math.fsum to 1e-5 (f32).
    ar32, ar64 = CArith("f32"), CArith("f64")
    worst = 0.0
    for hh in (1, 2, 5, 31, 32, 33, 63, 64, 65, 100, 257, 1000):
        f = [round_f32(rng.normalish()) for _ in range(hh)]
        sv = ar32.row_sum(f)
        assert float_bits(sv, "f32") == float_bits(warp_butterfly_sum(ar32, f), "f32")
        assert ar64.row_sum(f) == warp_butterfly_sum(ar64, f)
        exact = math.fsum(f)
        rel = abs(sv - exact) / math.fsum(abs(a) for a in f)
        worst = max(worst, rel)
        assert rel <= 1e-5, (hh, sv, exact)
        fpos = [abs(a) for a in f]
        assert abs(ar32.row_sum(fpos) - math.fsum(fpos)) <= 1e-5 * math.fsum(fpos)
    assert ar32.row_sum([-0.0, -0.0]) == 0.0 and math.copysign(1.0, ar32.row_sum([-0.0])) > 0
    info["S_vs_fsum_worst_rel"] = worst

    # 3. Row statistics of z with gamma = 1, beta = 0 (f32, H = 100, p = 0.25).
    for norm in ("layer", "rms"):
        c = make_case("stats_" + norm, norm, "f32", 3, 100, 42, 7)
        c["gamma"] = [1.0] * 100
        if norm == "layer":
            c["beta"] = [0.0] * 100
        o = add_norm(c)
        for r in range(3):
            zr = o["z"][r * 100:(r + 1) * 100]
            mu = math.fsum(zr) / 100
            if norm == "layer":
                var = math.fsum((a - mu) ** 2 for a in zr) / 100
                assert abs(mu) < 1e-3 and abs(var - 1.0) < 1e-3, (mu, var)
            else:
                msq = math.fsum(a * a for a in zr) / 100
                assert abs(msq - 1.0) < 1e-3, msq
            # rstd against an f64 recomputation from s.
            sr = o["s"][r * 100:(r + 1) * 100]
            if norm == "layer":
                m64 = math.fsum(sr) / 100
                ref = 1.0 / math.sqrt(math.fsum((a - m64) ** 2 for a in sr) / 100 + 1e-5)
                assert abs(o["mean"][r] - m64) <= 1e-5 * (1 + abs(m64))
            else:
                ref = 1.0 / math.sqrt(math.fsum(a * a for a in sr) / 100 + 1e-5)
            assert abs(o["rstd"][r] - ref) <= 1e-5 * ref

    # 4. The backward against central differences of L = sum(z*dz) + sum(s*ds), f64.
    worst = 0.0
    for norm in ("layer", "rms"):
        c = make_case("fd_" + norm, norm, "f64", 3, 5, SEED_DEAD, OFF_BIG)
        o = add_norm(c)
        assert not all(o["keep"]) and any(o["keep"])
        hstep = 1e-6
        checks = [("gamma", j, o["dgamma"][j]) for j in range(5)]
        checks += [("bias", j, o["dbias"][j]) for j in range(5)]
        if norm == "layer":
            checks += [("beta", j, o["dbeta"][j]) for j in range(5)]
        checks += [("x", i, o["dx"][i]) for i in range(15)]
        checks += [("residual", i, o["dresidual"][i]) for i in range(15)]
        for key, idx, analytic in checks:
            vals = []
            for sign in (1.0, -1.0):
                cc = dict(c)
                cc[key] = list(c[key])
                cc[key][idx] = c[key][idx] + sign * hstep
                vals.append(_fd_loss(cc))
            fd = (vals[0] - vals[1]) / (2 * hstep)
            if key == "x" and not o["keep"][idx]:
                assert analytic == 0.0 and fd == 0.0
                continue
            rel = abs(fd - analytic) / max(abs(analytic), 1e-3)
            worst = max(worst, rel)
            assert rel <= 1e-6, (norm, key, idx, fd, analytic)
    info["fd_worst_rel"] = worst

    # 5. Shard: index_base = 2H reproduces rows 2, 3 of the unsharded tensor (forward and
    #    per-row backward).
    full = make_case("shard_full", "layer", "f32", 4, 24, SEED_DEAD, 7)
    part = dict(full, N=2, index_base=48)
    for key in ("x", "residual", "dz", "ds"):
        part[key] = full[key][48:]
    of, op = add_norm(full), add_norm(part)
    for key in ("z", "s", "keep", "dx", "dresidual"):
        assert [float_hex(a, "f32") if isinstance(a, float) else a for a in of[key][48:]] == \
               [float_hex(a, "f32") if isinstance(a, float) else a for a in op[key]], key
    assert of["rstd"][2:] == op["rstd"] and of["mean"][2:] == op["mean"]

    # 6. p = 0 in training (s = 1) gives eval's bits; eval keeps everything.
    ev = make_case("p0_vs_eval", "layer", "f32", 2, 40, 42, 7, p=0.0, training=0)
    tr = dict(ev, training=1)
    oe, ot = add_norm(ev), add_norm(tr)
    assert all(oe["keep"]) and all(ot["keep"]) and ot["scale"] == 1.0
    for key in ("z", "s", "mean", "rstd", "dx", "dresidual", "dbias", "dgamma", "dbeta"):
        assert [float_hex(a, "f32") for a in oe[key]] == [float_hex(a, "f32") for a in ot[key]]

    # 7. p = 1: every m_j is +0, so the row norm sees residual + 0; dx and dbias are +0.
    c1 = make_case("p1_check", "rms", "f32", 2, 16, 0, 1, p=1.0)
    o1 = add_norm(c1)
    assert not any(o1["keep"]) and o1["scale"] is None
    assert all(float_bits(a, "f32") == 0 for a in o1["dx"] + o1["dbias"])
    assert o1["s"] == [a + 0.0 for a in c1["residual"]]

    # 8. Edge rows.
    e_l = add_norm(_edge_case("edge_layer_check", "layer"))
    e_r = add_norm(_edge_case("edge_rms_check", "rms"))
    e0 = round_f32(1e-5)
    assert e_l["rstd"][0] == round_f32(1.0 / round_f32(math.sqrt(e0)))
    ce = _edge_case("edge_layer_check", "layer")
    assert e_l["z"][:8] == ce["beta"]                            # row 0: z = +0*gamma + beta
    for o in (e_l, e_r):
        assert all(float_bits(d, "f32") == 0 for d, k in zip(o["dx"], o["keep"]) if not k)
        assert float_bits(o["rstd"][3], "f32") == 0              # row 3: var / ms = +inf
    for o in (e_l, e_r):
        assert all(math.isnan(a) for a in o["z"][8:16])          # row 1 (kept NaN): all NaN
    assert all(math.isnan(a) for a in e_l["z"][16:24])           # row 2, layer: all NaN
    #    Row 2, RMS: v*v is +inf, never NaN, so ms = +inf, rstd = +0, and y_j = v_j * +0 is
    #    a signed zero except at the +inf (NaN): the arithmetic, not the 6.3 bullet's
    #    "the whole row of z is NaN", which holds for LayerNorm only.
    assert float_bits(e_r["rstd"][2], "f32") == 0
    assert [math.isnan(a) for a in e_r["z"][16:24]] == [j == 3 for j in range(8)]
    for o in (e_l, e_r):
        assert all(math.isfinite(a) for a in o["z"][24:40])      # rows 3, 4: finite
        assert all(math.isnan(a) for a in o["dgamma"])           # the NaN row reaches dgamma
    #    A lone +inf gives mean = +inf (not NaN); d = -inf / NaN, so var and rstd are NaN.
    assert math.isnan(e_l["mean"][1]) and e_l["mean"][2] == INF and math.isnan(e_l["rstd"][2])
    for norm in ("layer", "rms"):
        oz = add_norm(_eps0_case("eps0_check_" + norm, norm))
        assert oz["rstd"][0] == INF and all(math.isnan(a) for a in oz["z"])
    od = add_norm(_dropped_nonfinite_case("dropped_nonfinite_check"))
    assert all(math.isfinite(a) for k in ("z", "s", "dx", "dbias", "dgamma", "dbeta")
               for a in od[k])

    # 9. The column-sum cases really depend on the 256-row blocks: a plain running f64
    #    sum of dbeta's column 0 gives other bits.
    for t_dt in ("f32", "bf16"):
        c = _colsum_case("colsum_check_" + t_dt, "layer", t_dt, 42, OFF_BIG)
        o = add_norm(c)
        run = 0.0
        for r in range(300):
            run = run + c["dz"][r * 3]
        assert float_hex(round_to(run, t_dt), t_dt) != float_hex(o["dbeta"][0], t_dt)
        info["colsum_" + t_dt] = (o["dbeta"][0], round_to(run, t_dt))
    return info


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
    # docs/spec.md section 6.3 (fused dropout + residual add + row norm).
    _self_checks.norm_info = _norm_self_checks()


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


def _write(path: str, lines: list[str], count: int | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    if count is None:
        count = sum(1 for l in lines if not l.startswith('#'))
    print(f"wrote {path} ({count} cases)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.path.join(_repo_root(), "tests", "data"),
                    help="directory for the generated files (default: <repo>/tests/data)")
    ap.add_argument("--check-only", action="store_true",
                    help="run the self checks (Philox KATs etc.) and write nothing")
    args = ap.parse_args()
    _self_checks()
    print("self checks passed (3 Philox4x32-10 known answers from SPEC section 1)")
    info = _self_checks.norm_info
    print("self checks passed (docs/spec.md 6.3 model: roundings, S(f) vs butterfly and fsum "
          f"[worst rel {info['S_vs_fsum_worst_rel']:.2e}], row statistics, backward vs "
          f"central differences [worst rel {info['fd_worst_rel']:.2e}], shard, p = 0 / eval, "
          "p = 1, edge rows, blocked column sums)")
    if args.check_only:
        return
    write_keep_bits(os.path.join(args.out_dir, "keep_bits_vectors.txt"))
    write_philox_words(os.path.join(args.out_dir, "philox_words.txt"))
    write_scales(os.path.join(args.out_dir, "scales.txt"))
    write_add_norm(os.path.join(args.out_dir, "add_norm_vectors.txt"))


if __name__ == "__main__":
    main()
