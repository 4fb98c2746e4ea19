//! The kernels of kernels/kernels.list (the names the Rust side launches by) exist under
//! their exact names, and no others: in the PTX that nvcc built (when it did; build.rs
//! checks that too), and in what NVRTC compiles from the embedded sources (when NVRTC
//! and the CUDA headers are here; CI installs both). Without nvcc, a CUDA call gets the
//! documented error. None of this needs a GPU.
#![cfg(feature = "cuda")]

use dropkit::cuda::{embedded_ptx, kernels_built, nvrtc};
use dropkit::{Device, Error};
use std::collections::BTreeSet;

/// Every kernel of `module` by kernels/kernels.list, the one list src/cuda/ launches by
/// (build.rs generates `dropkit::cuda::kernels::ops` from it).
fn expected(module: &str) -> BTreeSet<String> {
    let listed: BTreeSet<String> = dropkit::cuda::kernels::ops::ALL
        .iter()
        .filter(|op| op.module.name == module)
        .flat_map(|op| op.entries())
        .collect();
    assert!(
        !listed.is_empty(),
        "kernels/kernels.list has no op of {module}"
    );
    listed
}

fn entries(ptx: &str) -> BTreeSet<String> {
    ptx.lines()
        .filter_map(|l| l.split(".entry ").nth(1))
        .map(|rest| rest.trim_end_matches(['(', ' ']).to_string())
        .collect()
}

/// Every module that kernels/kernels.list names, sorted (the list, not a copy of it here).
fn modules() -> Vec<&'static str> {
    let names: BTreeSet<&'static str> = dropkit::cuda::kernels::ops::ALL
        .iter()
        .map(|op| op.module.name)
        .collect();
    names.into_iter().collect()
}

#[test]
fn embedded_sources_cover_every_module() {
    assert_eq!(nvrtc::source_modules().collect::<Vec<_>>(), modules());
    // And every kernels/*.cu is one of them (a module with no listed op would not load).
    let mut on_disk: Vec<String> = std::fs::read_dir("kernels")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, modules());
}

#[test]
fn nvcc_ptx_has_every_kernel_or_documented_error() {
    if !kernels_built() {
        for module in modules() {
            assert_eq!(embedded_ptx(module), Err(Error::KernelsNotBuilt));
        }
        let msg = Error::KernelsNotBuilt.to_string();
        assert!(
            msg.contains("install-nvcc.sh") && msg.contains("NVRTC"),
            "{msg}"
        );
        println!("built without nvcc: every module reports the documented error");
        return;
    }
    for module in modules() {
        let portable = embedded_ptx(module).unwrap();
        // Every flavour (the portable one, then compute_80 for bf16 in hardware).
        let flavours = dropkit::cuda::kernels::by_name(module).unwrap().ptx;
        assert_eq!(flavours[0].text, portable, "{module}");
        assert!(
            flavours.iter().any(|p| p.arch == 80),
            "{module}: no compute_80 PTX"
        );
        for ptx in flavours {
            let what = format!("{module} compute_{}", ptx.arch);
            assert!(
                ptx.text.contains(&format!(".target sm_{}", ptx.arch)),
                "{what}"
            );
            assert_eq!(entries(ptx.text), expected(module), "{what}");
            assert!(
                !ptx.text.contains("fma.rn"),
                "{what}: an FMA in the PTX breaks the spec"
            );
        }
    }
}

#[test]
fn nvrtc_compiles_every_kernel() {
    let mut compiled = 0;
    for module in modules() {
        match nvrtc::compile_module(module, "compute_90") {
            Ok(ptx) => {
                assert_eq!(entries(&ptx), expected(module), "{module}");
                assert!(!ptx.contains("fma.rn"), "{module}: NVRTC contracted an FMA");
                compiled += 1;
            }
            Err(Error::CudaUnavailable(why)) => {
                if std::env::var("DROPKIT_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                    panic!("DROPKIT_REQUIRE_NVRTC=1 but NVRTC is unusable: {why}");
                }
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped nvrtc_compiles_every_kernel: {why}"
                );
                return;
            }
            Err(e) => panic!("{module}: {e}"),
        }
    }
    assert_eq!(compiled, modules().len());
}

#[test]
fn nvrtc_compiles_every_kernel_to_a_cubin() {
    for module in modules() {
        match nvrtc::compile_cubin_module(module, "sm_80") {
            // An ELF image: what the run-time fallback loads first.
            Ok(cubin) => assert_eq!(&cubin[..4], b"\x7fELF", "{module}"),
            Err(Error::CudaUnavailable(why)) => {
                if std::env::var("DROPKIT_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                    panic!("DROPKIT_REQUIRE_NVRTC=1 but NVRTC is unusable: {why}");
                }
                // Straight to the handle: the harness captures eprintln! of passing tests.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped nvrtc_compiles_every_kernel_to_a_cubin: {why}"
                );
                return;
            }
            Err(e) => panic!("{module}: {e}"),
        }
    }
}

#[test]
fn no_gpu_means_cpu_and_a_clear_error() {
    // On a machine without a usable GPU the best device is the CPU and asking for CUDA is
    // an error value, not a panic; with a GPU both work.
    match Device::cuda(0) {
        Ok(dev) => assert!(dev.is_cuda()),
        Err(e) => {
            assert!(
                matches!(e, Error::CudaUnavailable(_) | Error::Cuda { .. }),
                "{e}"
            );
            assert!(matches!(Device::best_available(), Device::Cpu));
        }
    }
}
