// Per-row ListMLE (Plackett–Luce) loss and its closed-form backward with CUB block sort and scans
// (schemas clipkern::listmle_fwd / _bwd). One CTA per row; the whole row lives on chip.
//
// Notation (the code's symbols): one row of scores q (they get the gradient) and targets t (they only
// choose the order); π = argsort_desc(t), ties broken by the LOWER column index; q_k = q[π_k], k = 0..N−1;
// w_k = 1, or 1/log2(k + 2) with decay_log.
//
// Sort key: each fp32 target becomes an order-preserving unsigned 32-bit integer
//     u = bits ^ 0x80000000 for t ≥ 0,  ~bits for t < 0      (−0.0 is first made +0.0: it ties with +0.0)
// negated for a descending order (~u) and packed with the column index j in the low COLBITS bits:
//     key = (~u) << COLBITS | j          (uint64, bits [0, 32 + COLBITS) sorted)
// One ascending cub::BlockRadixSort gives the descending order and the stable tie-break together.
// Padding slots (N < capacity) get the all-ones key and sort last.
//
// Forward:
//     lse_k = logsumexp(q_k, ..., q_{N−1}) = m_k + log l_k        suffix scan of (max, Σexp) pairs
//             (cub::BlockScan over the reversed row with the associative merge of common.cuh)
//     ℓ = Σ_k w_k ((m_k − q_k) + log l_k)  +  Σ_j 0·t_j            (a non-finite target makes ℓ NaN)
// Backward, given g = ∂Loss/∂ℓ of the row:
//     ∂ℓ/∂q_k = exp(q_k + logC_k) − w_k,   logC_k = logcumsumexp_{m≤k}(log w_m − lse_m)   (prefix scan)
//     out[row, π_k] = g · ∂ℓ/∂q_k           (a permutation: every column written exactly once)
// Since lse_m ≥ q_k for m ≤ k, the exponent is at most log Σ_{m≤k} w_m: nothing overflows, and no
// product of probabilities is formed.
//
// Row capacity = THREADS × IPT, dispatched over a few sizes up to kListmleMaxN = 8192
// (`for_each_row_capacity`); longer rows raise an error in the launcher (the Python side falls back to
// Triton / the reference). Shared memory per block: 133 KB at 8192 (fits sm_80 and sm_90; a GPU with
// less opt-in shared memory gets a clear error).
//
// Registers (no spills, checked by tests/test_listmle_spills.py for sm_80 and sm_90a): a thread holds
// its IPT 64-bit keys plus the radix ranking's per-item ranks, prefixes and counter pointers. At 8192
// columns 512 threads × 16 keys needed more than the 128 registers a 512-thread block allows and
// spilled 56 bytes on sm_90a; 256 threads × 32 keys (cap 255 registers) uses ~220 and does not. The
// sort keeps its raking-scan partials in shared memory rather than registers (MEMOIZE_OUTER_SCAN =
// false), which also removed a 4-byte spill of the 1024-column backward. The sort order is a total
// order (column index in the key), so neither choice changes which permutation is produced.
#pragma once

#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cstring>
#include <type_traits>

#include "common.cuh"

namespace clipkern_cuda {
namespace listmle {

constexpr int kListmleMaxN = 8192;

CK_HD unsigned long long sort_key(float t, int j, int colbits) {
  unsigned int bits;
  memcpy(&bits, &t, sizeof(bits));
  if (bits == 0x80000000u) bits = 0u;  // −0.0 → +0.0
  const unsigned int u = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<unsigned long long>(~u) << colbits) | static_cast<unsigned long long>(j);
}

CK_HD float log_weight(int k, bool decay_log) {
  return decay_log ? -logf(log2f(static_cast<float>(k) + 2.f)) : 0.f;
}
CK_HD float weight(int k, bool decay_log) {
  return decay_log ? 1.f / log2f(static_cast<float>(k) + 2.f) : 1.f;
}

// Calls f(THREADS, IPT, COLBITS) (as std::integral_constant values) for the smallest row capacity
// THREADS × IPT ≥ N, COLBITS = log2(capacity); returns false (f not called) when N > kListmleMaxN.
template <typename F> bool for_each_row_capacity(int N, F&& f) {
  using std::integral_constant;
  if (N <= 256) f(integral_constant<int, 128>{}, integral_constant<int, 2>{}, integral_constant<int, 8>{});
  else if (N <= 1024) f(integral_constant<int, 256>{}, integral_constant<int, 4>{}, integral_constant<int, 10>{});
  else if (N <= 4096) f(integral_constant<int, 512>{}, integral_constant<int, 8>{}, integral_constant<int, 12>{});
  else if (N <= kListmleMaxN) f(integral_constant<int, 256>{}, integral_constant<int, 32>{}, integral_constant<int, 13>{});
  else return false;
  return true;
}

template <int THREADS, int IPT> struct ListmleBlock {
  static constexpr int CAP = THREADS * IPT;
  // 4 radix bits per pass; MEMOIZE_OUTER_SCAN = false keeps the scan partials out of registers
  using Sort = cub::BlockRadixSort<unsigned long long, THREADS, IPT, cub::NullType, 4, false>;
  using Scan = cub::BlockScan<LsePair, THREADS>;
  using Reduce = cub::BlockReduce<float, THREADS>;
  struct Shared {
    union {
      typename Sort::TempStorage sort;
      typename Scan::TempStorage scan;
      typename Reduce::TempStorage reduce;
    } temp;
    float q[CAP];  // q in sorted order
    float v[CAP];  // backward: log w_k − lse_k
  };
};

// Loads, sorts one row; leaves the sorted keys (blocked: thread owns positions tid·IPT + i) in `keys`,
// q in sorted order in sh.q, and returns this thread's Σ 0·t.
template <typename T, int THREADS, int IPT, int COLBITS>
__device__ __forceinline__ float sort_row(const T* scores_row, const float* targets_row, int N,
                                          typename ListmleBlock<THREADS, IPT>::Shared& sh,
                                          unsigned long long (&keys)[IPT]) {
  using Blk = ListmleBlock<THREADS, IPT>;
  constexpr unsigned long long PAD = (1ull << (32 + COLBITS)) - 1ull;
  const int tid = threadIdx.x;
  float nan_probe = 0.f;
#pragma unroll
  for (int i = 0; i < IPT; ++i) {
    const int j = i * THREADS + tid;  // striped, coalesced; the sort does not care
    if (j < N) {
      const float t = targets_row[j];
      nan_probe += 0.f * t;
      keys[i] = sort_key(t, j, COLBITS);
    } else {
      keys[i] = PAD;
    }
  }
  typename Blk::Sort(sh.temp.sort).Sort(keys, 0, 32 + COLBITS);
#pragma unroll
  for (int i = 0; i < IPT; ++i) {
    const int k = tid * IPT + i;
    if (k < N) sh.q[k] = to_float(scores_row[keys[i] & ((1ull << COLBITS) - 1ull)]);
  }
  __syncthreads();  // sh.q complete, sort storage free
  return nan_probe;
}

// Suffix (max, Σexp) scan: lse_k = m + log l for position k = N−1−e with e = tid·IPT + i.
template <int THREADS, int IPT>
__device__ __forceinline__ void suffix_lse(typename ListmleBlock<THREADS, IPT>::Shared& sh, int N, LsePair (&items)[IPT]) {
  using Blk = ListmleBlock<THREADS, IPT>;
  const int tid = threadIdx.x;
#pragma unroll
  for (int i = 0; i < IPT; ++i) {
    const int e = tid * IPT + i;
    items[i] = e < N ? LsePair{sh.q[N - 1 - e], 1.f} : lse_empty();
  }
  typename Blk::Scan(sh.temp.scan).InclusiveScan(items, items, LseMergeOp());
  __syncthreads();  // scan storage free
}

template <typename T, int THREADS, int IPT, int COLBITS>
__global__ void __launch_bounds__(THREADS) listmle_fwd_kernel(const T* __restrict__ scores,
                                                              const float* __restrict__ targets,
                                                              float* __restrict__ loss, int N, bool decay_log) {
  using Blk = ListmleBlock<THREADS, IPT>;
  auto& sh = *align128<typename Blk::Shared>(dynamic_smem());
  const long long row = blockIdx.x;
  unsigned long long keys[IPT];
  float partial = sort_row<T, THREADS, IPT, COLBITS>(scores + row * N, targets + row * N, N, sh, keys);
  LsePair items[IPT];
  suffix_lse<THREADS, IPT>(sh, N, items);
#pragma unroll
  for (int i = 0; i < IPT; ++i) {
    const int e = threadIdx.x * IPT + i;
    if (e < N) {
      const int k = N - 1 - e;
      partial += weight(k, decay_log) * ((items[i].m - sh.q[k]) + logf(items[i].l));
    }
  }
  const float total = typename Blk::Reduce(sh.temp.reduce).Sum(partial);
  if (threadIdx.x == 0) loss[row] = total;
}

template <typename T, int THREADS, int IPT, int COLBITS>
__global__ void __launch_bounds__(THREADS) listmle_bwd_kernel(const T* __restrict__ scores,
                                                              const float* __restrict__ targets,
                                                              const float* __restrict__ g,
                                                              T* __restrict__ grad, int N, bool decay_log) {
  using Blk = ListmleBlock<THREADS, IPT>;
  auto& sh = *align128<typename Blk::Shared>(dynamic_smem());
  const long long row = blockIdx.x;
  unsigned long long keys[IPT];
  sort_row<T, THREADS, IPT, COLBITS>(scores + row * N, targets + row * N, N, sh, keys);
  LsePair items[IPT];
  suffix_lse<THREADS, IPT>(sh, N, items);
#pragma unroll
  for (int i = 0; i < IPT; ++i) {
    const int e = threadIdx.x * IPT + i;
    if (e < N) {
      const int k = N - 1 - e;
      sh.v[k] = log_weight(k, decay_log) - (items[i].m + logf(items[i].l));
    }
  }
  __syncthreads();
  // prefix scan in sorted order: thread owns positions tid·IPT + i, the same as its keys
#pragma unroll
  for (int i = 0; i < IPT; ++i) {
    const int k = threadIdx.x * IPT + i;
    items[i] = k < N ? LsePair{sh.v[k], 1.f} : lse_empty();
  }
  typename Blk::Scan(sh.temp.scan).InclusiveScan(items, items, LseMergeOp());
  const float gr = g[row];
#pragma unroll
  for (int i = 0; i < IPT; ++i) {
    const int k = threadIdx.x * IPT + i;
    if (k < N) {
      const float log_c = items[i].m + logf(items[i].l);
      const float d = expf(sh.q[k] + log_c) - weight(k, decay_log);
      const long long col = static_cast<long long>(keys[i] & ((1ull << COLBITS) - 1ull));
      grad[row * N + col] = from_float<T>(gr * d);
    }
  }
}

}  // namespace listmle
}  // namespace clipkern_cuda
