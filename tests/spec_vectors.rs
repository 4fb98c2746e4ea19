//! Known answers computed independently from the spec by `scripts/spec_vectors.py`
//! (a separate pure-Python implementation), checked against the Rust reference.

use dropkit::mask::{keep_bits, Probability};
use dropkit::philox::random_word;

/// `tests/data`, or `DROPKIT_TEST_DATA` when set: a test binary run away from its source
/// tree (the GPU bundle) cannot rely on the CARGO_MANIFEST_DIR baked in at build time.
fn data_dir() -> std::path::PathBuf {
    std::env::var_os("DROPKIT_TEST_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"))
}

fn data_lines(name: &str) -> Vec<Vec<String>> {
    let path = data_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (DROPKIT_TEST_DATA overrides)", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn hex32(s: &str) -> u32 {
    u32::from_str_radix(s, 16).unwrap()
}

fn hex64(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

#[test]
fn keep_bits_match_independent_vectors() {
    let cases = data_lines("keep_bits_vectors.txt");
    assert!(cases.len() >= 10, "vector file too short");
    for f in cases {
        let (seed, offset): (u64, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        let p: f64 = f[2].parse().unwrap();
        let n: usize = f[3].parse().unwrap();
        let expected: Vec<u32> = f[4..].iter().map(|w| hex32(w)).collect();
        assert_eq!(
            keep_bits(seed, offset, p, n).unwrap(),
            expected,
            "case {f:?}"
        );
    }
}

#[test]
fn random_words_match_independent_vectors() {
    let cases = data_lines("philox_words.txt");
    assert!(cases.len() >= 10);
    for f in cases {
        let (seed, offset, i): (u64, u64, u64) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        assert_eq!(random_word(seed, offset, i), hex32(&f[3]), "case {f:?}");
    }
}

#[test]
fn thresholds_and_scales_match_independent_vectors() {
    let cases = data_lines("scales.txt");
    assert!(cases.len() >= 5);
    for f in cases {
        let prob = Probability::new(f[0].parse().unwrap()).unwrap();
        assert_eq!(
            prob.threshold(),
            f[1].parse::<u64>().unwrap(),
            "t for {f:?}"
        );
        assert_eq!(
            prob.keep_probability().to_bits(),
            hex64(&f[2]),
            "q for {f:?}"
        );
        assert_eq!(prob.scale_f32().to_bits(), hex32(&f[3]), "s32 for {f:?}");
        assert_eq!(prob.scale_f64().to_bits(), hex64(&f[4]), "s64 for {f:?}");
    }
}
