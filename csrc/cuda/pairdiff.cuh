// All-pairs pairwise-difference (PC-CLIP) log-sum-exp and its backward (schemas clipkern::pairdiff_fwd
// / _bwd). Element-heavy, no matmul; never materialises P×N² values.
//
// Notation (the code's symbols): a (P×N fp32), r (N×N fp32, r need not be symmetric; r = 0 marks a
// degenerate pair, which stays a candidate with logit 0), s = scale:
//     L[p,i,j] = s·(a[p,i] − a[p,j])·r[i,j]          candidates: every ordered i ≠ j
//     lse_max[p] = max_{i≠j} L,   lse_logsum[p] = log Σ_{i≠j} exp(L − lse_max)
// N == 1 (no candidate): lse_max = −inf and lse_logsum = log 0 = −inf (the Python side never calls it).
//
// Forward (`pairdiff_fwd_kernel`): CTA (p block of PF_P texts, i block of PF_I rows); thread
// (p, j lane) walks the j chunks (staged in shared memory) and the block's i, pushing each logit into an
// online (max, Σexp) with one exp per logit. The partial of each (p, i block) goes to part[p, iblock];
// `pairdiff_merge_kernel` merges them per p in a fixed order (deterministic, no atomics).
// Extra memory: P·⌈N/PF_I⌉·8 bytes.
//
// Backward, π[p,i,j] = exp((L[p,i,j] − lse_max[p]) − lse_logsum[p]) for i ≠ j, 0 for i == j:
//     u[p,k] = g[p]·(Σ_j r[k,j]·π[p,k,j] − Σ_i r[i,k]·π[p,i,k])      `pairdiff_bwd_u_kernel`,
//              thread (p, k), walks j; loads both r[k, j] and r[j, k] (r need not be symmetric)
//     t[i,j] = Σ_p g[p]·π[p,i,j]·(a[p,i] − a[p,j])                  `pairdiff_bwd_t_kernel`,
//              thread (i, j), walks p
// Every output element is written by exactly one thread: deterministic, no atomics.
#pragma once

#include "common.cuh"

namespace clipkern_cuda {
namespace pairdiff {

constexpr int PF_P = 4, PF_J = 64, PF_I = 32, PF_NT = PF_P * PF_J;

__global__ void __launch_bounds__(PF_NT) pairdiff_fwd_kernel(
    const float* __restrict__ a, const float* __restrict__ r, const float* __restrict__ scale_ptr,
    float* __restrict__ part_m, float* __restrict__ part_l, int P, int N) {
  __shared__ float r_s[PF_I][PF_J + 1];
  __shared__ float a_i[PF_P][PF_I];
  __shared__ float a_j[PF_P][PF_J];
  __shared__ float red_m[PF_NT / 32], red_l[PF_NT / 32];
  const int tid = threadIdx.x, pl = tid / PF_J, jl = tid % PF_J;
  const int p0 = blockIdx.x * PF_P, i0 = blockIdx.y * PF_I;
  const int np = min(PF_P, P - p0), ni = min(PF_I, N - i0);
  const float scale = *scale_ptr;
  for (int e = tid; e < PF_P * PF_I; e += PF_NT) {
    const int pp = e / PF_I, ii = e % PF_I;
    a_i[pp][ii] = (pp < np && ii < ni) ? a[(long long)(p0 + pp) * N + i0 + ii] : 0.f;
  }
  LsePair acc = lse_empty();
  for (int j0 = 0; j0 < N; j0 += PF_J) {
    const int nj = min(PF_J, N - j0);
    __syncthreads();
    for (int e = tid; e < PF_I * PF_J; e += PF_NT) {
      const int ii = e / PF_J, jj = e % PF_J;
      r_s[ii][jj] = (ii < ni && jj < nj) ? r[(long long)(i0 + ii) * N + j0 + jj] : 0.f;
    }
    for (int e = tid; e < PF_P * PF_J; e += PF_NT) {
      const int pp = e / PF_J, jj = e % PF_J;
      a_j[pp][jj] = (pp < np && jj < nj) ? a[(long long)(p0 + pp) * N + j0 + jj] : 0.f;
    }
    __syncthreads();
    if (pl < np && jl < nj) {
      const int j = j0 + jl;
      const float aj = a_j[pl][jl];
      for (int ii = 0; ii < ni; ++ii) {
        if (i0 + ii == j) continue;
        lse_push(acc, scale * (a_i[pl][ii] - aj) * r_s[ii][jl]);
      }
    }
  }
  // merge the 64 lanes of each text: two warps per text
  for (int off = 16; off > 0; off >>= 1) acc = lse_shfl_xor(acc, off);
  const int warp = tid / 32;
  if (tid % 32 == 0) { red_m[warp] = acc.m; red_l[warp] = acc.l; }
  __syncthreads();
  if (tid < PF_P && tid < np) {
    LsePair p = lse_merge(LsePair{red_m[2 * tid], red_l[2 * tid]}, LsePair{red_m[2 * tid + 1], red_l[2 * tid + 1]});
    const long long o = (long long)(p0 + tid) * gridDim.y + blockIdx.y;
    part_m[o] = p.m;
    part_l[o] = p.l;
  }
}

__global__ void pairdiff_merge_kernel(const float* __restrict__ part_m, const float* __restrict__ part_l, int P,
                                      int splits, float* __restrict__ lse_max, float* __restrict__ lse_logsum) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= P) return;
  LsePair acc = lse_empty();
  for (int s = 0; s < splits; ++s) acc = lse_merge(acc, LsePair{part_m[(long long)p * splits + s], part_l[(long long)p * splits + s]});
  lse_max[p] = acc.m;
  lse_logsum[p] = logf(acc.l);
}

constexpr int PU_P = 4, PU_K = 64, PU_J = 64, PU_NT = PU_P * PU_K;

__global__ void __launch_bounds__(PU_NT) pairdiff_bwd_u_kernel(
    const float* __restrict__ a, const float* __restrict__ r, const float* __restrict__ scale_ptr,
    const float* __restrict__ lse_max, const float* __restrict__ lse_logsum, const float* __restrict__ g,
    float* __restrict__ u, int P, int N) {
  __shared__ float r_kj[PU_K][PU_J + 1];  // r[k, j]
  __shared__ float r_jk[PU_J][PU_K + 1];  // r[j, k]
  __shared__ float a_j[PU_P][PU_J];
  const int tid = threadIdx.x, pl = tid / PU_K, kl = tid % PU_K;
  const int p0 = blockIdx.x * PU_P, k0 = blockIdx.y * PU_K;
  const int np = min(PU_P, P - p0), nk = min(PU_K, N - k0);
  const bool active = pl < np && kl < nk;
  const int p = p0 + pl, k = k0 + kl;
  const float scale = *scale_ptr;
  const float a_k = active ? a[(long long)p * N + k] : 0.f;
  const float m = active ? lse_max[p] : 0.f, logl = active ? lse_logsum[p] : 0.f;
  float sum = 0.f;
  for (int j0 = 0; j0 < N; j0 += PU_J) {
    const int nj = min(PU_J, N - j0);
    __syncthreads();
    for (int e = tid; e < PU_K * PU_J; e += PU_NT) {
      const int kk = e / PU_J, jj = e % PU_J;
      r_kj[kk][jj] = (kk < nk && jj < nj) ? r[(long long)(k0 + kk) * N + j0 + jj] : 0.f;
    }
    for (int e = tid; e < PU_J * PU_K; e += PU_NT) {
      const int jj = e / PU_K, kk = e % PU_K;
      r_jk[jj][kk] = (kk < nk && jj < nj) ? r[(long long)(j0 + jj) * N + k0 + kk] : 0.f;
    }
    for (int e = tid; e < PU_P * PU_J; e += PU_NT) {
      const int pp = e / PU_J, jj = e % PU_J;
      a_j[pp][jj] = (pp < np && jj < nj) ? a[(long long)(p0 + pp) * N + j0 + jj] : 0.f;
    }
    __syncthreads();
    if (active) {
      for (int jj = 0; jj < nj; ++jj) {
        if (j0 + jj == k) continue;
        const float aj = a_j[pl][jj];
        const float rkj = r_kj[kl][jj], rjk = r_jk[jj][kl];
        const float pi_kj = expf((scale * (a_k - aj) * rkj - m) - logl);
        const float pi_jk = expf((scale * (aj - a_k) * rjk - m) - logl);
        sum += rkj * pi_kj - rjk * pi_jk;
      }
    }
  }
  if (active) u[(long long)p * N + k] = g[p] * sum;
}

constexpr int PT_I = 8, PT_J = 32, PT_P = 64, PT_NT = PT_I * PT_J;

__global__ void __launch_bounds__(PT_NT) pairdiff_bwd_t_kernel(
    const float* __restrict__ a, const float* __restrict__ r, const float* __restrict__ scale_ptr,
    const float* __restrict__ lse_max, const float* __restrict__ lse_logsum, const float* __restrict__ g,
    float* __restrict__ t, int P, int N) {
  __shared__ float a_i[PT_P][PT_I];
  __shared__ float a_j[PT_P][PT_J];
  __shared__ float s_m[PT_P], s_logl[PT_P], s_g[PT_P];
  const int tid = threadIdx.x, il = tid / PT_J, jl = tid % PT_J;
  const int i0 = blockIdx.y * PT_I, j0 = blockIdx.x * PT_J;
  const int ni = min(PT_I, N - i0), nj = min(PT_J, N - j0);
  const int i = i0 + il, j = j0 + jl;
  const bool active = il < ni && jl < nj;
  const float scale = *scale_ptr;
  const float rij = active ? r[(long long)i * N + j] : 0.f;
  float acc = 0.f;
  for (int q0 = 0; q0 < P; q0 += PT_P) {
    const int nq = min(PT_P, P - q0);
    __syncthreads();
    for (int e = tid; e < PT_P * PT_I; e += PT_NT) {
      const int qq = e / PT_I, ii = e % PT_I;
      a_i[qq][ii] = (qq < nq && ii < ni) ? a[(long long)(q0 + qq) * N + i0 + ii] : 0.f;
    }
    for (int e = tid; e < PT_P * PT_J; e += PT_NT) {
      const int qq = e / PT_J, jj = e % PT_J;
      a_j[qq][jj] = (qq < nq && jj < nj) ? a[(long long)(q0 + qq) * N + j0 + jj] : 0.f;
    }
    if (tid < PT_P) {
      const bool ok = tid < nq;
      s_m[tid] = ok ? lse_max[q0 + tid] : 0.f;
      s_logl[tid] = ok ? lse_logsum[q0 + tid] : 0.f;
      s_g[tid] = ok ? g[q0 + tid] : 0.f;
    }
    __syncthreads();
    if (active && i != j) {
      for (int qq = 0; qq < nq; ++qq) {
        const float diff = a_i[qq][il] - a_j[qq][jl];
        const float pi = expf((scale * diff * rij - s_m[qq]) - s_logl[qq]);
        acc = fmaf(s_g[qq] * pi, diff, acc);
      }
    }
  }
  if (active) t[(long long)i * N + j] = acc;
}

}  // namespace pairdiff
}  // namespace clipkern_cuda
