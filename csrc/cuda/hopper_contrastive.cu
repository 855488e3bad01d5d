// Hopper (sm_90a) kernels of the softmax-contrastive ops for fp16/bf16 features: TMA + wgmma tiles
// (hopper_mainloop.cuh) with the statistics / dS epilogues of the Triton kernels
// (clipkern/ops/contrastive/triton_kernels.py), so both backends walk S alike.
//
// Notation: X (M×D) own rows, Y (N×D) other rows, s = scale, raw = X Yᵀ (fp32), S = s·raw, tiles only.
// Every exponent is fma(raw, s, −m) (one rounding, the same in forward and backward); maxima are of
// the rounded s·raw.
//
// Forward (contrastive_fwd_sm90_kernel), grid (row_splits × col_splits) of hopper_plan.h: CTA (rs, cs)
// walks row blocks (outer) × column blocks (inner) of its rectangle.
//   rows:    m_new = max(m, max_j S),  p_ij = exp(fma(raw, s, −m_new_i)),  l = l·exp(m − m_new) + Σ_j p_ij
//   columns: from the row exps, per warp (32 rows of the tile): t = max over its valid rows of m_new,
//            w_i = exp(m_new_i − t) ≤ 1, Σ_i exp(S_ij − t) = Σ_i p_ij·w_i — 2 exps per row, not one
//            per logit (the row maxima come first, then one pass of exps feeds both sums). If a valid column's sum is below kColSumFloor (its terms may have flushed to
//            zero) the warp takes the exact form: column max and one exp per element.
//   The 4 warp partials merge in a fixed order, then into col_part[rs, j] (first visit stores);
//   row partials go to row_part[cs, i] once per row block. lse_split_merge_kernel (kernels.cu) merges
//   the splits: deterministic, no atomics.
// dS (contrastive_ds_sm90_kernel), one CTA per (row tile, column tile) of a row chunk [row0, row_end):
//   P_r = exp(fma(raw, s, −m_r) − log l_r),  P_c = exp(S − m_c − log l_c) = P_r·a_i·b_j with, per tile,
//   t = max over its valid rows of m_r, a_i = exp((m_r_i − t) + log l_r_i), b_j = exp((t − m_c_j) − log l_c_j)
//   (computed once, before the tile's MMAs), taken when every valid b_j ≤ e^30 (else one exp per
//   element; see col_probs_from_row_probs);
//   dS = g_r·P_r + g_c·P_c,  ws[i − row0, j] = (s·dS) in the feature dtype,  dscale_part = Σ_tile dS·raw.
// Then dX = ws·Y and dY += wsᵀ·X[chunk] are cuBLAS GEMMs (hopper_dispatch.cuh).
//
// Built only with the CuTe headers (pip nvidia-cutlass) and the sm_90a target; otherwise compiled()
// is false and kernels.cu keeps the wmma kernels. Device code exists only in the sm_90a pass
// (__CUDA_ARCH_FEAT_SM90_ALL); any other pass gets a trapping stub that is never launched.
#include "hopper_contrastive.h"

#include <cstring>

#if __has_include(<cute/tensor.hpp>)
#define CLIPKERN_HOPPER_CUTE 1
#include "common.cuh"
#include "hopper_mainloop.cuh"
#endif

namespace clipkern_hopper {

bool compiled() {
#if defined(CLIPKERN_HOPPER_CUTE) && defined(CLIPKERN_HOPPER_SM90A)
  return true;
#else
  return false;
#endif
}

#if defined(CLIPKERN_HOPPER_CUTE)
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CLIPKERN_HOPPER_DEVICE 1
#endif

[[maybe_unused]] constexpr float kColSumFloor = 4.2e-18f;  // as triton_tiles.COL_SUM_FLOOR
[[maybe_unused]] constexpr float kMaxColExponent = 30.f;  // b_j ≤ e^30: P_r·a_i·b_j cannot overflow
constexpr int kWarps = kThreads / 32;
using clipkern_cuda::kInf;
using clipkern_cuda::LsePair;
using clipkern_cuda::lse_merge;
using clipkern_cuda::nan_max;

__device__ __forceinline__ float warp_max(float v, int from_lane_xor) {
  for (int o = from_lane_xor; o < 32; o <<= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v, int from_lane_xor, int to_lane_xor = 32) {
  for (int o = from_lane_xor; o < to_lane_xor; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float quad_max(float v) {
  v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return nan_max(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// The value of register array v at row slot `quad` (the lane's index in its quad) without dynamic
// register indexing; and row slot r's value computed by lane r of this lane's quad.
template <class V, int R> __device__ __forceinline__ V pick_row(const V (&v)[R], int quad) {
  V out = v[0];
  CUTE_UNROLL
  for (int r = 1; r < R; ++r) out = quad == r ? v[r] : out;
  return out;
}
__device__ __forceinline__ float row_value(float per_lane, int lane, int r) {
  return __shfl_sync(0xffffffffu, per_lane, (lane & ~3) | r);
}

struct FwdScratch {  // the warps' column partials of the current tile
  float col_m[kWarps][kTileCols];
  float col_l[kWarps][kTileCols];
};
struct DsScratch {  // the tile's P_c factors (the statistics themselves are read from global memory / L2)
  float a[kTileRows], b[kTileCols];
  float red[kWarps], dscale[kWarps];
};
template <class E> using FwdTile = HopperTile<E, kFwdStages>;
template <class E> using DsTile = HopperTile<E, kDsStages>;

static_assert(dynamic_smem_bytes<SharedStorage<FwdTile<cutlass::half_t>, FwdScratch>>() == kFwdSmemBytes &&
              dynamic_smem_bytes<SharedStorage<FwdTile<cutlass::bfloat16_t>, FwdScratch>>() == kFwdSmemBytes &&
              dynamic_smem_bytes<SharedStorage<DsTile<cutlass::half_t>, DsScratch>>() == kDsSmemBytes &&
              dynamic_smem_bytes<SharedStorage<DsTile<cutlass::bfloat16_t>, DsScratch>>() == kDsSmemBytes,
              "update kFwdSmemBytes / kDsSmemBytes in hopper_plan.h");

template <class Tile>
__global__ void __launch_bounds__(kThreads, kFwdCtasPerSm) contrastive_fwd_sm90_kernel(
    CUTE_GRID_CONSTANT TmaX<Tile> const tma_x, CUTE_GRID_CONSTANT TmaY<Tile> const tma_y,
    const float* __restrict__ scale_ptr, float* __restrict__ row_part_m, float* __restrict__ row_part_l,
    float* __restrict__ col_part_m, float* __restrict__ col_part_l, int M, int N, int D, int rb_per_split,
    int cb_per_split) {
#if defined(CLIPKERN_HOPPER_DEVICE)
  using Storage = SharedStorage<Tile, FwdScratch>;
  Storage& smem = aligned_storage<Storage>();
  const int rs = blockIdx.x, cs = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float scale = *scale_ptr;
  const int rb_begin = rs * rb_per_split, rb_end = min(rb_begin + rb_per_split, (M + kTileRows - 1) / kTileRows);
  const int cb_begin = cs * cb_per_split, cb_end = min(cb_begin + cb_per_split, (N + kTileCols - 1) / kTileCols);
  const int col_tiles = cb_end - cb_begin;
  auto tile_coords = [=](int t) { return make_tuple(rb_begin + t / col_tiles, cb_begin + t % col_tiles); };

  constexpr int R = 2 * (kTileRows / 64), C = kTileCols / 4;  // this thread's rows and columns of a tile
  static_assert(R == 4, "a quad's 4 lanes share R = 4 rows: lane q computes row q's per-row exps");
  const int quad = lane % 4;
  float m_run[R], l_run[R];  // running row statistics of the current row block

  auto epilogue = [&](int t, auto& acc, auto& coord) {
    static_assert(decltype(size<0>(acc))::value == R && decltype(size<1>(acc))::value == C, "tile per thread");
    const int rb = rb_begin + t / col_tiles, cb = cb_begin + t % col_tiles;
    const int i0 = rb * kTileRows, j0 = cb * kTileCols;
    if (cb == cb_begin) {
      CUTE_UNROLL
      for (int r = 0; r < R; ++r) m_run[r] = -kInf, l_run[r] = 0.f;
    }
    bool row_ok[R], col_ok[C];
    CUTE_UNROLL
    for (int r = 0; r < R; ++r) row_ok[r] = i0 + get<0>(coord(r, 0)) < M;
    CUTE_UNROLL
    for (int c = 0; c < C; ++c) col_ok[c] = j0 + get<1>(coord(0, c)) < N;

    // Row maxima first, then one pass of exps p_ij = exp(fma(raw, s, −m_new_i)) feeding both the row sums
    // and the column sums Σ_i p_ij·w_i (w_i = exp(m_new_i − t_w), t_w = the warp's max over its valid rows).
    // The quad's 4 lanes hold the same R = 4 rows: lane q computes row q's two per-row exps (row_value).
    float m_new[R];
    CUTE_UNROLL
    for (int r = 0; r < R; ++r) {
      float tile_max = -kInf;
      CUTE_UNROLL
      for (int c = 0; c < C; ++c) tile_max = col_ok[c] ? nan_max(tile_max, __fmul_rn(acc(r, c), scale)) : tile_max;
      m_new[r] = nan_max(m_run[r], quad_max(tile_max));
    }
    float t_w = -kInf;
    CUTE_UNROLL
    for (int r = 0; r < R; ++r) t_w = row_ok[r] ? nan_max(t_w, m_new[r]) : t_w;
    t_w = warp_max(t_w, 4);
    const float rescale_q = __expf(pick_row(m_run, quad) - pick_row(m_new, quad));  // exp(−inf) = 0: new row block
    const float w_q = pick_row(row_ok, quad) ? __expf(pick_row(m_new, quad) - t_w) : 0.f;
    float w[R], row_sum[R], col_l[C];
    CUTE_UNROLL
    for (int r = 0; r < R; ++r) w[r] = row_value(w_q, lane, r), row_sum[r] = 0.f;
    CUTE_UNROLL
    for (int c = 0; c < C; ++c) col_l[c] = 0.f;
    CUTE_UNROLL
    for (int r = 0; r < R; ++r) {
      CUTE_UNROLL
      for (int c = 0; c < C; ++c) {
        const float p = col_ok[c] ? __expf(fmaf(acc(r, c), scale, -m_new[r])) : 0.f;
        row_sum[r] += p;
        col_l[c] = fmaf(p, w[r], col_l[c]);
      }
    }
    CUTE_UNROLL
    for (int r = 0; r < R; ++r) {
      l_run[r] = l_run[r] * row_value(rescale_q, lane, r) + warp_sum(row_sum[r], 1, 4);
      m_run[r] = m_new[r];
    }
    bool lost = false;  // a valid column whose terms may have flushed to zero
    CUTE_UNROLL
    for (int c = 0; c < C; ++c) {
      col_l[c] = warp_sum(col_l[c], 4);
      lost |= col_ok[c] && t_w != -kInf && col_l[c] < kColSumFloor;
    }

    // this warp's column partials (lanes 0..3 hold all kTileCols columns) into shared memory
    __syncthreads();  // the previous tile's merge has read the scratch
    if (__any_sync(0xffffffffu, lost)) {  // exact: the column's own max, one exp per element
      CUTE_UNROLL
      for (int c = 0; c < C; ++c) {
        float m = -kInf;
        CUTE_UNROLL
        for (int r = 0; r < R; ++r) m = row_ok[r] ? nan_max(m, __fmul_rn(acc(r, c), scale)) : m;
        m = warp_max(m, 4);
        const float safe = m == -kInf ? 0.f : m;
        float l = 0.f;
        CUTE_UNROLL
        for (int r = 0; r < R; ++r) l += row_ok[r] ? __expf(fmaf(acc(r, c), scale, -safe)) : 0.f;
        l = warp_sum(l, 4);
        if (lane < 4) {
          smem.scratch.col_m[warp][get<1>(coord(0, c))] = m;
          smem.scratch.col_l[warp][get<1>(coord(0, c))] = l;
        }
      }
    } else if (lane < 4) {
      CUTE_UNROLL
      for (int c = 0; c < C; ++c) {
        smem.scratch.col_m[warp][get<1>(coord(0, c))] = t_w;
        smem.scratch.col_l[warp][get<1>(coord(0, c))] = col_l[c];
      }
    }
    __syncthreads();
    // one thread per column merges the warps' partials in warp order, then into this row split's partials
    // (the split's first row block stores)
    const int j = j0 + threadIdx.x;
    if (threadIdx.x < kTileCols && j < N) {
      LsePair part{-kInf, 0.f};
      for (int wi = 0; wi < kWarps; ++wi) part.m = nan_max(part.m, smem.scratch.col_m[wi][threadIdx.x]);
      if (part.m != -kInf)
        for (int wi = 0; wi < kWarps; ++wi) {  // one exp per warp partial
          const float l = smem.scratch.col_l[wi][threadIdx.x];
          part.l += l == 0.f ? 0.f : l * __expf(smem.scratch.col_m[wi][threadIdx.x] - part.m);
        }
      const int64_t o = int64_t(rs) * N + j;
      if (rb != rb_begin) part = lse_merge(LsePair{col_part_m[o], col_part_l[o]}, part);
      col_part_m[o] = part.m;
      col_part_l[o] = part.l;
    }
    if (cb == cb_end - 1 && lane % 4 == 0) {  // the row block is done: one partial per row and column split
      CUTE_UNROLL
      for (int r = 0; r < R; ++r) {
        if (!row_ok[r]) continue;
        const int64_t o = int64_t(cs) * M + i0 + get<0>(coord(r, 0));
        row_part_m[o] = m_run[r];
        row_part_l[o] = l_run[r];
      }
    }
  };
  for_each_raw_tile<Tile>(smem, tma_x, tma_y, M, N, D, (rb_end - rb_begin) * col_tiles, tile_coords, [] {},
                          epilogue);
#else
  __trap();  // not an sm_90a pass: never launched (compiled() is false or the device is not sm_90)
#endif
}

template <class Tile>
__global__ void __launch_bounds__(kThreads, kDsCtasPerSm) contrastive_ds_sm90_kernel(
    CUTE_GRID_CONSTANT TmaX<Tile> const tma_x, CUTE_GRID_CONSTANT TmaY<Tile> const tma_y,
    const float* __restrict__ scale_ptr, const float* __restrict__ row_max, const float* __restrict__ row_logsum,
    const float* __restrict__ col_max, const float* __restrict__ col_logsum, const float* __restrict__ g_row,
    const float* __restrict__ g_col, typename Tile::Element* __restrict__ ws, float* __restrict__ dscale_part,
    int M, int N, int D, int row0, int row_end) {
#if defined(CLIPKERN_HOPPER_DEVICE)
  using E = typename Tile::Element;
  using Storage = SharedStorage<Tile, DsScratch>;
  static_assert(kThreads == kTileRows && kTileCols <= kThreads, "one thread per row of the tile in the prologue");
  Storage& smem = aligned_storage<Storage>();
  DsScratch& st = smem.scratch;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const float scale = *scale_ptr;
  const int rb = row0 / kTileRows + blockIdx.x, cb = blockIdx.y;
  const int i0 = rb * kTileRows, j0 = cb * kTileCols;
  auto tile_coords = [=](int) { return make_tuple(rb, cb); };

  // prologue, while the first TMA loads fly: the factors of P_c = P_r·a_i·b_j for the tile (t = max over
  // its valid rows of m_r; one exp per row and per column; as col_probs_from_row_probs)
  auto prologue = [&] {
    const bool row_ok = i0 + tid < row_end;
    const float m_r = row_ok ? row_max[i0 + tid] : 0.f, logl_r = row_ok ? row_logsum[i0 + tid] : 0.f;
    const float t_warp = warp_max(row_ok ? m_r : -kInf, 1);
    if (lane == 0) st.red[warp] = t_warp;
    __syncthreads();
    float t = -kInf;
    for (int wi = 0; wi < kWarps; ++wi) t = nan_max(t, st.red[wi]);
    st.a[tid] = row_ok ? __expf((m_r - t) + logl_r) : 0.f;
    float e_b = -kInf;
    if (tid < kTileCols) {
      const bool col_ok = j0 + tid < N;
      e_b = col_ok ? (t - col_max[j0 + tid]) - col_logsum[j0 + tid] : -kInf;
      st.b[tid] = __expf(e_b);
    }
    e_b = warp_max(e_b, 1);
    __syncthreads();  // every thread has read st.red
    if (lane == 0) st.red[warp] = e_b;
    __syncthreads();
    float e_max = -kInf;
    for (int wi = 0; wi < kWarps; ++wi) e_max = nan_max(e_max, st.red[wi]);
    return e_max <= kMaxColExponent;  // block-uniform; NaN: false (one exp per element)
  };
  bool from_rows = true;
  float dscale_acc = 0.f;

  auto epilogue = [&](int, auto& acc, auto& coord) {
    constexpr int R = decltype(size<0>(acc))::value, C = decltype(size<1>(acc))::value;
    const bool pairs = N % 2 == 0;  // (even column, next column) is 4-byte aligned in ws
    int col[C];
    bool col_ok[C];
    float b[C], g_c[C];
    CUTE_UNROLL
    for (int c = 0; c < C; ++c) {
      const int cj = get<1>(coord(0, c));
      col[c] = j0 + cj;
      col_ok[c] = col[c] < N;
      b[c] = st.b[cj];
      g_c[c] = col_ok[c] ? g_col[col[c]] : 0.f;
    }
    CUTE_UNROLL
    for (int r = 0; r < R; ++r) {
      const int ri = get<0>(coord(r, 0)), row = i0 + ri;
      const bool row_ok = row < row_end;
      const float m_r = row_ok ? row_max[row] : 0.f, logl_r = row_ok ? row_logsum[row] : 0.f;
      const float g_r = row_ok ? g_row[row] : 0.f, a = st.a[ri];
      E* ws_row = ws + int64_t(row - row0) * N;
      CUTE_UNROLL
      for (int c = 0; c < C; c += 2) {
        E out[2];
        CUTE_UNROLL
        for (int h = 0; h < 2; ++h) {
          const int k = c + h;
          const float raw = acc(r, k);
          const float p_r = __expf(fmaf(raw, scale, -m_r) - logl_r);
          const float p_c = from_rows || !col_ok[k] ? p_r * a * b[k]
                                                    : __expf(fmaf(raw, scale, -col_max[col[k]]) - col_logsum[col[k]]);
          float ds = g_r * p_r + g_c[k] * p_c;
          ds = row_ok && col_ok[k] ? ds : 0.f;
          dscale_acc = fmaf(ds, raw, dscale_acc);
          out[h] = E(ds * scale);
        }
        if (!row_ok) continue;
        if (pairs && col_ok[c + 1] && col[c + 1] == col[c] + 1) {  // the accumulator's adjacent column pair
          uint32_t packed;
          memcpy(&packed, out, sizeof(packed));
          *reinterpret_cast<uint32_t*>(ws_row + col[c]) = packed;
        } else {
          if (col_ok[c]) ws_row[col[c]] = out[0];
          if (col_ok[c + 1]) ws_row[col[c + 1]] = out[1];
        }
      }
    }
  };
  for_each_raw_tile<Tile>(smem, tma_x, tma_y, M, N, D, 1, tile_coords, [&] { from_rows = prologue(); }, epilogue);

  dscale_acc = warp_sum(dscale_acc, 1);
  if (lane == 0) st.dscale[warp] = dscale_acc;
  __syncthreads();
  if (tid == 0) {
    float total = 0.f;
    for (int wi = 0; wi < kWarps; ++wi) total += st.dscale[wi];
    dscale_part[int64_t(rb) * gridDim.y + cb] = total;
  }
#else
  __trap();
#endif
}

// ----------------------------------------------------------------------------------------------------
// host launchers
// Calls f(E{}) with the CUTLASS element type (layout-identical to __half / __nv_bfloat16).
template <class F> cudaError_t dispatch_element(Element element, F&& f) {
  return element == Element::kHalf ? f(cutlass::half_t{}) : f(cutlass::bfloat16_t{});
}

template <class Kernel> cudaError_t allow_smem(Kernel kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

cudaError_t contrastive_fwd_partials(Element element, const void* x, const void* y, const float* scale, int M, int N,
                                     int D, const ForwardPlan& plan, float* row_part_m, float* row_part_l,
                                     float* col_part_m, float* col_part_l, cudaStream_t stream) {
  if (!compiled()) return cudaErrorNotSupported;
  return dispatch_element(element, [&](auto element_tag) -> cudaError_t {
    using E = decltype(element_tag);
    using Tile = FwdTile<E>;
    const auto tma_x = make_feature_tma<Tile, kTileRows>(static_cast<const E*>(x), M, D);
    const auto tma_y = make_feature_tma<Tile, kTileCols>(static_cast<const E*>(y), N, D);
    auto kernel = contrastive_fwd_sm90_kernel<Tile>;
    const int smem = dynamic_smem_bytes<SharedStorage<Tile, FwdScratch>>();
    if (cudaError_t e = allow_smem(kernel, smem); e != cudaSuccess) return e;
    kernel<<<dim3(plan.row_splits, plan.col_splits), kThreads, smem, stream>>>(
        tma_x, tma_y, scale, row_part_m, row_part_l, col_part_m, col_part_l, M, N, D, plan.rb_per_split,
        plan.cb_per_split);
    return cudaGetLastError();
  });
}

cudaError_t contrastive_ds_chunk(Element element, const void* x, const void* y, const float* scale, int M, int N, int D,
                                 int row0, int row_end, const float* row_max, const float* row_logsum,
                                 const float* col_max, const float* col_logsum, const float* g_row,
                                 const float* g_col, void* ws, float* dscale_part, cudaStream_t stream) {
  if (!compiled()) return cudaErrorNotSupported;
  if (row0 % kTileRows != 0) return cudaErrorInvalidValue;
  return dispatch_element(element, [&](auto element_tag) -> cudaError_t {
    using E = decltype(element_tag);
    using Tile = DsTile<E>;
    const auto tma_x = make_feature_tma<Tile, kTileRows>(static_cast<const E*>(x), M, D);
    const auto tma_y = make_feature_tma<Tile, kTileCols>(static_cast<const E*>(y), N, D);
    auto kernel = contrastive_ds_sm90_kernel<Tile>;
    const int smem = dynamic_smem_bytes<SharedStorage<Tile, DsScratch>>();
    if (cudaError_t e = allow_smem(kernel, smem); e != cudaSuccess) return e;
    kernel<<<dim3(ds_row_tiles(row_end - row0), ds_col_tiles(N)), kThreads, smem, stream>>>(
        tma_x, tma_y, scale, row_max, row_logsum, col_max, col_logsum, g_row, g_col, static_cast<E*>(ws),
        dscale_part, M, N, D, row0, row_end);
    return cudaGetLastError();
  });
}

#else  // no CuTe headers: the Hopper path is not built

cudaError_t contrastive_fwd_partials(Element, const void*, const void*, const float*, int, int, int, const ForwardPlan&,
                                     float*, float*, float*, float*, cudaStream_t) {
  return cudaErrorNotSupported;
}
cudaError_t contrastive_ds_chunk(Element, const void*, const void*, const float*, int, int, int, int, int, const float*,
                                 const float*, const float*, const float*, const float*, const float*, void*, float*,
                                 cudaStream_t) {
  return cudaErrorNotSupported;
}

#endif

}  // namespace clipkern_hopper
