// cubin.h: reads what the emulated driver needs from an NVIDIA ELF cubin (the image that
// nvrtcGetCUBIN returns and cuModuleLoadData receives): the target SM, the image's length,
// and each kernel's name and parameter sizes, so cuModuleGetFunction and cuLaunchKernel
// can find a kernel and copy its kernelParams without the real driver.
//
// Layout facts below were read by hand from NVRTC 12.9 cubins for sm_52..sm_120 (no
// committed tool does that); what CI shows is the sm_90 case, which check-cuda12.sh's
// CUDA 12.4 run loads for every module:
//  - e_flags: EI_ABIVERSION 7 (sm_52..sm_90) keeps the SM in bits 0-7 (0x5a055a for sm_90);
//    ABI 8 (sm_100, sm_120) keeps it in bits 8-15 (0x6006402 for sm_100).
//  - Kernels are the STT_FUNC symbols with st_other bit 0x10 in a section .text.<name>;
//    -rdc device functions have their own .text section too, but not that bit.
//  - The program-header table comes last, after the section headers, so the length is the
//    furthest end of the headers, the tables and every section and segment.
//  - .nv.info.<kernel> is a list of 4-byte-aligned records {u8 format, u8 attribute, u16}:
//    formats 1-3 (none, byte, half) are just those 4 bytes; format 4 (sized) has that u16
//    as a length followed by that many bytes.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace dkemu {

struct CubinKernel {
    std::string name;
    std::vector<uint32_t> param_sizes;    // bytes, ordinal 0 first
    std::vector<uint32_t> param_offsets;  // byte offset of each in the parameter buffer
};
struct CubinInfo {
    unsigned sm = 0;  // 90 for sm_90
    size_t image_bytes = 0;
    std::vector<CubinKernel> kernels;
};

inline bool is_elf(const void* image) {
    return image && std::memcmp(image, "\x7f" "ELF", 4) == 0;
}

namespace cubin_detail {
constexpr uint64_t kMaxImage = 256ull << 20;  // ours are under 1 MiB: more means garbage
constexpr uint8_t kSval = 4, kKparamInfo = 0x17, kKparamInfoV2 = 0x45, kParamCbank = 0x0a;
constexpr uint8_t kStoCudaEntry = 0x10;  // st_other bit of kernels (not of device functions)

// The image so far as it is known to reach; has() checks a range before get() reads it.
struct Bytes {
    const uint8_t* p;
    uint64_t n;
    bool has(uint64_t off, uint64_t len) const { return off <= n && len <= n - off; }
    uint64_t get(uint64_t off, int len) const {  // caller checked has(off, len)
        uint64_t v = 0;
        for (int i = len - 1; i >= 0; --i) v = (v << 8) | p[off + i];
        return v;
    }
};
struct Section { uint64_t name, type, offset, size, link, entsize; };

inline bool fail(std::string* why, const std::string& reason) {
    if (why) *why = "cubin: " + reason;
    return false;
}
// A NUL-terminated string at `off` inside section `s`.
inline bool str_at(const Bytes& b, const Section& s, uint64_t off, std::string* out) {
    if (off >= s.size || !b.has(s.offset, s.size)) return false;
    const char* start = reinterpret_cast<const char*>(b.p + s.offset + off);
    const void* nul = std::memchr(start, 0, s.size - off);
    if (!nul) return false;
    out->assign(start, static_cast<const char*>(nul));
    return true;
}

// Fills k's parameters from the records of its .nv.info.<name> section.
inline bool read_params(const Bytes& b, const Section& s, CubinKernel* k, std::string* why) {
    if (!b.has(s.offset, s.size)) return fail(why, k->name + ": .nv.info out of the image");
    std::map<uint32_t, std::pair<uint32_t, uint32_t>> by_ordinal;  // ordinal -> offset, size
    int64_t cbank_bytes = -1;
    for (uint64_t at = s.offset, end = s.offset + s.size; at < end;) {
        if (end - at < 4) return fail(why, k->name + ": truncated .nv.info record");
        uint8_t format = b.p[at], attr = b.p[at + 1];
        uint64_t len = format == kSval ? b.get(at + 2, 2) : 0, data = at + 4;
        if (format < 1 || format > kSval) return fail(why, k->name + ": unknown .nv.info record");
        if (len > end - data) return fail(why, k->name + ": .nv.info record overruns");
        // KPARAM_INFO: u32 index, u16 ordinal, u16 offset, u32 with the size in bits 18-31.
        // Over 4 KiB of parameters in all gives KPARAM_INFO_V2 instead: the last u32 is the size.
        if (format == kSval && (attr == kKparamInfo || attr == kKparamInfoV2) && len >= 12) {
            uint32_t ordinal = uint32_t(b.get(data + 4, 2));
            uint32_t offset = uint32_t(b.get(data + 6, 2)), word = uint32_t(b.get(data + 8, 4));
            uint32_t size = attr == kKparamInfo ? (word >> 18) & 0x3fff : word;
            if (!by_ordinal.emplace(ordinal, std::make_pair(offset, size)).second)
                return fail(why, k->name + ": parameter ordinal given twice");
        } else if (format == kSval && attr == kParamCbank && len >= 8) {
            cbank_bytes = int64_t(b.get(data + 6, 2));  // u32 symbol, u16 offset, u16 size
        }
        at = data + len;
    }
    uint64_t next = 0;  // where the previous parameter ended
    for (const auto& [ordinal, place] : by_ordinal) {
        if (ordinal != k->param_sizes.size() || place.second == 0 || place.first < next)
            return fail(why, k->name + ": parameters have gaps or overlap");
        k->param_offsets.push_back(place.first);
        k->param_sizes.push_back(place.second);
        next = uint64_t(place.first) + place.second;
    }
    // The constant-bank size is the end of the last parameter (absent with no parameters).
    if (int64_t(next) != (cbank_bytes < 0 ? 0 : cbank_bytes))
        return fail(why, k->name + ": parameter sizes disagree with EIATTR_PARAM_CBANK");
    return true;
}
}  // namespace cubin_detail

// Parses an ELF64 little-endian cubin of which at most `available` bytes may be read (a
// file's size; the overload below, for cuModuleLoadData, which gets no length, allows
// 256 MiB). The ELF header says how far the image reaches; every later read stays inside
// that length. On failure returns false with a one-line reason in *why.
inline bool parse_cubin(const void* image, size_t available, CubinInfo* out, std::string* why) {
    using namespace cubin_detail;
    if (!out) return fail(why, "no output");
    *out = CubinInfo{};
    if (available < 64 || !is_elf(image)) return fail(why, "not an ELF image");
    Bytes b{static_cast<const uint8_t*>(image), 64};
    if (b.p[4] != 2 || b.p[5] != 1) return fail(why, "not ELF64 little-endian");
    if (b.get(18, 2) != 190) return fail(why, "e_machine is not EM_CUDA (190)");
    uint64_t phoff = b.get(32, 8), shoff = b.get(40, 8), flags = b.get(48, 4);
    uint64_t phentsize = b.get(54, 2), phnum = b.get(56, 2), shentsize = b.get(58, 2);
    uint64_t shnum = b.get(60, 2), shstrndx = b.get(62, 2);
    if (shnum == 0 || shentsize != 64 || shstrndx >= shnum)
        return fail(why, "bad section-header table");
    if (phnum != 0 && phentsize != 56) return fail(why, "bad program-header table");
    if (shoff > kMaxImage || phoff > kMaxImage) return fail(why, "header offsets over 256 MiB");
    uint64_t length = std::max<uint64_t>({64, shoff + shnum * 64, phoff + phnum * 56});
    if (length > kMaxImage) return fail(why, "image over 256 MiB");
    if (length > available) return fail(why, "truncated: headers end past the given bytes");
    b.n = length;  // the tables themselves lie within this much
    std::vector<Section> sec(shnum);
    for (uint64_t i = 0; i < shnum; ++i) {
        uint64_t h = shoff + i * 64;
        Section& s = sec[i];
        s = {b.get(h, 4), b.get(h + 4, 4), b.get(h + 24, 8), b.get(h + 32, 8),
             b.get(h + 40, 4), b.get(h + 56, 8)};
        if (s.offset > kMaxImage || s.size > kMaxImage)
            return fail(why, "section past 256 MiB");
        if (s.type != 8) length = std::max(length, s.offset + s.size);  // 8: SHT_NOBITS
    }
    for (uint64_t i = 0; i < phnum; ++i) {
        uint64_t h = phoff + i * 56, offset = b.get(h + 8, 8), filesz = b.get(h + 32, 8);
        if (offset > kMaxImage || filesz > kMaxImage) return fail(why, "segment over 256 MiB");
        length = std::max(length, offset + filesz);
    }
    if (length > kMaxImage) return fail(why, "image over 256 MiB");
    if (length > available) return fail(why, "truncated: sections end past the given bytes");
    b.n = length;
    out->image_bytes = size_t(length);
    out->sm = unsigned(b.p[8] >= 8 ? (flags >> 8) & 0xff : flags & 0xff);  // EI_ABIVERSION

    std::map<std::string, uint64_t> by_name;
    const Section* symtab = nullptr;
    for (uint64_t i = 0; i < shnum; ++i) {
        std::string name;
        if (!str_at(b, sec[shstrndx], sec[i].name, &name)) return fail(why, "bad section name");
        by_name[name] = i;
        if (sec[i].type == 2) symtab = &sec[i];  // SHT_SYMTAB
    }
    if (!symtab) return fail(why, "no symbol table");
    if (symtab->entsize != 24 || symtab->link >= shnum || !b.has(symtab->offset, symtab->size))
        return fail(why, "bad symbol table");
    for (uint64_t at = symtab->offset; at + 24 <= symtab->offset + symtab->size; at += 24) {
        uint64_t info = b.p[at + 4], other = b.p[at + 5], shndx = b.get(at + 6, 2);
        if ((info & 0xf) != 2 || !(other & kStoCudaEntry) || shndx >= shnum) continue;
        CubinKernel k;  // STT_FUNC marked as an entry: a kernel, if its section agrees
        std::string text;
        if (!str_at(b, sec[symtab->link], b.get(at, 4), &k.name))
            return fail(why, "bad symbol name");
        if (!str_at(b, sec[shstrndx], sec[shndx].name, &text) || text != ".text." + k.name)
            continue;
        auto nv_info = by_name.find(".nv.info." + k.name);
        if (nv_info == by_name.end()) return fail(why, k.name + ": no .nv.info." + k.name);
        if (!read_params(b, sec[nv_info->second], &k, why)) return false;
        out->kernels.push_back(std::move(k));
    }
    return true;
}

// For a pointer alone: the header is trusted for the length, up to 256 MiB.
inline bool parse_cubin(const void* image, CubinInfo* out, std::string* why) {
    return parse_cubin(image, size_t(cubin_detail::kMaxImage), out, why);
}

}  // namespace dkemu
