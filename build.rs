//! Compiles every `kernels/*.cu` to PTX with nvcc and generates `kernels.rs` in OUT_DIR,
//! which the crate includes to embed the PTX: one typed constant per module.
//!
//! nvcc is found from `NVCC`, then `CUDA_HOME`/`CUDA_PATH`, then `PATH`. Without nvcc (or
//! with `DROPKIT_NO_NVCC=1`) the build still succeeds, embeds no PTX and warns; CUDA calls
//! then compile the embedded sources with NVRTC at run time if it is present, else return
//! `Error::KernelsNotBuilt`. The targets are virtual architectures (PTX that the driver
//! JIT-compiles): the portable one, `DROPKIT_CUDA_ARCH` (e.g. `compute_90`) or else the
//! lowest the nvcc knows, and `compute_80` as well when the portable one is older, so that
//! GPUs of compute capability 8.0 and newer get PTX that uses their bf16 conversion
//! instruction. src/cuda picks the newest PTX the device can run.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "DROPKIT_CUDA_ARCH",
        "DROPKIT_NO_NVCC",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let generated = out_dir.join("kernels.rs");

    let modules = if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        Vec::new()
    } else if let Some(nvcc) = find_nvcc() {
        compile_all(&nvcc, &out_dir)
    } else {
        println!(
            "cargo:warning=dropkit: nvcc not found, building without CUDA kernels (CUDA calls \
             will return Error::KernelsNotBuilt). To build them: `bash scripts/install-nvcc.sh` \
             and set NVCC to the path it prints, or install a CUDA toolkit and set CUDA_HOME."
        );
        Vec::new()
    };

    // One typed constant per kernels/*.cu (`DROPOUT` for dropout.cu), so a launch that
    // names a module that does not exist fails to compile. Each holds the PTX nvcc built,
    // one per target architecture, oldest first (none without nvcc), and the source with
    // its local headers inlined, for run-time NVRTC (a few tens of KiB). `KernelModule`
    // and `EmbeddedPtx` are defined by the file that includes this one
    // (src/cuda/kernels.rs).
    let mut code = String::new();
    let mut names = Vec::new();
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        for src in kernel_sources() {
            let name = src.file_stem().unwrap().to_string_lossy().into_owned();
            let source = out_dir.join(format!("{name}.nvrtc.cu"));
            fs::write(&source, amalgamate(&src)).expect("write amalgamated source");
            let ptx: Vec<String> = modules
                .iter()
                .filter(|(m, _, _)| *m == name)
                .map(|(_, arch, path)| {
                    format!(
                        "EmbeddedPtx {{ arch: {arch}, text: include_str!({:?}) }}",
                        path.display()
                    )
                })
                .collect();
            let ptx = format!("&[{}]", ptx.join(", "));
            let constant = name.to_uppercase();
            code.push_str(&format!(
                "/// kernels/{name}.cu.\npub const {constant}: KernelModule = KernelModule {{\n    \
                 name: {name:?},\n    ptx: {ptx},\n    source: include_str!({:?}),\n}};\n",
                source.display()
            ));
            names.push(constant);
        }
    }
    code.push_str("/// Every kernels/*.cu, sorted by name.\n");
    code.push_str(&format!(
        "pub const ALL: &[KernelModule] = &[{}];\n",
        names.join(", ")
    ));
    // One constant per op of kernels/kernels.list (`ops::DROPOUT_FWD` for dropout_fwd), which
    // launches name their kernel by; nvcc's PTX must hold exactly the list's entries.
    code.push_str("/// One constant per op of kernels/kernels.list.\npub mod ops {\n    use super::KernelOp;\n");
    let mut ops = Vec::new();
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let list = kernel_list();
        for (module, op, kind) in &list {
            assert!(
                names.contains(&module.to_uppercase()),
                "kernels/kernels.list: no kernels/{module}.cu for {op}"
            );
            let constant = op.to_uppercase();
            code.push_str(&format!(
                "    /// `{op}{}` of kernels/{module}.cu.\n    pub const {constant}: KernelOp = \
                 KernelOp {{ module: &super::{}, op: {op:?}, suffixes: &{:?} }};\n",
                if kind.is_empty() { "" } else { "_<suffix>" },
                module.to_uppercase(),
                kind,
            ));
            ops.push(constant);
        }
        for (module, _, path) in &modules {
            let ptx = fs::read_to_string(path).expect("read PTX");
            let mut found: Vec<String> = ptx
                .lines()
                .filter_map(|l| l.split(".entry ").nth(1))
                .map(|rest| rest.trim_end_matches(['(', ' ']).to_string())
                .collect();
            found.sort();
            let mut listed: Vec<String> = list
                .iter()
                .filter(|(m, _, _)| m == module)
                .flat_map(|(_, op, kind)| entry_names(op, kind))
                .collect();
            listed.sort();
            assert_eq!(
                found,
                listed,
                "{}: the PTX's entries differ from kernels/kernels.list",
                path.display()
            );
        }
    }
    code.push_str("    /// Every op of kernels/kernels.list, in its order.\n");
    code.push_str(&format!(
        "    pub const ALL: &[KernelOp] = &[{}];\n}}\n",
        ops.join(", ")
    ));
    fs::write(&generated, code).expect("write kernels.rs");
}

/// The entry suffixes of each kind of kernels/kernels.list (empty: the op alone).
const PER_DTYPE: &[&str] = &["f32", "f64", "f16", "bf16"];
const PER_RESIDUAL_DTYPE: &[&str] = &["f32", "f64", "f16", "bf16", "f16_rf32", "bf16_rf32"];

/// kernels/kernels.list: (module, op, entry suffixes) per line.
fn kernel_list() -> Vec<(String, String, &'static [&'static str])> {
    let text = fs::read_to_string("kernels/kernels.list").expect("kernels/kernels.list");
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words[..] {
                [module, op, "per-dtype"] => (module.to_owned(), op.to_owned(), PER_DTYPE),
                [module, op, "per-residual-dtype"] => {
                    (module.to_owned(), op.to_owned(), PER_RESIDUAL_DTYPE)
                }
                [module, op, "single"] => (module.to_owned(), op.to_owned(), &[][..]),
                _ => panic!("kernels/kernels.list: cannot read the line {l:?}"),
            }
        })
        .collect()
}

/// The entry names of one op: `op_<suffix>` for each suffix, or `op` alone.
fn entry_names(op: &str, suffixes: &[&str]) -> Vec<String> {
    if suffixes.is_empty() {
        vec![op.to_owned()]
    } else {
        suffixes.iter().map(|sfx| format!("{op}_{sfx}")).collect()
    }
}

/// Every kernels/*.cu, sorted.
fn kernel_sources() -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = fs::read_dir("kernels")
        .expect("kernels/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    sources
}

/// One source with `#include "local.cuh"` inlined (once each) and <stdint.h> replaced by
/// typedefs under NVRTC, which has no C library headers.
fn amalgamate(src: &Path) -> String {
    fn inline(path: &Path, seen: &mut Vec<PathBuf>, out: &mut String) {
        let text = fs::read_to_string(path).expect("read kernel source");
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(rest) = trimmed.strip_prefix("#include \"") {
                let header = Path::new("kernels").join(rest.trim_end_matches('"'));
                if !seen.contains(&header) {
                    seen.push(header.clone());
                    inline(&header, seen, out);
                }
            } else if trimmed != "#pragma once" && trimmed != "#include <stdint.h>" {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let mut out = String::from(
        "#ifdef __CUDACC_RTC__\ntypedef unsigned short uint16_t;\ntypedef unsigned int uint32_t;\n\
         typedef unsigned long long uint64_t;\ntypedef long long int64_t;\n\
         typedef unsigned long long uintptr_t;\n#else\n#include <stdint.h>\n#endif\n",
    );
    inline(src, &mut Vec::new(), &mut out);
    out
}

fn find_nvcc() -> Option<PathBuf> {
    if env::var_os("DROPKIT_NO_NVCC").is_some_and(|v| v != "0") {
        return None;
    }
    if let Some(p) = env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = Path::new(&home).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("nvcc"))
        .find(|p| p.is_file())
}

/// The virtual architectures, oldest first, as the numbers after `compute_`: the portable
/// one (DROPKIT_CUDA_ARCH, else the lowest `compute_XX` nvcc lists), then 80 when that is
/// older (bf16 conversions in hardware from compute capability 8.0 on).
fn target_archs(nvcc: &Path) -> Vec<u32> {
    let portable = match env::var("DROPKIT_CUDA_ARCH") {
        Ok(arch) => arch
            .trim()
            .strip_prefix("compute_")
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or_else(|| {
                panic!("DROPKIT_CUDA_ARCH must be compute_XY (e.g. compute_90), got {arch:?}")
            }),
        Err(_) => {
            let listed = Command::new(nvcc).arg("--list-gpu-arch").output();
            let lowest = listed.ok().and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("compute_"))
                    .filter_map(|v| v.parse::<u32>().ok())
                    .min()
            });
            lowest.unwrap_or(75)
        }
    };
    if portable < 80 {
        vec![portable, 80]
    } else {
        vec![portable]
    }
}

/// Every kernel for every target architecture: (module name, arch number, PTX path).
fn compile_all(nvcc: &Path, out_dir: &Path) -> Vec<(String, u32, PathBuf)> {
    let mut modules = Vec::new();
    for arch in target_archs(nvcc) {
        for src in kernel_sources() {
            let name = src.file_stem().unwrap().to_string_lossy().into_owned();
            let ptx = out_dir.join(format!("{name}.compute_{arch}.ptx"));
            // Keep these flags in sync with scripts/check-ptx.sh. --fmad=false: SPEC forbids
            // contracting a multiply and an add into an FMA.
            let status = Command::new(nvcc)
                .args(["-ptx", "-O3", "-std=c++17", "--fmad=false", "-I", "kernels"])
                .arg(format!("-arch=compute_{arch}"))
                .arg("-o")
                .arg(&ptx)
                .arg(&src)
                .status()
                .unwrap_or_else(|e| panic!("failed to run nvcc at {}: {e}", nvcc.display()));
            assert!(
                status.success(),
                "nvcc failed on {} for compute_{arch}",
                src.display()
            );
            modules.push((name, arch, ptx));
        }
    }
    modules
}
