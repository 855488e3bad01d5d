// CPU implementation of clipkern::contrastive_fwd / contrastive_bwd (the oracle-equivalent twin of
// the CUDA and Triton kernels; used by the CPU tests and by backend="cuda" on CPU tensors).
//
//   S = scale · x yᵀ                         x: (M, D), y: (N, D); fp32 math (fp64 for fp64 input)
//   forward:  row_max[i] = max_j S[i,j],   row_logsum[i] = log Σ_j exp(S[i,j] − row_max[i])
//             col_max[j] = max_i S[i,j],   col_logsum[j] = log Σ_i exp(S[i,j] − col_max[j])
//   backward: P_r = exp((S − row_max) − row_logsum)  (rows),  P_c = exp((S − col_max) − col_logsum)  (columns)
//             (the pair is never merged into one lse: at |S| ~ 100 the rounding of an fp32 lse would be
//             the relative error of every P, as in the CUDA and Triton kernels)
//             dS = g_row[:,None]·P_r + g_col[None,:]·P_c
//             dx = scale·dS y,  dy = scale·dSᵀ x,  dscale = Σ_ij dS_ij (x yᵀ)_ij
//
// Memory: S is formed one block of kRowBlock rows at a time (kRowBlock × N values, the "tile"),
// never whole. The row statistics of a block are final at once; the column statistics are merged
// across blocks online as (max, sum of exp(S − max)) pairs, so both come from one pass over S.
// Each block's matmul and elementwise work is parallelised inside ATen.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

namespace {

constexpr int64_t kRowBlock = 256;

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

// max over `dim` and log Σ exp(s − max), with an all −inf slice giving (−inf, −inf), not NaN.
std::tuple<at::Tensor, at::Tensor> max_logsum(const at::Tensor& s, int64_t dim) {
  at::Tensor m = s.amax(dim);
  at::Tensor safe = at::where(at::isfinite(m), m, at::zeros_like(m));
  at::Tensor sum = (s - safe.unsqueeze(dim)).exp_().sum(dim);
  return {m, sum.log_()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_fwd_cpu(const at::Tensor& x_in,
                                                                               const at::Tensor& y_in,
                                                                               const at::Tensor& scale) {
  check_pair(x_in, y_in, scale);
  const auto acc = acc_type(x_in);
  const at::Tensor x = x_in.to(acc).contiguous(), y = y_in.to(acc).contiguous();
  const at::Tensor s = scale.to(acc).reshape({});
  const int64_t M = x.size(0), N = y.size(0);
  const double nan = std::numeric_limits<double>::quiet_NaN();  // unwritten outputs would show as NaN
  at::Tensor row_max = at::full({M}, nan, x.options()), row_logsum = at::full({M}, nan, x.options());
  // column statistics merged over row blocks: running max and Σ exp(S − running max)
  at::Tensor col_max = at::full({N}, -std::numeric_limits<double>::infinity(), x.options());
  at::Tensor col_sum = at::zeros({N}, x.options());
  const at::Tensor yt = y.t();
  for (int64_t start = 0; start < M; start += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, M - start);
    at::Tensor tile = at::matmul(x.narrow(0, start, rows), yt).mul_(s);  // rows × N
    auto [rm, rl] = max_logsum(tile, 1);
    row_max.narrow(0, start, rows).copy_(rm);
    row_logsum.narrow(0, start, rows).copy_(rl);
    at::Tensor bm = tile.amax(0);
    at::Tensor new_max = at::maximum(col_max, bm);
    at::Tensor safe = at::where(at::isfinite(new_max), new_max, at::zeros_like(new_max));
    at::Tensor block_sum = (tile - safe.unsqueeze(0)).exp_().sum(0);
    // running sum rescaled to the new max; a column whose max is still −inf has sum 0
    at::Tensor rescale = at::where(col_max == -std::numeric_limits<double>::infinity(), at::zeros_like(col_max),
                                   (col_max - safe).exp());
    col_sum = col_sum * rescale + block_sum;
    col_max = new_max;
  }
  return {row_max, row_logsum, col_max, col_sum.log()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_bwd_cpu(
    const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& scale, const at::Tensor& row_max,
    const at::Tensor& row_logsum, const at::Tensor& col_max, const at::Tensor& col_logsum, const at::Tensor& g_row,
    const at::Tensor& g_col) {
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
  const at::Tensor s = scale.to(acc).reshape({});
  const at::Tensor rmax = row_max.to(acc).unsqueeze(1), rlog = row_logsum.to(acc).unsqueeze(1);
  const at::Tensor cmax = col_max.to(acc).unsqueeze(0), clog = col_logsum.to(acc).unsqueeze(0);
  const at::Tensor gr = g_row.to(acc).unsqueeze(1), gc = g_col.to(acc).unsqueeze(0);
  at::Tensor dx = at::full({M, D}, std::numeric_limits<double>::quiet_NaN(), x.options());
  at::Tensor dy = at::zeros({N, D}, x.options());
  at::Tensor dscale = at::zeros({}, x.options());
  const at::Tensor yt = y.t();
  for (int64_t start = 0; start < M; start += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, M - start);
    const at::Tensor xb = x.narrow(0, start, rows);
    const at::Tensor dot = at::matmul(xb, yt);  // (x yᵀ) tile, rows × N
    const at::Tensor tile = dot * s;
    at::Tensor ds = (tile - rmax.narrow(0, start, rows)).sub_(rlog.narrow(0, start, rows)).exp_();
    ds.mul_(gr.narrow(0, start, rows));
    ds.add_((tile - cmax).sub_(clog).exp_().mul_(gc));
    dx.narrow(0, start, rows).copy_(at::matmul(ds, y));
    dy.add_(at::matmul(ds.t(), xb));
    dscale.add_((ds * dot).sum());
  }
  return {dx.mul_(s).to(x_in.scalar_type()), dy.mul_(s).to(y_in.scalar_type()), dscale};
}

}  // namespace

TORCH_LIBRARY_IMPL(clipkern, CPU, m) {
  m.impl("contrastive_fwd", &contrastive_fwd_cpu);
  m.impl("contrastive_bwd", &contrastive_bwd_cpu);
}
