// CUDA kernels of the packed `gptq` format, reading the GPU tile layout ("tc" layout).
//
// The layout, its repack from the CPU format and its NumPy reference live in kernels/cuda.py
// (module docstring); the CPU format itself is defined by kernels/reference.py. Summary:
//
//   K is padded and (for act-order) permuted into K' positions: group g occupies
//   [g*GK, g*GK + count_g), GK = 16 * gst, padding (perm = -1) after; K' is a multiple of 128.
//   A "unit" is 128 positions of K' = 8 k-steps of one mma.m16n8k16; an "n-tile" is 16 outputs.
//   For each (n-tile, unit) a warp reads 32 lanes x 8*BITS bytes, contiguous, in 16-byte vectors
//   (3-bit: one 16-byte and one 8-byte vector). Lane l = 4*g + t holds, for each k-step, the 8
//   codes of the mma A fragment of W^T (rows n, columns k): pairs P0 = (n=g, j=0,1),
//   P1 = (n=g+8, j=0,1), P2 = (n=g, j=2,3), P3 = (n=g+8, j=2,3), where the 4 K' positions j of
//   lane t in k-step ts are  kp = u*128 + (ts/TS)*S + t*(S/4) + (ts%TS)*4 + j,
//   S = 16*min(gst, 8) ("span"), TS = S/16. Each pair decodes with one shift and one LOP3 to a
//   half2 (1024 + q): the fp16 magic-number trick.
//   sz [G', N'] uint32 = half2(scale, 1024 + zero); W = scale * ((1024 + q) - (1024 + z)).
//
// Kernels (templates instantiated by name from kernels/cuda.py through NVRTC; this file holds the
// shared helpers, gptq_small.cu the fused small-M kernels, gptq_cuda_repack.cu the load-time and
// prefill ones; they are compiled as one source, in that order, with gptq_mma.cu):
//   qgemm_small<BITS, MT, NT, GSTC, XS, OCC, PD>  y[M, N] = x[M, K] @ W + bias, M <= 8*MT per grid
//       row: one block = 8 warps x (16*NT outputs, all of K); warps split the K' units (warp w
//       takes units w, w+8, ...), stream their weights with no-L1-allocate 16-byte loads, PD
//       units ahead in registers (x staged once per block in shared memory with XS = 1; OCC =
//       blocks per SM the registers are capped for; with XS = 1, MT = 1 and NT > 1 a unit's
//       n-tiles are done one after another, each n-tile's next unit loaded as soon as it is done);
//       tensor-core mma.m16n8k16 (fp16 in, fp32 accumulate) per k-step with W^T as A and
//       x^T as B (so M=1..8 wastes only the B columns), group scale applied in fp32 when a group
//       ends; the 8 warps' partial tiles are added through shared memory in a fixed order
//       (deterministic results); bias + cast in the epilogue. qgemm_small_pdl / qgemm_split_pdl:
//       the same for programmatic dependent launch (kernels/launch.py): a block lets the next
//       kernel launch at its start and loads its first weights before it waits for the previous
//       kernel (pdl_wait) and reads x.
//   qgemm_split<BITS, NT, GSTC, XS, OCC, PD, CS>  the same for M <= 8 with K split over a
//       cluster of CS blocks (more blocks in flight for small N); partial tiles are added by
//       rank 0 through distributed shared memory, in rank order. Measured slower than
//       qgemm_small on an H100 for every benchmark shape: on request only (docs/gpu-results.md).
//   dequant_tc<BITS, GSTC>  W^T[N, K'] fp16 (K' order) for the prefill path (cuBLAS).
//   prep_x  x -> fp16 in K' order (act-order gather, fp32 cast) when the fused kernel cannot stage it.
//   repack_tc<BITS>, repack_sz  the CPU format -> tc layout, on the GPU.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define WARPS 8
#define THREADS (WARPS * 32)
#define MAGIC 0x64006400u  // half2(1024, 1024)
#define SZ_PAD 0x64000000u // half2(scale 0, 1024 + zero 0)

template <int BITS> struct Fmt;
template <> struct Fmt<2> { static constexpr int WPU = 4; };
template <> struct Fmt<3> { static constexpr int WPU = 6; };
template <> struct Fmt<4> { static constexpr int WPU = 8; };
template <> struct Fmt<8> { static constexpr int WPU = 16; };

// ---------------------------------------------------------------------------------------------
// small helpers (inline PTX: no cuda_fp16.h needed under NVRTC)

// Streaming 16- / 8-byte loads (no L1 allocation): read-only (.nc) by default; PLAIN = ordinary
// loads, which ptxas keeps ahead of a later release-ordered mbarrier arrive, where it is free to
// sink .nc ones (load_unit's PLAIN).
template <bool PLAIN = false>
__device__ __forceinline__ uint4 ld_stream4(const u32* p) {
    uint4 r;
    if constexpr (PLAIN)
        asm volatile("ld.global.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    else
        asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}
template <bool PLAIN = false>
__device__ __forceinline__ uint2 ld_stream2(const u32* p) {
    uint2 r;
    if constexpr (PLAIN) asm volatile("ld.global.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
    else asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
    return r;
}
// Programmatic dependent launch (sm_90+; no-ops on older GPUs and where the launch did not allow
// it, kernels/launch.py): pdl_wait() blocks until the previous kernel of the stream has completed
// and its writes are visible, so a kernel launched early reads nothing that kernel may write before
// it (only weights); pdl_trigger() lets the next such kernel start launching. pdl_after_wait(p)
// returns p through a volatile asm issued after the wait: loads through it (the non-volatile
// ld.global.nc asm below, which the compiler may otherwise hoist) cannot move above the wait.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
template <class T>
__device__ __forceinline__ T* pdl_after_wait(T* p) {
    asm volatile("mov.b64 %0, %0;" : "+l"(p)::"memory");
    return p;
}
__device__ __forceinline__ u32 ld_nc(const u32* p) {
    u32 r;
    asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ uint2 ld_nc2(const void* p) {
    uint2 r;
    asm("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
    return r;
}
__device__ __forceinline__ uint4 ld_nc4(const void* p) {
    uint4 r;
    asm("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}
__device__ __forceinline__ u16 ld_nc_u16(const u16* p) {
    u16 r;
    asm("ld.global.nc.u16 %0, [%1];" : "=h"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ float ld_nc_f32(const float* p) {
    float r;
    asm("ld.global.nc.f32 %0, [%1];" : "=f"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ float h2f(u32 bits16) {
    float f;
    u16 h = (u16)bits16;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ u32 f2h2(float lo, float hi) {  // half2(lo, hi), lo in the low 16 bits
    u32 d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}
// (a & MASK) | MAGIC in one LOP3 (the compiler alone emits two: LOP3 takes one immediate).
template <u32 MASK>
__device__ __forceinline__ u32 and_or_magic(u32 a) {
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(MASK), "n"(MAGIC));
    return d;
}
__device__ __forceinline__ u32 prmt(u32 a, u32 sel) {
    u32 d;
    asm("prmt.b32 %0, %1, %1, %2;" : "=r"(d) : "r"(a), "r"(sel));
    return d;
}
__device__ __forceinline__ void mma16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------------------------------------
// tc layout: loading one lane's words of one (n-tile, unit), and decoding one k-step

// PLAIN: ordinary loads instead of read-only ones (ld_stream4), for a prefetch that ptxas must not
// sink towards its first use (kernels/gptq_wgmma.cu).
template <int BITS, bool PLAIN = false>
__device__ __forceinline__ void load_unit(u32 (&w)[Fmt<BITS>::WPU], const u32* __restrict__ base, int lane) {
    if constexpr (BITS == 3) {
        const uint4 v = ld_stream4<PLAIN>(base + lane * 4);
        const uint2 h = ld_stream2<PLAIN>(base + 128 + lane * 2);
        w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w; w[4] = h.x; w[5] = h.y;
    } else {
#pragma unroll
        for (int c = 0; c < Fmt<BITS>::WPU / 4; ++c) {
            const uint4 v = ld_stream4<PLAIN>(base + c * 128 + lane * 4);
            w[4 * c] = v.x; w[4 * c + 1] = v.y; w[4 * c + 2] = v.z; w[4 * c + 3] = v.w;
        }
    }
}

// The same words from a copy of the unit in shared memory (the prefill GEMMs' pipeline stages).
template <int BITS>
__device__ __forceinline__ void lds_unit(u32 (&w)[Fmt<BITS>::WPU], const u32* base, int lane) {
    if constexpr (BITS == 3) {
        const uint4 v = *reinterpret_cast<const uint4*>(base + lane * 4);
        const uint2 h = *reinterpret_cast<const uint2*>(base + 128 + lane * 2);
        w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w; w[4] = h.x; w[5] = h.y;
    } else {
#pragma unroll
        for (int c = 0; c < Fmt<BITS>::WPU / 4; ++c) {
            const uint4 v = *reinterpret_cast<const uint4*>(base + c * 128 + lane * 4);
            w[4 * c] = v.x; w[4 * c + 1] = v.y; w[4 * c + 2] = v.z; w[4 * c + 3] = v.w;
        }
    }
}

// half2(1024 + q_low, 1024 + q_high) of pair pr (0..3) of k-step ts (0..7); ts, pr compile-time.
template <int BITS>
__device__ __forceinline__ u32 magic_pair(const u32 (&w)[Fmt<BITS>::WPU], int ts, int pr) {
    if constexpr (BITS == 4) {
        return and_or_magic<0x000F000Fu>(w[ts] >> (4 * pr));
    } else if constexpr (BITS == 2) {
        const int p = (ts & 1) * 4 + pr;
        return and_or_magic<0x00030003u>(w[ts >> 1] >> (2 * p));
    } else if constexpr (BITS == 8) {
        return and_or_magic<0x00FF00FFu>(w[2 * ts + (pr >> 1)] >> (8 * (pr & 1)));
    } else {  // 3 bits: 32 codes (16 pairs) in 3 words; pairs 0..14 five to a word, pair 15 in bits 15/31
        const int tr = ts >> 2, p = (ts & 3) * 4 + pr;
        if (p < 15) return and_or_magic<0x00070007u>(w[3 * tr + p / 5] >> (3 * (p % 5)));
        return ((w[3 * tr] >> 15) & 0x00010001u) | ((w[3 * tr + 1] >> 14) & 0x00020002u) |
               and_or_magic<0x00040004u>(w[3 * tr + 2] >> 13);
    }
}

// Code placement, the inverse of magic_pair (used by the repack): word index and bit shift of
// bit `b` of the code of (k-step ts, pair pr, half hi). Returns the shift; *word gets the index.
template <int BITS>
__device__ __forceinline__ int code_bit_pos(int ts, int pr, int hi, int b, int* word) {
    if constexpr (BITS == 4) { *word = ts; return 4 * (pr + 4 * hi) + b; }
    else if constexpr (BITS == 2) { const int p = (ts & 1) * 4 + pr; *word = ts >> 1; return 2 * (p + 8 * hi) + b; }
    else if constexpr (BITS == 8) { *word = 2 * ts + (pr >> 1); return 8 * ((pr & 1) + 2 * hi) + b; }
    else {
        const int tr = ts >> 2, p = (ts & 3) * 4 + pr;
        if (p < 15) { *word = 3 * tr + p / 5; return 3 * (p % 5) + 16 * hi + b; }
        *word = 3 * tr + b;
        return 15 + 16 * hi;
    }
}

// K' position of j = 0 of lane t in k-step ts of unit u (span S = 16*min(gst,8)).
template <int S>
__device__ __forceinline__ int kpos(int u, int ts, int t) {
    constexpr int TS = S / 16;
    return u * 128 + (ts / TS) * S + t * (S / 4) + (ts % TS) * 4;
}
