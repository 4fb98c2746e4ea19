// cubin_check.cpp: prints what cubin.h reads from cubin files (the SM, the image's length,
// and each kernel's parameters as size@offset in bytes), to check the parser by eye
// against the kernels' C++ signatures and against readelf.
//   g++ -std=c++17 -O1 -Wall -I tests/emulator tests/emulator/cubin_check.cpp -o /tmp/cubin_check
//   /tmp/cubin_check FILE.cubin...
// Exits non-zero if any file fails to parse, or its length as the header gives it is not
// the file's size (cuModuleLoadData gets no length, so that one must be exact).
#include <cstdio>
#include <fstream>
#include <iterator>

#include "cubin.h"

int main(int argc, char** argv) {
    int failures = 0;
    for (int i = 1; i < argc; ++i) {
        std::ifstream in(argv[i], std::ios::binary);
        std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
        dkemu::CubinInfo info, unbounded;
        std::string why;
        // The file's size bounds every read here; truncated or garbage files fail cleanly.
        if (!in.is_open()) why = "cannot open";
        if (!in.is_open() || !dkemu::parse_cubin(bytes.data(), bytes.size(), &info, &why)) {
            std::printf("%s: FAILED: %s\n", argv[i], why.c_str());
            ++failures;
            continue;
        }
        // Now known to stay inside the file, the pointer-only form (the driver's) must agree.
        bool same = dkemu::parse_cubin(bytes.data(), &unbounded, &why) &&
                    unbounded.image_bytes == info.image_bytes &&
                    unbounded.kernels.size() == info.kernels.size();
        bool exact = info.image_bytes == bytes.size() && same;
        std::printf("%s: sm_%u, %zu bytes (file %zu%s), %zu kernels\n", argv[i], info.sm,
                    info.image_bytes, bytes.size(), exact ? "" : ", MISMATCH",
                    info.kernels.size());
        if (!exact) ++failures;
        for (const auto& k : info.kernels) {
            std::printf("  %s(", k.name.c_str());
            for (size_t p = 0; p < k.param_sizes.size(); ++p)
                std::printf("%s%u@%u", p ? ", " : "", k.param_sizes[p], k.param_offsets[p]);
            std::printf(")\n");
        }
    }
    return failures ? 1 : 0;
}
