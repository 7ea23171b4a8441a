// Load-time and prefill kernels of the packed `gptq` format (repack to the tc layout, x in K' order,
// dequantize for cuBLAS). Compiled together with gptq_cuda.cu (appended to it: its helpers are used).

// ---------------------------------------------------------------------------------------------
// dequantize to W^T [N, ldw] fp16 in K' order (prefill path: then cuBLAS on x in K' order).
// Columns kp >= Kcols are not written (Kcols % 8 == 0, ldw % 8 == 0, wt 16-byte aligned).
// Each warp decodes one (n-tile, unit) = 16 x 128 into shared memory, then writes whole
// 256-byte row segments (16-byte stores, coalesced). Grid: any (grid-stride); block: THREADS.
template <int BITS, int GSTC>
__global__ void __launch_bounds__(THREADS)
dequant_tc(const u32* __restrict__ qw, const u32* __restrict__ sz, u16* __restrict__ wt, int ldw, int Kcols,
           int N, int Np, int NU, int upg) {
    constexpr int WPU = Fmt<BITS>::WPU;
    constexpr int NGU = GSTC < 8 ? 8 / GSTC : 1;
    constexpr int S = GSTC < 8 ? 16 * GSTC : 128;
    constexpr int RW = 68;  // row stride of the tile in words (64 + 4: rows shift banks)
    __shared__ u32 tile[WARPS][16 * RW];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    u32* tw = tile[warp];
    const long long tasks = (long long)(Np / 16) * NU;
    for (long long task = (long long)blockIdx.x * WARPS + warp; task < tasks; task += (long long)gridDim.x * WARPS) {
        const int nt = (int)(task / NU), u = (int)(task % NU);
        u32 w[WPU];
        load_unit<BITS>(w, qw + ((size_t)nt * NU + u) * (32 * WPU), lane);
        u32 s[NGU][2];
#pragma unroll
        for (int gi = 0; gi < NGU; ++gi) {
            const int grp = GSTC < 8 ? u * NGU + gi : u / upg;
            s[gi][0] = ld_nc(sz + (size_t)grp * Np + nt * 16 + g);
            s[gi][1] = ld_nc(sz + (size_t)grp * Np + nt * 16 + g + 8);
        }
        __syncwarp();
#pragma unroll
        for (int ts = 0; ts < 8; ++ts) {
            const int gi = GSTC < 8 ? ts / GSTC : 0;
            const u32 zz[2] = {prmt(s[gi][0], 0x3232u), prmt(s[gi][1], 0x3232u)};
            const u32 sc[2] = {prmt(s[gi][0], 0x1010u), prmt(s[gi][1], 0x1010u)};
            u32 a[4];
#pragma unroll
            for (int pr = 0; pr < 4; ++pr) a[pr] = hmul2(hsub2(magic_pair<BITS>(w, ts, pr), zz[pr & 1]), sc[pr & 1]);
            const int col = (kpos<S>(u, ts, t) - u * 128) >> 1;  // word column within the unit
            *reinterpret_cast<uint2*>(tw + g * RW + col) = make_uint2(a[0], a[2]);
            *reinterpret_cast<uint2*>(tw + (g + 8) * RW + col) = make_uint2(a[1], a[3]);
        }
        __syncwarp();
        // 16 rows x 64 words: lane l writes 16 bytes of rows r = l/16 + 2i, chunk l % 16.
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int r = (lane >> 4) + 2 * i, ch = lane & 15;
            const int n = nt * 16 + r, kp = u * 128 + ch * 8;
            if (n < N && kp < Kcols)
                *reinterpret_cast<uint4*>(wt + (size_t)n * ldw + kp) = *reinterpret_cast<const uint4*>(tw + r * RW + ch * 4);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// x [M, ldx] (fp16 or fp32) -> xg [M, Kp] fp16 in K' order: xg[m, kp] = x[m, perm[kp]] (gather = 1,
// 0 where perm < 0) or x[m, kp] (gather = 0, 0 for kp >= Kx). One thread per output pair.
extern "C" __global__ void __launch_bounds__(THREADS)
prep_x(const void* __restrict__ x, int ldx, int Kx, int x_f32, int gather, const int* __restrict__ perm,
       u32* __restrict__ xg, int M, int Kp) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int half_kp = Kp >> 1;
    if (idx >= (long long)M * half_kp) return;
    const int m = (int)(idx / half_kp), kp = 2 * (int)(idx % half_kp);
    u32 h[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const int k = gather ? perm[kp + j] : (kp + j < Kx ? kp + j : -1);
        h[j] = 0u;
        if (k >= 0) {
            if (x_f32) h[j] = f2h(reinterpret_cast<const float*>(x)[(size_t)m * ldx + k]);
            else h[j] = reinterpret_cast<const u16*>(x)[(size_t)m * ldx + k];
        }
    }
    xg[idx] = h[0] | (h[1] << 16);
}

// x [M, ldx] (fp16 or fp32) -> xw [Kp/128][Mp/xb][16][xb][8] fp16 for the wgmma kernel
// (gptq_wgmma.cu): xw[u][m / xb][p][m % xb][e] = x[m, perm[128u + 8p + e]] (0 where perm < 0 or
// m >= M); xb (rows per block) a multiple of 32 that divides Mp. A block transposes one tile of
// 32 rows x 128 positions (one unit) through shared memory: it gathers the tile row by row (a
// warp reads one row's elements, all within that row), then writes its 16 chunk rows, each a
// contiguous 512-byte run of 32 consecutive rows m. Grid: (Kp / 128, Mp / 32); block: THREADS.
extern "C" __global__ void __launch_bounds__(THREADS)
prep_xwg(const void* __restrict__ x, int ldx, int x_f32, const int* __restrict__ perm, uint4* __restrict__ xw, int M,
         int Mp, int xb, int Kp) {
    constexpr int RS = 128 + 8;  // tile row stride in halves (272 bytes: rows 16 bytes apart in the banks)
    __shared__ __align__(16) u16 tile[32 * RS];
    const int u = blockIdx.x, m0 = blockIdx.y * 32;
    const int q = threadIdx.x & 127;
    const int k = perm[u * 128 + q];
#pragma unroll 4
    for (int r = threadIdx.x >> 7; r < 32; r += THREADS / 128) {
        const int m = m0 + r;
        u16 h = 0;
        if (k >= 0 && m < M) {
            if (x_f32) h = f2h(reinterpret_cast<const float*>(x)[(size_t)m * ldx + k]);
            else h = ld_nc_u16(reinterpret_cast<const u16*>(x) + (size_t)m * ldx + k);
        }
        tile[r * RS + q] = h;
    }
    __syncthreads();
#pragma unroll
    for (int i = threadIdx.x; i < 16 * 32; i += THREADS) {
        const int p = i >> 5, r = i & 31;
        xw[((size_t)(u * (Mp / xb) + m0 / xb) * 16 + p) * xb + m0 % xb + r] = *reinterpret_cast<const uint4*>(tile + r * RS + 8 * p);
    }
}

// The same for fp16 x read in place (a direct layout: K' order is K order, K % 8 == 0; x and its
// rows 16-byte aligned, ldx = K): a block loads its 32 rows x 128 positions as 16-byte vectors (a
// half-warp reads one row's 256 bytes), then gathers each chunk's four half2 words from shared
// memory: word t of chunk p = 2*ts + jh holds K' positions (ts / TS)*S + t*(S/4) + (ts % TS)*4 +
// 2*jh + {0, 1} of the unit (the tc formula, span S = 16*min(gst, 8), TS = S/16). Same output as
// prep_xwg, which reads x two bytes at a time. Grid: (Kp / 128, Mp / 32); block: THREADS.
extern "C" __global__ void __launch_bounds__(THREADS)
prep_xwg_direct(const uint4* __restrict__ x, int K, uint4* __restrict__ xw, int M, int Mp, int xb, int S) {
    constexpr int RW = 65;  // tile row stride in words: odd, so a warp's gather (32 rows, one word each) hits 32 banks
    __shared__ u32 tile[32 * RW];
    const int u = blockIdx.x, m0 = blockIdx.y * 32, kv = K >> 3;  // kv: 16-byte vectors per row
#pragma unroll
    for (int i = threadIdx.x; i < 32 * 16; i += THREADS) {
        const int r = i >> 4, c = i & 15, m = m0 + r, v = u * 16 + c;
        uint4 d = make_uint4(0u, 0u, 0u, 0u);
        if (m < M && v < kv) d = ld_nc4(x + (size_t)m * kv + v);
        u32* t = tile + r * RW + 4 * c;
        t[0] = d.x; t[1] = d.y; t[2] = d.z; t[3] = d.w;
    }
    __syncthreads();
    const int TS = S >> 4, lw = S >> 3;  // lw: words between lanes t (S/4 positions)
#pragma unroll
    for (int i = threadIdx.x; i < 16 * 32; i += THREADS) {
        const int p = i >> 5, r = i & 31, ts = p >> 1;
        const u32* t = tile + r * RW + (((ts / TS) * S + (ts % TS) * 4 + 2 * (p & 1)) >> 1);
        xw[((size_t)(u * (Mp / xb) + m0 / xb) * 16 + p) * xb + m0 % xb + r] = make_uint4(t[0], t[lw], t[2 * lw], t[3 * lw]);
    }
}

// ---------------------------------------------------------------------------------------------
// repack: CPU format -> tc layout (load time)

// Code of (k, n) in a bitstream packed along k: qweight int32 [ceil(K/32)*BITS, N].
template <int BITS>
__device__ __forceinline__ u32 stream_code(const u32* __restrict__ q, int k, int n, int N) {
    const int bit = (k & 31) * BITS;
    const size_t row = (size_t)(k >> 5) * BITS + (bit >> 5);
    const int sh = bit & 31;
    u64 v = q[row * N + n] >> sh;
    if (sh + BITS > 32) v |= (u64)q[(row + 1) * N + n] << (32 - sh);
    return (u32)v & ((1u << BITS) - 1u);
}

// qweight: [ceil(K/32)*BITS, N] int32 (kernels/reference.py).  perm: [K'] int32.
// out: tc words. span: S = 16*min(gst, 8). One thread per (n-tile, unit, lane).
template <int BITS>
__global__ void __launch_bounds__(THREADS)
repack_tc(const u32* __restrict__ qweight, int K, int N, const int* __restrict__ perm,
          int Np, int NU, int span, u32* __restrict__ out) {
    constexpr int WPU = Fmt<BITS>::WPU;
    const long long total = (long long)(Np / 16) * NU * 32;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= total) return;
    const int lane = (int)(tid & 31);
    const long long rest = tid >> 5;
    const int u = (int)(rest % NU), nt = (int)(rest / NU);
    const int g = lane >> 2, t = lane & 3;
    const int TS = span / 16;
    u32 w[WPU];
#pragma unroll
    for (int i = 0; i < WPU; ++i) w[i] = 0u;
#pragma unroll
    for (int ts = 0; ts < 8; ++ts) {
        const int kp0 = u * 128 + (ts / TS) * span + t * (span / 4) + (ts % TS) * 4;
#pragma unroll
        for (int pr = 0; pr < 4; ++pr)
#pragma unroll
            for (int hi = 0; hi < 2; ++hi) {
                const int k = perm[kp0 + 2 * (pr >> 1) + hi];
                const int n = nt * 16 + g + 8 * (pr & 1);
                const u32 code = (k >= 0 && k < K && n < N) ? stream_code<BITS>(qweight, k, n, N) : 0u;
                if constexpr (BITS == 3) {
                    const int p = (ts & 3) * 4 + pr;
                    if (p == 15) {
#pragma unroll
                        for (int b = 0; b < 3; ++b) {
                            int word;
                            const int shift = code_bit_pos<BITS>(ts, pr, hi, b, &word);
                            w[word] |= ((code >> b) & 1u) << shift;
                        }
                        continue;
                    }
                }
                int word;
                const int shift = code_bit_pos<BITS>(ts, pr, hi, 0, &word);
                w[word] |= code << shift;
            }
    }
    u32* base = out + ((size_t)nt * NU + u) * (32 * WPU);
    if constexpr (BITS == 3) {
        *reinterpret_cast<uint4*>(base + lane * 4) = make_uint4(w[0], w[1], w[2], w[3]);
        *reinterpret_cast<uint2*>(base + 128 + lane * 2) = make_uint2(w[4], w[5]);
    } else {
#pragma unroll
        for (int c = 0; c < WPU / 4; ++c)
            *reinterpret_cast<uint4*>(base + c * 128 + lane * 4) = make_uint4(w[4 * c], w[4 * c + 1], w[4 * c + 2], w[4 * c + 3]);
    }
}

// scales: [G, N] fp32; qzeros: [G, ceil(N/32)*bits] int32 bitstream along N.
// out: [Gp, Np] half2(scale, 1024 + zero); padding rows/columns get (0, 1024).
extern "C" __global__ void __launch_bounds__(THREADS)
repack_sz(const float* __restrict__ scales, const u32* __restrict__ qzeros, int G, int N, int bits,
          int Gp, int Np, u32* __restrict__ out) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)Gp * Np) return;
    const int gq = (int)(idx / Np), n = (int)(idx % Np);
    u32 r = SZ_PAD;
    if (gq < G && n < N) {
        const int nz = ((N + 31) / 32) * bits;
        const int bit = (n & 31) * bits;
        const int col = (n >> 5) * bits + (bit >> 5);
        const int sh = bit & 31;
        const u32* row = qzeros + (size_t)gq * nz;
        u64 v = row[col] >> sh;
        if (sh + bits > 32) v |= (u64)row[col + 1] << (32 - sh);
        const u32 z = (u32)v & ((1u << bits) - 1u);
        r = (u32)f2h(scales[(size_t)gq * N + n]) | ((0x6400u | z) << 16);
    }
    out[idx] = r;
}
