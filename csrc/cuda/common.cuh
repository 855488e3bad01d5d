// Shared device helpers of clipkern's CUDA kernels: dtype conversion, NaN-propagating max, and the
// log-sum-exp partial kept as a (max, sum) pair.
//
// A log-sum-exp partial over a set of values v is the pair (m, l) with m = max v and l = Σ exp(v − m),
// so lse = m + log l. Two partials merge as
//     m = max(m1, m2),   l = l1·exp(m1 − m) + l2·exp(m2 − m)
// The empty set is (−inf, 0); merging with it is the identity (the exp(−inf − −inf) = NaN case is
// guarded). max propagates NaN, so a NaN input never yields a finite-looking statistic.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

// Host+device helpers (HD) are also checked on the CPU by tests/cuda_host_check.cu.
#define CK_HD __host__ __device__ __forceinline__

namespace clipkern_cuda {

constexpr float kInf = __builtin_huge_valf();

// Compile with torch's flags (-D__CUDA_NO_HALF_CONVERSIONS__ etc.): convert with the explicit intrinsics.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Whether the matmul tiles of element type T run on the tensor cores (nvcuda::wmma): fp16 always
// (sm_70+), bf16 from sm_80 (older archs, e.g. a JIT build for sm_75, take the fp32 SIMT path), fp32 never.
template <typename T> struct UseMma {
  static constexpr bool value = !std::is_same<T, float>::value
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
                                && !std::is_same<T, __nv_bfloat16>::value
#endif
      ;
};

template <typename T> __device__ __forceinline__ T zero_value() { return from_float<T>(0.f); }

// max that returns NaN when either argument is NaN (fmaxf would drop it).
CK_HD float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

struct LsePair {
  float m;  // running max (−inf for the empty set)
  float l;  // Σ exp(v − m)
};

CK_HD LsePair lse_empty() { return {-kInf, 0.f}; }

CK_HD LsePair lse_merge(LsePair a, LsePair b) {
  const float m = nan_max(a.m, b.m);
  if (m == -kInf) return {m, 0.f};  // both empty
  const float la = a.l == 0.f ? 0.f : a.l * expf(a.m - m);
  const float lb = b.l == 0.f ? 0.f : b.l * expf(b.m - m);
  return {m, la + lb};
}

// Adds one value v to a running partial: one exp per value.
CK_HD void lse_push(LsePair& p, float v) {
  if (v > p.m) {
    p.l = p.l * expf(p.m - v) + 1.f;  // p.m = −inf → exp(−inf) = 0
    p.m = v;
  } else if (v != v) {
    p.m = v;
    p.l = v;
  } else if (v != -kInf) {
    p.l += expf(v - p.m);
  }
}

// Merge of two partials within a warp across lanes `lane ^ offset`.
__device__ __forceinline__ LsePair lse_shfl_xor(LsePair p, int offset, unsigned mask = 0xffffffffu) {
  LsePair o{__shfl_xor_sync(mask, p.m, offset), __shfl_xor_sync(mask, p.l, offset)};
  return lse_merge(p, o);
}

struct LseMergeOp {
  CK_HD LsePair operator()(const LsePair& a, const LsePair& b) const { return lse_merge(a, b); }
};

inline int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }
__device__ __forceinline__ int ceil_div_dev(int a, int b) { return (a + b - 1) / b; }

// The dynamic shared memory of every kernel (one declaration for the whole translation unit).
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char clipkern_dynamic_smem[];
  return clipkern_dynamic_smem;
}

// Rounds a shared-memory pointer up to a 128-byte boundary (wmma needs 32-byte aligned tiles; the
// launcher allocates 128 spare bytes of dynamic shared memory for this).
template <typename P> __device__ __forceinline__ P* align128(void* p) {
  const size_t a = reinterpret_cast<size_t>(p);
  return reinterpret_cast<P*>((a + 127) & ~size_t(127));
}

}  // namespace clipkern_cuda
