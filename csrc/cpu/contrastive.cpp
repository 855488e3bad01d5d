// CPU implementation of clipkern::contrastive_fwd / contrastive_bwd (the oracle-equivalent twin of
// the CUDA and Triton kernels; backend="cuda" on CPU tensors, and `auto` on a CPU when built).
//
//   raw = x yᵀ (BLAS),  S = scale · raw          x: (M, D), y: (N, D); fp32 math (fp64 for fp64 input)
//   forward:  row_max[i] = max_j S[i,j],   row_logsum[i] = log Σ_j exp(S[i,j] − row_max[i])
//             col_max[j] = max_i S[i,j],   col_logsum[j] = log Σ_i exp(S[i,j] − col_max[j])
//   backward: P_r = exp(fma(raw, s, −row_max) − row_logsum),  P_c = exp(fma(raw, s, −col_max) − col_logsum)
//             (every exponent is fma(raw, s, −m), in the forward too, as in the CUDA and Triton kernels, so
//             P is consistent with its statistics; the pair is never merged into one lse: at |S| ~ 100
//             the rounding of an fp32 lse would be the relative error of every P)
//             dS = g_row[:,None]·P_r + g_col[None,:]·P_c   (+ pos_grad on the diagonal dS[i, i] when given:
//             the positives' gradient of a loss with labels i; its scale term pos_grad·Σ raw_ii is the caller's)
//             dx = scale·dS y,  dy = scale·dSᵀ x,  dscale = Σ_ij dS_ij raw_ij
//
// Structure (docs/design.md §4.2, the GPU backward's): rows are taken in chunks of chunk_rows()
// (chunking.h: the GPU's workspace budget), the chunk's raw tile (chunk × N) comes from one BLAS GEMM,
// and one fused pass over it (at::parallel_for over rows) applies the statistics. Forward: a row's
// statistics are final within its chunk; the column statistics of the chunk are merged into running
// (max, Σexp) pairs by a second pass, parallel over column ranges. Backward: the pass overwrites the
// tile with s·dS and accumulates Σ dS·raw per row (in double); then dx[chunk] = ws·y and dy += wsᵀ·x[chunk]
// are two BLAS GEMMs. 2 exps per logit in each direction; extra memory: one tile, dx and dy.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "chunking.h"

#include <algorithm>
#include <limits>
#include <tuple>

namespace {

void check_features(const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2, "clipkern::contrastive: ", name, " must be 2-D (rows, dim), got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16 ||
                  t.scalar_type() == at::kDouble,
              "clipkern::contrastive: ", name, " must be float32/float16/bfloat16/float64, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "clipkern::contrastive (CPU): ", name, " must be a CPU tensor, got ", t.device());
}

void check_vector(const char* name, const at::Tensor& t, int64_t n) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "clipkern::contrastive_bwd: ", name, " must have shape (", n,
              ",), got ", t.sizes());
  TORCH_CHECK(t.is_floating_point(), "clipkern::contrastive_bwd: ", name, " must be floating, got ", t.scalar_type());
}

// Accumulation dtype: fp64 for fp64 features, fp32 otherwise.
at::ScalarType acc_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_pair(const at::Tensor& x, const at::Tensor& y, const at::Tensor& scale) {
  check_features("x", x);
  check_features("y", y);
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "clipkern::contrastive: x is ", x.scalar_type(), " but y is ",
              y.scalar_type(), "; they must have one dtype");
  TORCH_CHECK(x.size(1) == y.size(1), "clipkern::contrastive: x has dim ", x.size(1), " but y has dim ", y.size(1));
  TORCH_CHECK(scale.numel() == 1 && scale.dim() == 0, "clipkern::contrastive: scale must be a 0-d tensor, got shape ",
              scale.sizes());
  TORCH_CHECK(scale.device().is_cpu() && scale.is_floating_point(),
              "clipkern::contrastive (CPU): scale must be a floating CPU tensor, got ", scale.scalar_type(), " on ",
              scale.device());
}

// NaN-propagating max: once NaN, always NaN (a NaN logit must never yield a finite statistic).
template <typename T> inline T nan_max(T a, T b) { return (b > a || std::isnan(b)) && !std::isnan(a) ? b : a; }
template <typename T> inline T finite_or_zero(T m) { return std::isfinite(m) ? m : T(0); }

// Row statistics of one chunk: raw is rows × N; writes (max, log Σexp) of each row.
template <typename T>
void chunk_row_stats(const T* raw, int64_t rows, int64_t N, T s, T* row_max, T* row_logsum) {
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* v = raw + r * N;
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < N; ++j) m = nan_max(m, v[j] * s);
      const T shift = finite_or_zero(m);
      T sum = 0;
      for (int64_t j = 0; j < N; ++j) sum += std::exp(std::fma(v[j], s, -shift));
      row_max[r] = m;
      row_logsum[r] = std::log(sum);
    }
  });
}

// Merges one chunk's column statistics into the running (col_max, col_sum), parallel over column ranges.
template <typename T>
void chunk_col_stats(const T* raw, int64_t rows, int64_t N, T s, T* col_max, T* col_sum) {
  at::parallel_for(0, N, 256, [&](int64_t j0, int64_t j1) {
    std::vector<T> block_max(j1 - j0, -std::numeric_limits<T>::infinity()), block_sum(j1 - j0, T(0));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = j0; j < j1; ++j) block_max[j - j0] = nan_max(block_max[j - j0], raw[r * N + j] * s);
    for (int64_t j = j0; j < j1; ++j) block_max[j - j0] = nan_max(col_max[j], block_max[j - j0]);  // new max
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = j0; j < j1; ++j)
        block_sum[j - j0] += std::exp(std::fma(raw[r * N + j], s, -finite_or_zero(block_max[j - j0])));
    for (int64_t j = j0; j < j1; ++j) {
      const T shift = finite_or_zero(block_max[j - j0]);
      // the running sum rescaled to the new max; a column whose max was still −inf has sum 0
      const bool empty = col_max[j] == -std::numeric_limits<T>::infinity();
      const T kept = empty ? T(0) : col_sum[j] * std::exp(col_max[j] - shift);
      col_sum[j] = kept + block_sum[j - j0];
      col_max[j] = block_max[j - j0];
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_fwd_cpu(const at::Tensor& x_in,
                                                                               const at::Tensor& y_in,
                                                                               const at::Tensor& scale) {
  check_pair(x_in, y_in, scale);
  const auto acc = acc_type(x_in);
  const at::Tensor x = x_in.to(acc).contiguous(), y = y_in.to(acc).contiguous();
  const int64_t M = x.size(0), N = y.size(0), D = x.size(1);
  const double nan = std::numeric_limits<double>::quiet_NaN();  // unwritten outputs would show as NaN
  at::Tensor row_max = at::full({M}, nan, x.options()), row_logsum = at::full({M}, nan, x.options());
  at::Tensor col_max = at::full({N}, -std::numeric_limits<double>::infinity(), x.options());
  at::Tensor col_sum = at::zeros({N}, x.options());
  const int64_t chunk = clipkern_cpu::chunk_rows(M, N, D, x_in.element_size(), x.element_size());
  at::Tensor tile = at::empty({std::min(chunk, std::max<int64_t>(M, 1)), N}, x.options());
  const at::Tensor yt = y.t();
  AT_DISPATCH_FLOATING_TYPES(acc, "clipkern_contrastive_fwd_cpu", [&] {
    const auto s = scale.item<scalar_t>();
    for (int64_t start = 0; start < M; start += chunk) {
      const int64_t rows = std::min(chunk, M - start);
      at::Tensor raw = tile.narrow(0, 0, rows);
      at::mm_out(raw, x.narrow(0, start, rows), yt);
      chunk_row_stats<scalar_t>(raw.data_ptr<scalar_t>(), rows, N, s, row_max.data_ptr<scalar_t>() + start,
                                row_logsum.data_ptr<scalar_t>() + start);
      chunk_col_stats<scalar_t>(raw.data_ptr<scalar_t>(), rows, N, s, col_max.data_ptr<scalar_t>(),
                                col_sum.data_ptr<scalar_t>());
    }
  });
  return {row_max, row_logsum, col_max, col_sum.log()};
}

// One chunk of the backward: overwrites raw (rows × N) with s·dS and writes each row's Σ dS·raw.
template <typename T>
void chunk_ds(T* raw, int64_t rows, int64_t N, T s, const T* rmax, const T* rlog, const T* g_row, const T* cmax,
              const T* clog, const T* g_col, double* row_dscale) {
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* v = raw + r * N;
      double dscale = 0;
      for (int64_t j = 0; j < N; ++j) {
        const T dot = v[j];
        const T ds = g_row[r] * std::exp(std::fma(dot, s, -rmax[r]) - rlog[r]) +
                     g_col[j] * std::exp(std::fma(dot, s, -cmax[j]) - clog[j]);
        dscale += static_cast<double>(ds) * static_cast<double>(dot);
        v[j] = ds * s;
      }
      row_dscale[r] = dscale;
    }
  });
}

void check_pos_grad(const at::Tensor& pos_grad, int64_t M, int64_t N) {
  TORCH_CHECK(pos_grad.dim() == 0, "clipkern::contrastive_bwd: pos_grad must be a 0-dim tensor, got shape ",
              pos_grad.sizes());
  TORCH_CHECK(M <= N, "clipkern::contrastive_bwd: pos_grad adds to dS[i, i], so x may not have more rows than y (",
              M, " > ", N, ")");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_bwd_cpu(
    const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& scale, const at::Tensor& row_max,
    const at::Tensor& row_logsum, const at::Tensor& col_max, const at::Tensor& col_logsum, const at::Tensor& g_row,
    const at::Tensor& g_col, const std::optional<at::Tensor>& pos_grad) {
  check_pair(x_in, y_in, scale);
  const int64_t M = x_in.size(0), N = y_in.size(0), D = x_in.size(1);
  check_vector("row_max", row_max, M);
  check_vector("row_logsum", row_logsum, M);
  check_vector("col_max", col_max, N);
  check_vector("col_logsum", col_logsum, N);
  check_vector("g_row", g_row, M);
  check_vector("g_col", g_col, N);
  const auto acc = acc_type(x_in);
  const at::Tensor x = x_in.to(acc).contiguous(), y = y_in.to(acc).contiguous();
  const auto vec = [&](const at::Tensor& t) { return t.to(acc).contiguous(); };
  const at::Tensor rmax = vec(row_max), rlog = vec(row_logsum), cmax = vec(col_max), clog = vec(col_logsum);
  const at::Tensor gr = vec(g_row), gc = vec(g_col);
  if (pos_grad.has_value()) check_pos_grad(*pos_grad, M, N);
  // s·pos_grad, added to the workspace's s·dS at (i, i) after each chunk's pass (as the CUDA paths do)
  const at::Tensor pos_ws = pos_grad.has_value() ? (pos_grad->to(acc) * scale.to(acc)) : at::Tensor();
  at::Tensor dx = at::full({M, D}, std::numeric_limits<double>::quiet_NaN(), x.options());
  at::Tensor dy = at::zeros({N, D}, x.options());
  at::Tensor row_dscale = at::full({M}, std::numeric_limits<double>::quiet_NaN(), x.options().dtype(at::kDouble));
  const int64_t chunk = clipkern_cpu::chunk_rows(M, N, D, x_in.element_size(), x.element_size());
  at::Tensor tile = at::empty({std::min(chunk, std::max<int64_t>(M, 1)), N}, x.options());
  const at::Tensor yt = y.t();
  AT_DISPATCH_FLOATING_TYPES(acc, "clipkern_contrastive_bwd_cpu", [&] {
    const auto s = scale.item<scalar_t>();
    for (int64_t start = 0; start < M; start += chunk) {
      const int64_t rows = std::min(chunk, M - start);
      const at::Tensor xb = x.narrow(0, start, rows);
      at::Tensor ws = tile.narrow(0, 0, rows);
      at::mm_out(ws, xb, yt);
      chunk_ds<scalar_t>(ws.data_ptr<scalar_t>(), rows, N, s, rmax.data_ptr<scalar_t>() + start,
                         rlog.data_ptr<scalar_t>() + start, gr.data_ptr<scalar_t>() + start, cmax.data_ptr<scalar_t>(),
                         clog.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), row_dscale.data_ptr<double>() + start);
      if (pos_ws.defined()) ws.diagonal(start).add_(pos_ws);  // elements (i − start, i) of the chunk
      at::Tensor dx_chunk = dx.narrow(0, start, rows);
      at::mm_out(dx_chunk, ws, y);  // ws holds s·dS
      dy.addmm_(ws.t(), xb);
    }
  });
  return {dx.to(x_in.scalar_type()), dy.to(y_in.scalar_type()), row_dscale.sum().to(acc)};
}

}  // namespace

TORCH_LIBRARY_IMPL(clipkern, CPU, m) {
  m.impl("contrastive_fwd", &contrastive_fwd_cpu);
  m.impl("contrastive_bwd", &contrastive_bwd_cpu);
}
