// The fused small-M kernels (qgemm_small, qgemm_split; see gptq_cuda.cu's header for the layout
// and what each kernel does). Compiled together with gptq_cuda.cu (appended to it: its helpers are used).

// ---------------------------------------------------------------------------------------------
// fused small-M kernel

template <int BITS, int MT, int NT, int GSTC, int OCC>
struct SmallCfg {
    static constexpr int WPU = Fmt<BITS>::WPU;
    static constexpr int NGU = GSTC < 8 ? 8 / GSTC : 1;  // groups per unit
    static constexpr int S = GSTC < 8 ? 16 * GSTC : 128;  // span
    // MT <= 2: integer (q - z) fragments, fp32 scale applied per group (exact products);
    // MT >= 4: fragments scaled to fp16 (q - z) * s before the mma, which frees the per-group
    // accumulators (registers) when many m-tiles share each decoded fragment.
    static constexpr bool SCALE_A = MT >= 4;
    static constexpr int SLOT = NT * (WPU + 2 * NGU);  // registers per prefetched unit
    // Default units in flight per warp: about 40 registers of prefetch at 2 blocks per SM, fewer
    // at OCC = 3 or 4 blocks per SM (more warps, each with fewer units ahead); MT >= 4: 2.
    static constexpr int BUDGET = OCC >= 4 ? 20 : OCC == 3 ? 30 : 40;
    static constexpr int PD0 = BUDGET / SLOT;
    static constexpr int PD = MT >= 4 ? 2 : (PD0 < 2 ? 2 : (PD0 > 6 ? 6 : PD0));
};

// 16-byte chunk c of a row of staged x is stored at chunk swz(c): lanes t = 0..3 of a k-step
// read chunks 64 bytes apart, which would hit the same banks for t and t + 2. swz keeps bits
// >= 4 (the unit), so swz(16*u + c) = 16*u + swz(c) for c < 16.
__device__ __forceinline__ int swz(int c) { return c ^ (((c >> 3) & 1) << 1); }

// Thread-block clusters (sm_90): rank in the cluster, a full cluster barrier (release/acquire:
// shared-memory writes before it are visible to every CTA of the cluster after it), and a load
// from the shared memory of CTA `rank` at the address `p` has in this CTA.
__device__ __forceinline__ u32 cluster_ctarank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ void cluster_sync_all() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ float ld_cluster_f32(const float* p, u32 rank) {
    u32 a, ra;
    float v;
    asm volatile("{\n\t.reg .u64 t;\n\tcvta.to.shared.u64 t, %1;\n\tcvt.u32.u64 %0, t;\n\t}" : "=r"(a) : "l"(p));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(ra) : "memory");
    return v;
}

// half2(-(64 + z), -(64 + z)) for the 4-bit zero z of a sz word (bits 16..19): fp16 64 + z is
// 0x5400 | z << 4 (ulp 1/16 at 64).
__device__ __forceinline__ u32 neg64z(u32 szw) {
    const u32 h = 0xD400u | (((szw >> 16) & 0xFu) << 4);
    return h | (h << 16);
}

// A fragment (W^T, integer q - z in fp16) of k-step ts: a[pr] for the four pairs. zz0 / zz1:
// half2(1024 + z) of rows g / g + 8; nz1 = neg64z of row g + 8 (4 bits only).
// 4 bits: the two odd pairs are taken unshifted as 1024 + 16 q (mask 0x00F000F0) and finished
// with one fma: (1024 + 16 q) / 16 - (64 + z) = q - z, exact; one shift per word instead of three.
template <int BITS>
__device__ __forceinline__ void decode_a(u32 (&a)[4], const u32 (&w)[Fmt<BITS>::WPU], int ts, u32 zz0, u32 zz1,
                                         u32 nz1) {
    if constexpr (BITS == 4) {
        const u32 lo = w[ts], hi = w[ts] >> 8;
        a[0] = hsub2(and_or_magic<0x000F000Fu>(lo), zz0);
        a[1] = hfma2(and_or_magic<0x00F000F0u>(lo), 0x2C002C00u, nz1);  // half2(1/16, 1/16)
        a[2] = hsub2(and_or_magic<0x000F000Fu>(hi), zz0);
        a[3] = hfma2(and_or_magic<0x00F000F0u>(hi), 0x2C002C00u, nz1);
    } else if constexpr (BITS == 3) {
        // Codes at bits 3 and 6 of a word are taken unshifted as 1024 + 8 q and 1024 + 64 q and
        // finished with one fma against -(128 + z) = 896 - (1024 + z) and -(16 + z) = 1008 - (1024 + z);
        // those at 9 and 12 are at 0 and 3 of one shift by 9. One shift per word instead of four.
        const u32 n3[2] = {hsub2(0x63006300u, zz0), hsub2(0x63006300u, zz1)};  // half2(896, 896) - zz
        const u32 n6[2] = {hsub2(0x63E063E0u, zz0), hsub2(0x63E063E0u, zz1)};  // half2(1008, 1008) - zz
#pragma unroll
        for (int pr = 0; pr < 4; ++pr) {
            const int p = (ts & 3) * 4 + pr, r = pr & 1;
            const u32 zz = r ? zz1 : zz0;
            if (p == 15) {
                a[pr] = hsub2(magic_pair<BITS>(w, ts, pr), zz);
                continue;
            }
            const u32 word = w[3 * (ts >> 2) + p / 5], f = p % 5;
            const u32 v = f >= 3 ? word >> 9 : word;
            if (f == 0 || f == 3) a[pr] = hsub2(and_or_magic<0x00070007u>(v), zz);
            else if (f == 1 || f == 4) a[pr] = hfma2(and_or_magic<0x00380038u>(v), 0x30003000u, n3[r]);  // x 1/8
            else a[pr] = hfma2(and_or_magic<0x01C001C0u>(v), 0x24002400u, n6[r]);                       // x 1/64
        }
    } else {
#pragma unroll
        for (int pr = 0; pr < 4; ++pr) a[pr] = hsub2(magic_pair<BITS>(w, ts, pr), (pr & 1) ? zz1 : zz0);
    }
}

// n-tile order of a unit with NT > 1. "n-tile outer": all k-steps of n-tile 0, then of n-tile 1,
// ..., the next unit's words of an n-tile loaded as soon as that n-tile is done, so a warp's next
// loads overlap the rest of its compute; "k-step outer": every n-tile per k-step (one x fragment
// for all), the next unit loaded after the whole unit. SMALL_NT_OUTER = -1 (default): n-tile
// outer for staged x and MT = 1 (H100, 3-bit 8192 x 28672, M = 1: 38.6 -> 37.8 us; with x read
// from global memory, which preloads it per unit, k-step outer is faster: 4-bit 44.8 against
// 48.1 us; docs/gpu-results.md, tenth session); 0 / 1: always k-step / n-tile outer (probes).
// Probes (tools/probe_gemv.py compiles with -D...): SMALL_ABLATE = 1 skips the weight decode (raw
// words into the mma), 2 the scale/zero loads (constants); both for timing only.
#ifndef SMALL_NT_OUTER
#define SMALL_NT_OUTER -1
#endif
#ifndef SMALL_ABLATE
#define SMALL_ABLATE 0
#endif
// Where a block of a *_pdl kernel lets the next kernel launch (programmatic dependent launch;
// kernels/launch.py): 0 at its start (the default), 1 after its k-loop, 2 never (implicitly when
// it exits). Probes.
#ifndef SMALL_PDL_TRIGGER
#define SMALL_PDL_TRIGGER 0
#endif

// A compile-time int (loops over register-array indices).
template <int V>
struct IC {
    static constexpr int value = V;
};
template <int I, int N, class F>
__device__ __forceinline__ void static_for(F&& f) {
    if constexpr (I < N) {
        f(IC<I>{});
        static_for<I + 1, N>(f);
    }
}

// Static shared memory of the reduction (bytes; kernels/cuda.py mirrors it): MT <= 2: every
// warp's partial tile at once (one barrier); MT >= 4: one tile, warps added in turn.
template <int MT, int NT, int CS>
struct RedCfg {
    static constexpr int RM = MT * 8, RN = NT * 16;
    static constexpr int WR = MT <= 2 ? WARPS : 1;
};

// x:    [M, ldx] row-major, fp16 (x_f32 = 0) or fp32 (x_f32 = 1).
//       XS = 1: staged once per block into dynamic shared memory, M rows of Kp/8 + 1 16-byte
//       chunks, K' order: column perm[kp] (gather = 1; perm < 0 -> 0) or kp (gather = 0;
//       kp >= Kx -> 0; then fp16 needs ldx % 8 == 0 and x 16-byte aligned); only the chunks of
//       the block's own K' units are written (and read). Needs M <= 8*MT (one grid row). Lanes
//       of rows >= M read row 0: their mma columns are never stored.
//       XS = 0 (x read from global memory): fp16 in K' order only (x_f32 = gather = 0; the host
//       runs prep_x first when needed), columns >= Kx read as 0, ldx % 8 == 0, 16-byte aligned.
// qw:   tc layout words, (N'/16) n-tiles x NU units x 32 lanes x WPU words.
// sz:   [G', N'] half2(scale, 1024 + zero).    perm: [K'] int32 (XS, gather = 1 only).
// bias: [N] fp32 or null.   y: [M, ldy] fp16 (y_f32 = 0) or fp32, row-major.
// upg:  units per group (GSTC == 8: group of unit u is u / upg; ushift = log2(upg) or -1).
// OCC:  blocks per SM the registers are capped for (2: <= 128, 3: <= 80, 4: <= 64 registers).
// PDX:  units in flight per warp (0: SmallCfg's default for OCC).
// CS:   split-K over a cluster of CS blocks (MT = 1): block rank r of a cluster takes the K'
//       units [NU*r/CS, NU*(r+1)/CS); rank 0 adds the CS partial tiles, in rank order, through
//       distributed shared memory (deterministic).
// PDL:  built for programmatic dependent launch (the *_pdl kernels, kernels/launch.py): the block
//       lets the next kernel launch (SMALL_PDL_TRIGGER) and waits for the previous one after its
//       first weight loads, before it reads x. The plain kernels have neither instruction.
// Grid: (N' / (16*NT) * CS, ceil(M / (8*MT))); block: THREADS; dynamic shared memory (XS):
// M * (Kp + 8) * 2 bytes.
template <int BITS, int MT, int NT, int GSTC, int XS, int OCC, int PDX, int CS, bool PDL>
__device__ __forceinline__ void small_body(const void* __restrict__ x, int ldx, int Kx, int x_f32, int gather,
                                           const u32* __restrict__ qw, const u32* __restrict__ sz,
                                           const int* __restrict__ perm, const float* __restrict__ bias,
                                           void* __restrict__ y, int ldy, int y_f32, int M, int N, int Np, int NU,
                                           int upg, int ushift) {
    using C = SmallCfg<BITS, MT, NT, GSTC, OCC>;
    using R = RedCfg<MT, NT, CS>;
    constexpr int WPU = C::WPU, NGU = C::NGU, S = C::S;
    constexpr int PD = PDX > 0 ? PDX : C::PD;
    constexpr bool SCALE_A = C::SCALE_A;
    constexpr bool XPRE = MT <= 2 && XS == 0;  // x of a whole unit preloaded to registers (global)
    constexpr int RM = R::RM, RN = R::RN;
    static_assert(!XS || MT <= 2, "staged x is for MT <= 2");
    static_assert(CS == 1 || MT == 1, "split-K clusters are for MT = 1");
    extern __shared__ uint4 xs_dyn[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int rank = CS > 1 ? (int)cluster_ctarank() : 0;
    const int nt0 = (CS > 1 ? (int)blockIdx.x / CS : (int)blockIdx.x) * NT;
    const int m0 = blockIdx.y * (8 * MT);
    const int rs = NU * 16 + 1;  // staged x: row stride in 16-byte chunks
    // K' units of this block: [u_lo, u_hi).
    const int u_lo = CS > 1 ? (int)(((long long)NU * rank) / CS) : 0;
    const int u_hi = CS > 1 ? (int)(((long long)NU * (rank + 1)) / CS) : NU;

    float o[NT][MT][4];                              // scaled sums
    float c[SCALE_A ? 1 : NT][SCALE_A ? 1 : MT][4];  // current group's integer-weight sums
#pragma unroll
    for (int a = 0; a < NT; ++a)
#pragma unroll
        for (int b = 0; b < MT; ++b)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[a][b][e] = 0.f;
#pragma unroll
    for (int a = 0; a < (SCALE_A ? 1 : NT); ++a)
#pragma unroll
        for (int b = 0; b < (SCALE_A ? 1 : MT); ++b)
#pragma unroll
            for (int e = 0; e < 4; ++e) c[a][b][e] = 0.f;

    u32 wb[PD][NT][WPU];
    u32 sb[PD][NT][NGU][2];

    // Unit u (of group row gu) of n-tile nt0 + nt: its words and scale/zero words.
    auto load_tile = [&](u32 (&w)[WPU], u32 (&sw)[NGU][2], int u, int gu, int nt) {
        load_unit<BITS>(w, qw + ((size_t)(nt0 + nt) * NU + u) * (32 * WPU), lane);
        const u32* szp = sz + (size_t)gu * Np + (nt0 + nt) * 16 + g;
#pragma unroll
        for (int gi = 0; gi < NGU; ++gi) {
            if constexpr (SMALL_ABLATE == 2) {
                sw[gi][0] = 0x64003C00u; sw[gi][1] = 0x64003C00u;
            } else {
                sw[gi][0] = ld_nc(szp + (size_t)gi * Np);
                sw[gi][1] = ld_nc(szp + (size_t)gi * Np + 8);
            }
        }
    };
    auto group_of = [&](int u) { return GSTC < 8 ? u * NGU : (ushift >= 0 ? u >> ushift : u / upg); };
    auto load_slot = [&](u32 (&ws)[NT][WPU], u32 (&ss)[NT][NGU][2], int u) {
        const int gu = group_of(u);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) load_tile(ws[nt], ss[nt], u, gu, nt);
    };

    if constexpr (PDL && SMALL_PDL_TRIGGER == 0) pdl_trigger();
    // Weights of the first PD units of this warp first: their DRAM latency overlaps the staging
    // and, PDL kernels launched early, the end of the previous kernel, whose output x may be:
    // only after pdl_wait() is x read (through a pointer laundered after the wait) or y written.
#pragma unroll
    for (int i = 0; i < PD; ++i) {
        const int u = u_lo + warp + i * WARPS;
        if (u < u_hi) load_slot(wb[i], sb[i], u);
    }
    if constexpr (PDL) {
        pdl_wait();
        x = pdl_after_wait(x);
    }

    // Staged x: per m-tile, this lane's row (row 0 for rows >= M); per k-step pair (or k-step
    // for S = 16) the swizzled chunk offset within a unit, the same for every unit.
    const uint4* xrow[MT];
    int xoff[S >= 32 ? 4 : 8];
    if constexpr (XS != 0) {
        const int c_lo = u_lo * 16, cn = (u_hi - u_lo) * 16;
        const u16* x16 = reinterpret_cast<const u16*>(x);
        const float* x32 = reinterpret_cast<const float*>(x);
        for (int m = 0; m < M; ++m) {
#pragma unroll 4
            for (int i = threadIdx.x; i < cn; i += THREADS) {
                const int ch = c_lo + i, kp = ch * 8;
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (!gather && !x_f32) {
                    if (kp < Kx) v = ld_nc4(x16 + (size_t)m * ldx + kp);
                } else {
                    u32 h[8];
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        const int k = gather ? perm[kp + j] : (kp + j < Kx ? kp + j : -1);
                        h[j] = 0u;
                        if (k >= 0) h[j] = x_f32 ? f2h(x32[(size_t)m * ldx + k]) : x16[(size_t)m * ldx + k];
                    }
                    v = make_uint4(h[0] | (h[1] << 16), h[2] | (h[3] << 16), h[4] | (h[5] << 16), h[6] | (h[7] << 16));
                }
                xs_dyn[m * rs + swz(ch)] = v;
            }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const int m = m0 + mt * 8 + g;
            xrow[mt] = xs_dyn + (m < M ? m : 0) * rs;
        }
#pragma unroll
        for (int i = 0; i < (S >= 32 ? 4 : 8); ++i) {
            const int kp = kpos<S>(0, S >= 32 ? 2 * i : i, t);
            xoff[i] = swz(kp >> 3) * 2 + (S >= 32 ? 0 : (kp >> 2) & 1);  // in 8-byte units
        }
        __syncthreads();
    }

    // Unit u: every n-tile (ntc = IC<-1>), or only n-tile ntc::value.
    auto compute_unit = [&](const u32 (&ws)[NT][WPU], const u32 (&ss)[NT][NGU][2], int u, auto ntc) {
        constexpr int NT_LO = decltype(ntc)::value < 0 ? 0 : decltype(ntc)::value;
        constexpr int NT_HI = decltype(ntc)::value < 0 ? NT : decltype(ntc)::value + 1;
        u32 xr[XPRE ? MT : 1][16];
        if constexpr (XPRE) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int m = m0 + mt * 8 + g;
                const u16* xr0 = reinterpret_cast<const u16*>(x) + (size_t)(m < M ? m : 0) * ldx;
                if constexpr (S >= 32) {
#pragma unroll
                    for (int ts = 0; ts < 8; ts += 2) {
                        const int kp = kpos<S>(u, ts, t);
                        uint4 v = make_uint4(0u, 0u, 0u, 0u);
                        if (m < M && kp < Kx) v = ld_nc4(xr0 + kp);
                        xr[mt][2 * ts] = v.x; xr[mt][2 * ts + 1] = v.y; xr[mt][2 * ts + 2] = v.z; xr[mt][2 * ts + 3] = v.w;
                    }
                } else {
#pragma unroll
                    for (int ts = 0; ts < 8; ++ts) {
                        const int kp = kpos<S>(u, ts, t);
                        uint2 v = make_uint2(0u, 0u);
                        if (m < M && kp < Kx) v = ld_nc2(xr0 + kp);
                        xr[mt][2 * ts] = v.x; xr[mt][2 * ts + 1] = v.y;
                    }
                }
            }
        }
        u32 xq[MT][4];  // staged x of the current k-step pair
#pragma unroll
        for (int ts = 0; ts < 8; ++ts) {
            const int gi = GSTC < 8 ? ts / GSTC : 0;
            const int kp = kpos<S>(u, ts, t);
            if constexpr (XS != 0) {
                if (S < 32 || (ts & 1) == 0) {
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        const uint2* base = reinterpret_cast<const uint2*>(xrow[mt] + u * 16);
                        if constexpr (S >= 32) {
                            const uint4 v = *reinterpret_cast<const uint4*>(base + xoff[ts >> 1]);
                            xq[mt][0] = v.x; xq[mt][1] = v.y; xq[mt][2] = v.z; xq[mt][3] = v.w;
                        } else {
                            const uint2 v = base[xoff[ts]];
                            xq[mt][0] = v.x; xq[mt][1] = v.y;
                        }
                    }
                }
            }
            // B fragments (x) of m-tile mt for this k-step.
            auto frag_b = [&](int mt, u32& b0, u32& b1) {
                if constexpr (XS != 0) {
                    const int h = (S >= 32 && (ts & 1)) ? 2 : 0;
                    b0 = xq[mt][h]; b1 = xq[mt][h + 1];
                } else if constexpr (XPRE) {
                    b0 = xr[mt][2 * ts]; b1 = xr[mt][2 * ts + 1];
                } else {
                    const int m = m0 + mt * 8 + g;
                    b0 = 0u; b1 = 0u;
                    if (m < M && kp < Kx) {
                        const uint2 v = ld_nc2(reinterpret_cast<const u16*>(x) + (size_t)m * ldx + kp);
                        b0 = v.x; b1 = v.y;
                    }
                }
            };
#pragma unroll
            for (int nt = NT_LO; nt < NT_HI; ++nt) {
                const u32 zz0 = prmt(ss[nt][gi][0], 0x3232u), zz1 = prmt(ss[nt][gi][1], 0x3232u);
                u32 a[4];
                if constexpr (SMALL_ABLATE == 1) {
#pragma unroll
                    for (int pr = 0; pr < 4; ++pr) a[pr] = ws[nt][(ts * 4 + pr) % WPU] ^ zz0;
                } else {
                    decode_a<BITS>(a, ws[nt], ts, zz0, zz1, BITS == 4 ? neg64z(ss[nt][gi][1]) : 0u);
                }
                if constexpr (SCALE_A) {
                    const u32 sc0 = prmt(ss[nt][gi][0], 0x1010u), sc1 = prmt(ss[nt][gi][1], 0x1010u);
#pragma unroll
                    for (int pr = 0; pr < 4; ++pr) a[pr] = hmul2(a[pr], (pr & 1) ? sc1 : sc0);
                }
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    u32 b0, b1;
                    frag_b(mt, b0, b1);
                    if constexpr (SCALE_A) mma16816(o[nt][mt], a, b0, b1);
                    else mma16816(c[nt][mt], a, b0, b1);
                }
            }
            if constexpr (!SCALE_A) {
                if ((GSTC < 8 && (ts + 1) % GSTC == 0) || (GSTC == 8 && ts == 7)) {
#pragma unroll
                    for (int nt = NT_LO; nt < NT_HI; ++nt) {
                        const float s0 = h2f(ss[nt][gi][0]), s1 = h2f(ss[nt][gi][1]);
#pragma unroll
                        for (int mt = 0; mt < MT; ++mt) {
                            o[nt][mt][0] += s0 * c[nt][mt][0]; o[nt][mt][1] += s0 * c[nt][mt][1];
                            o[nt][mt][2] += s1 * c[nt][mt][2]; o[nt][mt][3] += s1 * c[nt][mt][3];
                            c[nt][mt][0] = 0.f; c[nt][mt][1] = 0.f; c[nt][mt][2] = 0.f; c[nt][mt][3] = 0.f;
                        }
                    }
                }
            }
        }
    };

    for (int ub = u_lo + warp; ub < u_hi; ub += PD * WARPS) {
#pragma unroll
        for (int i = 0; i < PD; ++i) {
            const int u = ub + i * WARPS;
            if (u < u_hi) {
                const int un = u + PD * WARPS;
                if constexpr (NT > 1 && (SMALL_NT_OUTER == 1 || (SMALL_NT_OUTER < 0 && XS != 0 && MT == 1))) {
                    const int gn = group_of(un);
                    static_for<0, NT>([&](auto ntc) {
                        constexpr int nt = decltype(ntc)::value;
                        compute_unit(wb[i], sb[i], u, ntc);
                        if (un < u_hi) load_tile(wb[i][nt], sb[i][nt], un, gn, nt);
                    });
                } else {
                    compute_unit(wb[i], sb[i], u, IC<-1>{});
                    if (un < u_hi) load_slot(wb[i], sb[i], un);
                }
            }
        }
    }

    if constexpr (PDL && SMALL_PDL_TRIGGER == 1) pdl_trigger();

    auto store = [&](int ml, int nl, float v) {
        const int m = m0 + ml, n = nt0 * 16 + nl;
        if (n < N) {
            v += bias ? bias[n] : 0.f;
            if (y_f32) reinterpret_cast<float*>(y)[(size_t)m * ldy + n] = v;
            else reinterpret_cast<u16*>(y)[(size_t)m * ldy + n] = f2h(v);
        }
    };
    const int rows = M - m0 < RM ? M - m0 : RM;  // rows of this grid row that exist (>= 1)

    // Reduce the 8 warps' partial tiles in warp order (deterministic): red[w][m_local][n_local].
    __shared__ float red[R::WR][RM][RN];
    if constexpr (R::WR > 1) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                float* r0 = &red[warp][mt * 8 + 2 * t][nt * 16 + g];
                float* r1 = &red[warp][mt * 8 + 2 * t + 1][nt * 16 + g];
                r0[0] = o[nt][mt][0]; r0[8] = o[nt][mt][2]; r1[0] = o[nt][mt][1]; r1[8] = o[nt][mt][3];
            }
        __syncthreads();
        __shared__ float part[CS > 1 ? RM * RN : 1];
        for (int i = threadIdx.x; i < rows * RN; i += THREADS) {
            const int ml = i / RN, nl = i - ml * RN;
            float v = 0.f;
#pragma unroll
            for (int w = 0; w < WARPS; ++w) v += red[w][ml][nl];
            if constexpr (CS > 1) part[i] = v;
            else store(ml, nl, v);
        }
        if constexpr (CS > 1) {
            cluster_sync_all();  // every block's partial tile written
            if (rank == 0) {
                for (int i = threadIdx.x; i < rows * RN; i += THREADS) {
                    float v = 0.f;
#pragma unroll
                    for (int q = 0; q < CS; ++q) v += ld_cluster_f32(&part[i], (u32)q);
                    store(i / RN, i % RN, v);
                }
            }
            cluster_sync_all();  // no block exits while rank 0 still reads its shared memory
        }
    } else {
        float* flat = &red[0][0][0];
#pragma unroll 1
        for (int w = 0; w < WARPS; ++w) {
            if (warp == w) {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        float* r0 = &red[0][mt * 8 + 2 * t][nt * 16 + g];
                        float* r1 = &red[0][mt * 8 + 2 * t + 1][nt * 16 + g];
                        if (w == 0) {
                            r0[0] = o[nt][mt][0]; r0[8] = o[nt][mt][2]; r1[0] = o[nt][mt][1]; r1[8] = o[nt][mt][3];
                        } else {
                            r0[0] += o[nt][mt][0]; r0[8] += o[nt][mt][2]; r1[0] += o[nt][mt][1]; r1[8] += o[nt][mt][3];
                        }
                    }
            }
            __syncthreads();
        }
        for (int i = threadIdx.x; i < rows * RN; i += THREADS) store(i / RN, i % RN, flat[i]);
    }
}

#define SMALL_PARAMS                                                                                        \
    const void* __restrict__ x, int ldx, int Kx, int x_f32, int gather, const u32* __restrict__ qw,        \
        const u32* __restrict__ sz, const int* __restrict__ perm, const float* __restrict__ bias,           \
        void* __restrict__ y, int ldy, int y_f32, int M, int N, int Np, int NU, int upg, int ushift
#define SMALL_ARGS x, ldx, Kx, x_f32, gather, qw, sz, perm, bias, y, ldy, y_f32, M, N, Np, NU, upg, ushift

// One block per 16*NT outputs (and 8*MT rows), all of K; *_pdl: the same for PDL launches.
template <int BITS, int MT, int NT, int GSTC, int XS, int OCC, int PD>
__global__ void __launch_bounds__(THREADS, OCC) qgemm_small(SMALL_PARAMS) {
    small_body<BITS, MT, NT, GSTC, XS, OCC, PD, 1, false>(SMALL_ARGS);
}
template <int BITS, int MT, int NT, int GSTC, int XS, int OCC, int PD>
__global__ void __launch_bounds__(THREADS, OCC) qgemm_small_pdl(SMALL_PARAMS) {
    small_body<BITS, MT, NT, GSTC, XS, OCC, PD, 1, true>(SMALL_ARGS);
}

// Split-K: a cluster of CS blocks per 16*NT outputs, M <= 8. Clusters need sm_90: built for an
// older GPU (where the rest of this source must still compile) it only traps, and the launcher
// refuses cs > 1 there.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define SPLIT_CLUSTER_DIMS(cs)
#else
#define SPLIT_CLUSTER_DIMS(cs) __cluster_dims__(cs, 1, 1)
#endif
template <int BITS, int NT, int GSTC, int XS, int OCC, int PD, int CS, bool PDL>
__device__ __forceinline__ void split_body(SMALL_PARAMS) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    __trap();
#else
    small_body<BITS, 1, NT, GSTC, XS, OCC, PD, CS, PDL>(SMALL_ARGS);
#endif
}
template <int BITS, int NT, int GSTC, int XS, int OCC, int PD, int CS>
__global__ __launch_bounds__(THREADS, OCC) SPLIT_CLUSTER_DIMS(CS) void qgemm_split(SMALL_PARAMS) {
    split_body<BITS, NT, GSTC, XS, OCC, PD, CS, false>(SMALL_ARGS);
}
template <int BITS, int NT, int GSTC, int XS, int OCC, int PD, int CS>
__global__ __launch_bounds__(THREADS, OCC) SPLIT_CLUSTER_DIMS(CS) void qgemm_split_pdl(SMALL_PARAMS) {
    split_body<BITS, NT, GSTC, XS, OCC, PD, CS, true>(SMALL_ARGS);
}
