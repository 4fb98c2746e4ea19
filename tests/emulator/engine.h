// engine.h: the one engine that runs kernels/*.cu on the CPU, as both dk-emulate (the
// command-line emulator) and the emulated CUDA driver (libcuda.so) use it. kernel_set.cpp,
// compiled once per emulated architecture, holds the kernels and the block scheduler and
// exports their table through this interface: each kernel's name, its parameters as the
// C++ signature has them, and a launcher that takes the parameters as CUDA's
// `kernelParams` does (one pointer to each parameter's bytes).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dkemu {

// What a parameter is, by its C++ type; the command-line emulator parses by it.
enum class ParamKind : uint8_t { Pointer, U64, F32, F64, Draw, Struct };

struct ParamDesc {
    ParamKind kind;
    uint32_t size;       // bytes of the parameter itself
    uint32_t elem_size;  // bytes of the pointee, for pointers
};

struct KernelDesc {
    std::string name;
    std::vector<ParamDesc> params;
};

// How a launch ended.
enum class LaunchStatus {
    Ok,
    MemoryFault,  // a memory check stopped the kernel (device_memory.h has the report)
};

struct KernelSet {
    unsigned arch;  // the __CUDA_ARCH__ it was compiled for
    std::vector<KernelDesc> kernels;
    // Runs kernel `index` on a 1-D grid of `grid` blocks of `block` threads (a multiple of
    // 32 up to 1024), blocks last first; `args[k]` points at parameter k's bytes.
    LaunchStatus (*launch)(size_t index, unsigned grid, unsigned block, void* const* args);

    const KernelDesc* find(const std::string& name, size_t* index) const {
        for (size_t k = 0; k < kernels.size(); ++k) {
            if (kernels[k].name == name) {
                *index = k;
                return &kernels[k];
            }
        }
        return nullptr;
    }
};

}  // namespace dkemu

// kernel_set.cpp compiled with -D__CUDA_ARCH__=A exports `dkemu_kernels_smA()`: declare
// the ones a program links with DKEMU_DECLARE_SET(A).
#define DKEMU_CAT(a, b) a##b
#define DKEMU_SET_FN(arch) DKEMU_CAT(dkemu_kernels_sm, arch)
#define DKEMU_DECLARE_SET(arch) extern "C" const dkemu::KernelSet* DKEMU_SET_FN(arch)()
