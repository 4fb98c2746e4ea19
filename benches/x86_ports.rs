//! How many of the AVX-512 Philox round's instructions this CPU issues per cycle: the
//! measurement behind the schedule in `src/cpu/avx512/philox.rs`.
//!
//! Each case runs a loop of independent register-to-register instructions (no chain
//! longer than the instruction's latency allows) and prints instructions per cycle, the
//! cycle taken from a chain of dependent `imul` (3 cycles each on every x86-64 core of
//! the last decade). `cargo bench --bench x86_ports`; prints "skipped" without AVX-512.

#[cfg(target_arch = "x86_64")]
use std::time::Instant;

#[cfg(target_arch = "x86_64")]
const ITERS: u64 = 20_000_000;

/// Seconds per cycle, from a chain of dependent 64-bit multiplies.
#[cfg(target_arch = "x86_64")]
fn cycle_seconds() -> f64 {
    let n = ITERS * 4;
    let start = Instant::now();
    // SAFETY: scalar arithmetic on two registers the asm declares.
    unsafe {
        std::arch::asm!(
            "2:",
            "imul {y}, {y}",
            "imul {y}, {y}",
            "imul {y}, {y}",
            "imul {y}, {y}",
            "sub {n}, 1",
            "jnz 2b",
            y = inout(reg) 3u64 => _,
            n = inout(reg) n / 4 => _,
            options(nomem, nostack),
        );
    }
    start.elapsed().as_secs_f64() / (3 * n) as f64
}

/// Runs `$body` (one string of instructions, `$count` of them) `ITERS` times with zmm0-15
/// zeroed first, and prints instructions per cycle.
#[cfg(target_arch = "x86_64")]
macro_rules! case {
    ($cycle:expr, $name:expr, $count:expr, $body:expr) => {{
        let start = Instant::now();
        // SAFETY: vector arithmetic on registers the asm declares clobbered.
        unsafe {
            std::arch::asm!(
                "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1",
                "vpxord zmm2, zmm2, zmm2", "vpxord zmm3, zmm3, zmm3",
                "vpxord zmm4, zmm4, zmm4", "vpxord zmm5, zmm5, zmm5",
                "vpxord zmm6, zmm6, zmm6", "vpxord zmm7, zmm7, zmm7",
                "vpxord zmm8, zmm8, zmm8", "vpxord zmm9, zmm9, zmm9",
                "vpxord zmm10, zmm10, zmm10", "vpxord zmm15, zmm15, zmm15",
                "2:",
                $body,
                "sub {n}, 1",
                "jnz 2b",
                n = inout(reg) ITERS => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm15") _,
                options(nomem, nostack),
            );
        }
        let cycles = start.elapsed().as_secs_f64() / $cycle / ITERS as f64;
        println!("{:<44} {:>5.2} instructions per cycle", $name, $count as f64 / cycles);
    }};
}

/// Eight `$op zmmK$rest` instructions, K = 0..8, as one template string.
#[cfg(target_arch = "x86_64")]
macro_rules! eight {
    ($op:literal, $rest:literal) => {
        concat!(
            $op, " zmm0", $rest, "\n", $op, " zmm1", $rest, "\n", $op, " zmm2", $rest, "\n", $op,
            " zmm3", $rest, "\n", $op, " zmm4", $rest, "\n", $op, " zmm5", $rest, "\n", $op,
            " zmm6", $rest, "\n", $op, " zmm7", $rest
        )
    };
}

#[cfg(target_arch = "x86_64")]
fn main() {
    if !std::is_x86_feature_detected!("avx512f") {
        println!("skipped: this CPU lacks AVX-512 F");
        return;
    }
    let cycle = cycle_seconds();
    println!("clock from an imul chain: {:.2} GHz", 1e-9 / cycle);
    // Destinations rotate over eight registers from fixed sources: no dependencies.
    case!(
        cycle,
        "vpmuludq zmm",
        8,
        eight!("vpmuludq", ", zmm8, zmm15")
    );
    case!(
        cycle,
        "vpshufd zmm (swap halves)",
        8,
        eight!("vpshufd", ", zmm8, 0xB1")
    );
    case!(
        cycle,
        "vpsrlq zmm, 32 (the shift LLVM prefers)",
        8,
        eight!("vpsrlq", ", zmm8, 32")
    );
    case!(
        cycle,
        "vpternlogq zmm",
        8,
        eight!("vpternlogq", ", zmm9, zmm10, 0x96")
    );
    // The round's mix: a multiply, a swap and a three-way xor per eight lanes.
    case!(cycle, "round mix: vpmuludq + vpshufd + vpternlogq", 12,
        "vpmuludq zmm0, zmm8, zmm15\nvpshufd zmm4, zmm8, 0xB1\nvpternlogq zmm1, zmm9, zmm10, 0x96\n\
         vpmuludq zmm2, zmm8, zmm15\nvpshufd zmm5, zmm8, 0xB1\nvpternlogq zmm3, zmm9, zmm10, 0x96\n\
         vpmuludq zmm6, zmm8, zmm15\nvpshufd zmm4, zmm8, 0xB1\nvpternlogq zmm1, zmm9, zmm10, 0x96\n\
         vpmuludq zmm7, zmm8, zmm15\nvpshufd zmm5, zmm8, 0xB1\nvpternlogq zmm3, zmm9, zmm10, 0x96");
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("skipped: not an x86-64 CPU");
}
