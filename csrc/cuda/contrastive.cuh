// Softmax-contrastive statistics and their backward (schemas clipkern::contrastive_fwd / _bwd).
//
// Notation (the code's symbols): X (M×D) own rows, Y (N×D) other rows, s = scale,
//     raw = X Yᵀ (fp32 accumulation),  S = s · raw       — tiles only, S is never stored.
// Forward, one pass over the tiles gives both statistics (kept as (max, logsum), not one lse: at
// s = 100 the rounding of a single fp32 lse ≈ 100 would become the relative error of every P):
//     row_max[i] = max_j S[i,j],  row_logsum[i] = log Σ_j exp(S[i,j] − row_max[i])
//     col_max[j] = max_i S[i,j],  col_logsum[j] = log Σ_i exp(S[i,j] − col_max[j])
// Grid (row_splits × col_splits). CTA (rs, cs) walks the 64-row blocks of split rs (outer) and the
// 64-column blocks of split cs (inner): row partials (m, l) stay in registers and are written once to
// row_part[cs, i]; column partials are read-modify-written in col_part[rs, j], which only this CTA
// touches. A tiny kernel merges the splits (fixed order: deterministic, no atomics). Extra memory:
// (row_splits·N + col_splits·M)·8 bytes, row_splits ≤ 64 — O(B + N).
//
// Backward, with g_r = ∂L/∂lse_row, g_c = ∂L/∂lse_col:
//     P_r = exp((S − row_max) − row_logsum),   P_c = exp((S − col_max) − col_logsum)
//     dS  = g_r[:,None]·P_r + g_c[None,:]·P_c
//     dX  = s · dS Y,    dY = s · dSᵀ X,    dscale = Σ_ij dS_ij · raw_ij
// One kernel, two launches: TRANSPOSED = false owns 32 rows of X and walks the 64-row tiles of Y;
// TRANSPOSED = true owns 32 rows of Y and walks the tiles of X. Each CTA keeps its dS tile on chip and
// accumulates its output block over a whole D slice (all of D when D ≤ the slice, 768 by default) in
// shared memory, so S is recomputed once per launch, not once per D slice. Both launches compute every
// raw tile as X·Yᵀ with the forward's code path (same operand order, same K tiling, same fragment
// shapes): the recomputed S is bit-identical to the forward's, so P is consistent with its statistics.
// dscale: per-CTA partials of the first launch, summed in a fixed order.
//
// Matmul engines (UseMma in common.cuh): fp16/bf16 on the tensor cores with nvcuda::wmma 16×16×16 fragments, fp32
// accumulation (dS is rounded to the input dtype for the dS·Y product, as a torch matmul in that dtype
// would); operand tiles are double-buffered with cp.async when D % 8 == 0 and rows are 16-byte aligned
// (synchronous staging otherwise; the mma sequence, hence every S value, is the same on both paths);
// fp32 with plain SIMT fmaf (no TF32), so fp32 keeps full fp32 accuracy.
#pragma once

#include <mma.h>

#include <cstring>
#include <type_traits>

#include "common.cuh"

namespace clipkern_cuda {
namespace contrastive {

constexpr int BK = 32;  // K (= D) step of the raw tile: identical in forward and backward

template <typename T> struct Pad { static constexpr int value = std::is_same<T, float>::value ? 1 : 8; };

// Operand staging of one raw tile: A rows (TM×BK) and B rows (TN×BK), K contiguous; two stages on the
// tensor-core path (cp.async double buffering), one on the SIMT path.
template <typename T, int TM, int TN> struct OperandSmem {
  static constexpr int LD = BK + Pad<T>::value;
  static constexpr int STAGES = UseMma<T>::value ? 2 : 1;
  alignas(128) T a[STAGES * TM * LD];
  alignas(128) T b[STAGES * TN * LD];
};

// 16-byte global → shared copy: cp.async on sm_80+ (completes at cp_async_wait), a plain copy below.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned saddr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(saddr), "l"(src));
#else
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most one committed group is still in flight.
__device__ __forceinline__ void cp_async_wait_all_but_one() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 1;\n" ::);
#endif
}

// Asynchronous staging of a ROWS × BK slice (K from k0) of a 16-bit row-major matrix with D % 8 == 0 and
// a 16-byte aligned base: every 8-element chunk is either wholly inside (copied) or wholly outside (zeroed).
template <typename T, int ROWS, int LD>
__device__ __forceinline__ void stage_async(T* dst, const T* src, int D, int k0, int valid_rows, int tid, int nthreads) {
  constexpr int VEC = 8, CV = BK / VEC;
  for (int idx = tid; idx < ROWS * CV; idx += nthreads) {
    const int r = idx / CV, c = (idx % CV) * VEC;
    T* d = dst + r * LD + c;
    if (r < valid_rows && k0 + c < D) cp_async16(d, src + (long long)r * D + k0 + c);
    else *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
  }
}

// dst[r][c] (leading dimension LD) = src[r·src_ld + c] for r < valid_rows and c < valid_cols, else 0.
// 16-bit types move 16 bytes per thread when src and its row stride are 16-byte aligned.
template <typename T, int ROWS, int COLS, int LD>
__device__ __forceinline__ void stage_tile(T* dst, const T* src, long long src_ld, int valid_rows, int valid_cols,
                                           int tid, int nthreads) {
  if constexpr (sizeof(T) == 2) {
    constexpr int VEC = 8, CV = COLS / VEC;
    static_assert(COLS % VEC == 0 && LD % VEC == 0, "16-byte staging needs 8-element aligned tiles");
    if (reinterpret_cast<size_t>(src) % 16 == 0 && src_ld % VEC == 0) {
      for (int idx = tid; idx < ROWS * CV; idx += nthreads) {
        const int r = idx / CV, c = (idx % CV) * VEC;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);  // 0x0000 is +0 in fp16 and bf16
        if (r < valid_rows) {
          const T* row = src + r * src_ld;
          if (c + VEC <= valid_cols) {
            v = *reinterpret_cast<const uint4*>(row + c);
          } else if (c < valid_cols) {
            T tmp[VEC];
#pragma unroll
            for (int i = 0; i < VEC; ++i) tmp[i] = c + i < valid_cols ? row[c + i] : zero_value<T>();
            memcpy(&v, tmp, sizeof(v));
          }
        }
        *reinterpret_cast<uint4*>(dst + r * LD + c) = v;
      }
      return;
    }
  }
  for (int idx = tid; idx < ROWS * COLS; idx += nthreads) {
    const int r = idx / COLS, c = idx % COLS;
    T v = zero_value<T>();
    if (r < valid_rows && c < valid_cols) v = src[r * src_ld + c];
    dst[r * LD + c] = v;
  }
}

// raw[r][c] = Σ_k A[r,k]·B[c,k] for the TM×TN tile into S (fp32, leading dimension LDS).
// A = the X rows, B = the Y rows, always (forward operand order). Every element is accumulated in the
// same sequence whatever TM/TN are, so forward and backward tiles agree bit for bit.
template <typename T, int TM, int TN, int NT, int LDS>
__device__ __forceinline__ void raw_tile(const T* A, int ma, const T* B, int nb, int D,
                                         OperandSmem<T, TM, TN>& sm, float* S) {
  constexpr int LD = OperandSmem<T, TM, TN>::LD;
  const int tid = threadIdx.x;
  if constexpr (!UseMma<T>::value) {
    // SIMT: thread grid 16 columns × (NT/16) rows; RM×RN elements per thread, interleaved.
    constexpr int THR_C = 16, THR_R = NT / THR_C, RN = TN / THR_C, RM = TM / THR_R;
    static_assert(RN * THR_C == TN && RM * THR_R == TM, "tile/threads mismatch");
    const int tr = tid / THR_C, tc = tid % THR_C;
    float acc[RM][RN];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < D; k0 += BK) {
      __syncthreads();
      stage_tile<T, TM, BK, LD>(sm.a, A + k0, D, ma, D - k0, tid, NT);
      stage_tile<T, TN, BK, LD>(sm.b, B + k0, D, nb, D - k0, tid, NT);
      __syncthreads();
#pragma unroll 4
      for (int k = 0; k < BK; ++k) {
        float av[RM], bv[RN];
#pragma unroll
        for (int i = 0; i < RM; ++i) av[i] = to_float(sm.a[(tr + THR_R * i) * LD + k]);
#pragma unroll
        for (int j = 0; j < RN; ++j) bv[j] = to_float(sm.b[(tc + THR_C * j) * LD + k]);
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
          for (int j = 0; j < RN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) S[(tr + THR_R * i) * LDS + tc + THR_C * j] = acc[i][j];
  } else {
    using namespace nvcuda;
    constexpr int NW = NT / 32, FR = TM / 16, FC = TN / 16, FPW = FR * FC / NW;
    static_assert(FPW * NW == FR * FC, "fragments must split evenly over warps");
    const int warp = tid / 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FPW];
#pragma unroll
    for (int f = 0; f < FPW; ++f) wmma::fill_fragment(acc[f], 0.f);
    // one BK step on the operands of one stage; the same mma sequence on both staging paths
    auto mma_step = [&](const T* sa, const T* sb) {
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
#pragma unroll
        for (int f = 0; f < FPW; ++f) {
          const int fid = warp + NW * f, fr = fid / FC, fc = fid % FC;
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
          wmma::load_matrix_sync(fa, sa + fr * 16 * LD + kk, LD);
          wmma::load_matrix_sync(fb, sb + fc * 16 * LD + kk, LD);
          wmma::mma_sync(acc[f], fa, fb, acc[f]);
        }
      }
    };
    const bool async_ok = D % 8 == 0 && reinterpret_cast<size_t>(A) % 16 == 0 && reinterpret_cast<size_t>(B) % 16 == 0;
    if (async_ok) {  // double buffer: the loads of step kt + 1 fly while step kt runs on the tensor cores
      const int KT = (D + BK - 1) / BK;
      __syncthreads();
      stage_async<T, TM, LD>(sm.a, A, D, 0, ma, tid, NT);
      stage_async<T, TN, LD>(sm.b, B, D, 0, nb, tid, NT);
      cp_async_commit();
      for (int kt = 0; kt < KT; ++kt) {
        const int cur = kt & 1;
        if (kt + 1 < KT) {
          stage_async<T, TM, LD>(sm.a + (cur ^ 1) * TM * LD, A, D, (kt + 1) * BK, ma, tid, NT);
          stage_async<T, TN, LD>(sm.b + (cur ^ 1) * TN * LD, B, D, (kt + 1) * BK, nb, tid, NT);
        }
        cp_async_commit();  // possibly empty: keeps the group count uniform
        cp_async_wait_all_but_one();
        __syncthreads();
        mma_step(sm.a + cur * TM * LD, sm.b + cur * TN * LD);
        __syncthreads();  // stage cur is refilled in the next iteration
      }
    } else {
      for (int k0 = 0; k0 < D; k0 += BK) {
        __syncthreads();
        stage_tile<T, TM, BK, LD>(sm.a, A + k0, D, ma, D - k0, tid, NT);
        stage_tile<T, TN, BK, LD>(sm.b, B + k0, D, nb, D - k0, tid, NT);
        __syncthreads();
        mma_step(sm.a, sm.b);
      }
    }
#pragma unroll
    for (int f = 0; f < FPW; ++f) {
      const int fid = warp + NW * f, fr = fid / FC, fc = fid % FC;
      wmma::store_matrix_sync(S + fr * 16 * LDS + fc * 16, acc[f], LDS, wmma::mem_row_major);
    }
  }
  __syncthreads();
}

// (max, Σexp) of n values v[i·stride] (n ≤ 32), two passes; (−inf, 0) when n == 0.
__device__ __forceinline__ LsePair lse_of_strided(const float* v, int n, int stride, float scale) {
  float m = -kInf;
  for (int i = 0; i < n; ++i) m = nan_max(m, scale * v[i * stride]);
  if (m == -kInf) return {m, 0.f};
  float l = 0.f;
  for (int i = 0; i < n; ++i) l += expf(scale * v[i * stride] - m);
  return {m, l};
}

// ---------------------------------------------------------------------------------------------------
// Forward
constexpr int F_TM = 64, F_TN = 64, F_NT = 128, F_LDS = F_TN + 4;

template <typename T>
__global__ void __launch_bounds__(F_NT) contrastive_fwd_kernel(
    const T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ scale_ptr,
    float* __restrict__ row_part_m, float* __restrict__ row_part_l,
    float* __restrict__ col_part_m, float* __restrict__ col_part_l,
    int M, int N, int D, int rb_per_split, int cb_per_split) {
  __shared__ OperandSmem<T, F_TM, F_TN> sm;
  __shared__ alignas(128) float S[F_TM * F_LDS];
  const int tid = threadIdx.x, rs = blockIdx.x, cs = blockIdx.y;
  const float scale = *scale_ptr;
  const int rb_begin = rs * rb_per_split, rb_end = min(rb_begin + rb_per_split, ceil_div_dev(M, F_TM));
  const int cb_begin = cs * cb_per_split, cb_end = min(cb_begin + cb_per_split, ceil_div_dev(N, F_TN));
  const int pair = tid >> 1, half = tid & 1;  // two threads per row (or column) of a tile
  for (int rb = rb_begin; rb < rb_end; ++rb) {
    const int i0 = rb * F_TM, mi = min(F_TM, M - i0);
    LsePair row = lse_empty();
    for (int cb = cb_begin; cb < cb_end; ++cb) {
      const int j0 = cb * F_TN, nj = min(F_TN, N - j0);
      raw_tile<T, F_TM, F_TN, F_NT, F_LDS>(x + (long long)i0 * D, mi, y + (long long)j0 * D, nj, D, sm, S);
      // row statistics of this tile: thread pair per row, 32 columns each
      {
        const int c0 = half * 32, n = pair < mi ? max(0, min(32, nj - c0)) : 0;
        LsePair p = lse_of_strided(S + pair * F_LDS + c0, n, 1, scale);
        p = lse_shfl_xor(p, 1);
        row = lse_merge(row, p);
      }
      // column statistics of this tile, merged into this CTA's own column partials
      {
        const int r0 = half * 32, n = pair < nj ? max(0, min(32, mi - r0)) : 0;
        LsePair p = lse_of_strided(S + r0 * F_LDS + pair, n, F_LDS, scale);
        p = lse_shfl_xor(p, 1);
        if (half == 0 && pair < nj) {
          const long long o = (long long)rs * N + j0 + pair;
          if (rb != rb_begin) p = lse_merge(LsePair{col_part_m[o], col_part_l[o]}, p);
          col_part_m[o] = p.m;
          col_part_l[o] = p.l;
        }
      }
    }
    if (half == 0 && pair < mi) {
      const long long o = (long long)cs * M + i0 + pair;
      row_part_m[o] = row.m;
      row_part_l[o] = row.l;
    }
  }
}

// out_max[i] = m, out_logsum[i] = log l of the merge over `splits` partials part[s·count + i] (in order).
__global__ void lse_split_merge_kernel(const float* __restrict__ part_m, const float* __restrict__ part_l,
                                       int splits, int count, float* __restrict__ out_max,
                                       float* __restrict__ out_logsum) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  LsePair acc = lse_empty();
  for (int s = 0; s < splits; ++s) acc = lse_merge(acc, LsePair{part_m[(long long)s * count + i], part_l[(long long)s * count + i]});
  out_max[i] = acc.m;
  out_logsum[i] = logf(acc.l);
}

// ---------------------------------------------------------------------------------------------------
// Backward
constexpr int B_OWN = 32, B_OTH = 64, B_NT = 256, B_DC = 64;  // own rows, other rows per tile, threads, D chunk
constexpr int B_DSLICE_MAX = 768;                              // D columns accumulated on chip per CTA

template <typename T, bool TRANSPOSED> struct BwdSmem {
  // raw/dS tile stored as X-rows × Y-rows: [own][oth] (TRANSPOSED = false) or [oth][own] (true)
  static constexpr int TM = TRANSPOSED ? B_OTH : B_OWN, TN = TRANSPOSED ? B_OWN : B_OTH;
  static constexpr int LDS = TN + 4;
  static constexpr bool kTensorCore = UseMma<T>::value;
  static constexpr int LDD = TN + 8;  // dS in T for the tensor cores
  static constexpr int LDV = B_DC + Pad<T>::value;
  OperandSmem<T, TM, TN> ops;
  alignas(128) float S[TM * LDS];
  alignas(128) T dS[kTensorCore ? TM * LDD : 1];
  alignas(128) T V[B_OTH * LDV];  // a B_OTH × B_DC chunk of the other operand
  float oth_m[B_OTH], oth_logl[B_OTH], oth_g[B_OTH];
  float own_m[B_OWN], own_logl[B_OWN], own_g[B_OWN];
  float red[B_NT / 32];
};

template <typename T, bool TRANSPOSED>
__global__ void __launch_bounds__(B_NT) contrastive_bwd_kernel(
    const T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ scale_ptr,
    const float* __restrict__ own_max, const float* __restrict__ own_logsum, const float* __restrict__ own_g,
    const float* __restrict__ oth_max, const float* __restrict__ oth_logsum, const float* __restrict__ oth_g,
    T* __restrict__ out, float* __restrict__ dscale_part, int M, int N, int D, int d_slice) {
  using Sm = BwdSmem<T, TRANSPOSED>;
  __shared__ Sm sm;
  float* acc = align128<float>(dynamic_smem());  // [B_OWN][ld_acc]
  const int tid = threadIdx.x, warp = tid / 32;
  const float scale = *scale_ptr;
  const int own_count = TRANSPOSED ? N : M, oth_count = TRANSPOSED ? M : N;
  const T* own_ptr = TRANSPOSED ? y : x;
  const T* oth_ptr = TRANSPOSED ? x : y;
  const int o0 = blockIdx.x * B_OWN, no = min(B_OWN, own_count - o0);
  const int d0 = blockIdx.y * d_slice, dw = min(d_slice, D - d0);
  const int dwp = (dw + B_DC - 1) / B_DC * B_DC, ld_acc = dwp + 4;

  for (int e = tid; e < B_OWN * ld_acc; e += B_NT) acc[e] = 0.f;
  if (tid < B_OWN) {
    const bool ok = tid < no;
    sm.own_m[tid] = ok ? own_max[o0 + tid] : 0.f;
    sm.own_logl[tid] = ok ? own_logsum[o0 + tid] : 0.f;
    sm.own_g[tid] = ok ? own_g[o0 + tid] : 0.f;
  }
  float dscale_acc = 0.f;

  for (int t0 = 0; t0 < oth_count; t0 += B_OTH) {
    const int nt = min(B_OTH, oth_count - t0);
    if (tid < B_OTH) {  // visible after raw_tile's first barrier
      const bool ok = tid < nt;
      sm.oth_m[tid] = ok ? oth_max[t0 + tid] : 0.f;
      sm.oth_logl[tid] = ok ? oth_logsum[t0 + tid] : 0.f;
      sm.oth_g[tid] = ok ? oth_g[t0 + tid] : 0.f;
    }
    if (TRANSPOSED)
      raw_tile<T, Sm::TM, Sm::TN, B_NT, Sm::LDS>(x + (long long)t0 * D, nt, y + (long long)o0 * D, no, D, sm.ops, sm.S);
    else
      raw_tile<T, Sm::TM, Sm::TN, B_NT, Sm::LDS>(x + (long long)o0 * D, no, y + (long long)t0 * D, nt, D, sm.ops, sm.S);

    // dS = g_own·P_own + g_oth·P_oth, in the tile's storage order
    for (int e = tid; e < Sm::TM * Sm::TN; e += B_NT) {
      const int r = e / Sm::TN, c = e % Sm::TN;
      const int o = TRANSPOSED ? c : r, t = TRANSPOSED ? r : c;
      float ds = 0.f;
      if (o < no && t < nt) {
        const float raw = sm.S[r * Sm::LDS + c], s = scale * raw;
        const float p_own = expf((s - sm.own_m[o]) - sm.own_logl[o]);
        const float p_oth = expf((s - sm.oth_m[t]) - sm.oth_logl[t]);
        ds = sm.own_g[o] * p_own + sm.oth_g[t] * p_oth;
        dscale_acc = fmaf(ds, raw, dscale_acc);
      }
      if constexpr (Sm::kTensorCore) sm.dS[r * Sm::LDD + c] = from_float<T>(ds);
      else sm.S[r * Sm::LDS + c] = ds;
    }

    // acc[own][d] += Σ_t dS(own, t) · V[t][d] over this CTA's D slice, chunk by chunk
    for (int dc0 = 0; dc0 < dw; dc0 += B_DC) {
      __syncthreads();  // dS written / previous chunk consumed
      stage_tile<T, B_OTH, B_DC, Sm::LDV>(sm.V, oth_ptr + (long long)t0 * D + d0 + dc0, D, nt, dw - dc0, tid, B_NT);
      __syncthreads();
      if constexpr (Sm::kTensorCore) {
        using namespace nvcuda;
        // 32 × 64 chunk = 2 × 4 fragments, one per warp
        const int fr = warp / 4, fc = warp % 4;
        float* cptr = acc + fr * 16 * ld_acc + dc0 + fc * 16;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc_acc;
        wmma::load_matrix_sync(fc_acc, cptr, ld_acc, wmma::mem_row_major);
#pragma unroll
        for (int kk = 0; kk < B_OTH; kk += 16) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
          wmma::load_matrix_sync(fb, sm.V + kk * Sm::LDV + fc * 16, Sm::LDV);
          if constexpr (TRANSPOSED) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> fa;  // dSᵀ of [oth][own]
            wmma::load_matrix_sync(fa, sm.dS + kk * Sm::LDD + fr * 16, Sm::LDD);
            wmma::mma_sync(fc_acc, fa, fb, fc_acc);
          } else {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
            wmma::load_matrix_sync(fa, sm.dS + fr * 16 * Sm::LDD + kk, Sm::LDD);
            wmma::mma_sync(fc_acc, fa, fb, fc_acc);
          }
        }
        wmma::store_matrix_sync(cptr, fc_acc, ld_acc, wmma::mem_row_major);
      } else {
        // SIMT: thread owns one own row and 8 interleaved columns of the chunk
        const int o = tid / 8, cl = tid % 8;
        float a8[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) a8[j] = acc[o * ld_acc + dc0 + cl + 8 * j];
        for (int t = 0; t < B_OTH; ++t) {
          const float ds = TRANSPOSED ? sm.S[t * Sm::LDS + o] : sm.S[o * Sm::LDS + t];
#pragma unroll
          for (int j = 0; j < 8; ++j) a8[j] = fmaf(ds, to_float(sm.V[t * Sm::LDV + cl + 8 * j]), a8[j]);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[o * ld_acc + dc0 + cl + 8 * j] = a8[j];
      }
    }
    __syncthreads();  // acc chunk stores done; S / dS free for the next tile
  }

  // out = s · acc
  T* out_blk = out + (long long)o0 * D + d0;
  for (int e = tid; e < no * dw; e += B_NT) {
    const int o = e / dw, d = e % dw;
    out_blk[(long long)o * D + d] = from_float<T>(scale * acc[o * ld_acc + d]);
  }
  if (dscale_part != nullptr && blockIdx.y == 0) {
    for (int off = 16; off > 0; off >>= 1) dscale_acc += __shfl_xor_sync(0xffffffffu, dscale_acc, off);
    if (tid % 32 == 0) sm.red[warp] = dscale_acc;
    __syncthreads();
    if (tid == 0) {
      float total = 0.f;
      for (int w = 0; w < B_NT / 32; ++w) total += sm.red[w];
      dscale_part[blockIdx.x] = total;
    }
  }
}

}  // namespace contrastive
}  // namespace clipkern_cuda
