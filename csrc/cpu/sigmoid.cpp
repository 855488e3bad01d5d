// CPU implementation of clipkern::sigmoid_fwd (SigLIP; backend="cuda" on CPU tensors, and `auto` on a
// CPU when the extension is built).
//
//   raw = x yᵀ (BLAS, fp32; fp64 for fp64 input)     x: (M, D) image rows, y: (N, D) text rows, N ≥ M allowed
//   L = fma(raw, s, b),  z_ij = +1 if j = y_i (labels; i without labels) else −1,  t = z·L
//   loss = Σ_ij softplus(−t_ij) / M,   softplus(−t) = max(−t, 0) + log1p(exp(−|t|))
// The loss is a sum of elementwise terms, so its gradient is known up to the upstream scalar g once
// the forward has seen a tile. With with_grad the forward therefore also returns the gradient of the
// loss itself (g = 1); the autograd backward only multiplies it by g (ops/sigmoid/extension_ops.py):
//   dL_ij = −z_ij·σ(−t_ij)/M,   σ(−t) = e/(1 + e) for t > 0, 1/(1 + e) otherwise, e = exp(−|t|)
//   dx = s·dL y,  dy = s·dLᵀ x,  dscale = Σ dL ⊙ raw,  dbias = Σ dL          (returned as [dscale, dbias])
// These are the formulas of the Triton dS kernel (ops/sigmoid/triton_kernels.py) with g = 1, and the
// same row chunks (chunking.h: the GPU's workspace budget): S is formed one chunk of rows at a time
// (chunk × N, never whole), the chunk's s·dL overwrites its logits in place, then dx[chunk] = ws·y and
// dy += wsᵀ·x[chunk] are two BLAS GEMMs. Work: 2·M·N·D FLOPs without gradients, 6·M·N·D with them (no
// recompute of S in a backward); extra memory: one tile, dx and dy.
// Per-row sums (loss, dscale, dbias) accumulate in double; rows are spread over threads (at::parallel_for).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "chunking.h"

namespace {

constexpr const char* kOp = "clipkern::sigmoid_fwd";

void check_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& scale,
                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& labels) {
  for (auto [name, t] : {std::pair<const char*, const at::Tensor&>{"x", x}, {"y", y}}) {
    TORCH_CHECK(t.dim() == 2, kOp, ": ", name, " must be 2-D (rows, dim), got ", t.dim(), "-D");
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16 ||
                    t.scalar_type() == at::kDouble,
                kOp, ": ", name, " must be float32/float16/bfloat16/float64, got ", t.scalar_type());
    TORCH_CHECK(t.device().is_cpu(), kOp, " (CPU): ", name, " must be a CPU tensor, got ", t.device());
  }
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), kOp, ": x is ", x.scalar_type(), " but y is ", y.scalar_type(),
              "; they must have one dtype");
  TORCH_CHECK(x.size(1) == y.size(1), kOp, ": x has dim ", x.size(1), " but y has dim ", y.size(1));
  TORCH_CHECK(scale.dim() == 0 && scale.is_floating_point() && scale.device().is_cpu(), kOp,
              ": scale must be a 0-d floating CPU tensor, got shape ", scale.sizes(), " ", scale.scalar_type());
  if (bias.has_value())
    TORCH_CHECK(bias->dim() == 0 && bias->is_floating_point() && bias->device().is_cpu(), kOp,
                ": bias must be a 0-d floating CPU tensor, got shape ", bias->sizes(), " ", bias->scalar_type());
  if (labels.has_value()) {
    TORCH_CHECK(labels->dim() == 1 && labels->size(0) == x.size(0), kOp, ": labels must have shape (", x.size(0),
                ",), got ", labels->sizes());
    TORCH_CHECK(!labels->is_floating_point() && labels->device().is_cpu(), kOp,
                ": labels must be an integer CPU tensor, got ", labels->scalar_type());
  } else {
    TORCH_CHECK(x.size(0) <= y.size(0), kOp, ": without labels row i's positive is column i, so x (", x.size(0),
                " rows) may not have more rows than y (", y.size(0), ")");
  }
}

// One chunk of rows: loss terms of the tile `raw` (rows × N, overwritten by s·dL when with_grad) and
// the chunk rows' sums of loss, dL·raw and dL (each already divided by M).
template <typename acc_t>
void chunk_terms(acc_t* raw, int64_t rows, int64_t N, const int64_t* positive, acc_t s, acc_t b, double inv_m,
                 bool with_grad, acc_t* row_loss, acc_t* row_dscale, acc_t* row_dbias) {
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      acc_t* tile_row = raw + r * N;
      const int64_t pos = positive[r];
      double loss = 0, dscale = 0, dbias = 0;
      for (int64_t j = 0; j < N; ++j) {
        const acc_t dot = tile_row[j];
        const acc_t z = j == pos ? acc_t(1) : acc_t(-1);
        const acc_t t = z * std::fma(dot, s, b);
        const acc_t e = std::exp(-std::abs(t));
        loss += std::max(-t, acc_t(0)) + std::log1p(e);
        if (with_grad) {
          const acc_t dl = -z * (t > 0 ? e : acc_t(1)) / (acc_t(1) + e) * static_cast<acc_t>(inv_m);
          dscale += static_cast<double>(dl) * static_cast<double>(dot);
          dbias += dl;
          tile_row[j] = dl * s;
        }
      }
      row_loss[r] = static_cast<acc_t>(loss * inv_m);
      row_dscale[r] = static_cast<acc_t>(dscale);
      row_dbias[r] = static_cast<acc_t>(dbias);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sigmoid_fwd_cpu(
    const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& scale, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& labels, bool with_grad) {
  check_inputs(x_in, y_in, scale, bias, labels);
  const auto acc = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor x = x_in.to(acc).contiguous(), y = y_in.to(acc).contiguous();
  const int64_t M = x.size(0), N = y.size(0), D = x.size(1);
  const at::Tensor positive =
      labels.has_value() ? labels->to(at::kLong).contiguous() : at::arange(M, x.options().dtype(at::kLong));
  const double nan = std::numeric_limits<double>::quiet_NaN();  // an unwritten output shows as NaN
  at::Tensor row_loss = at::full({M}, nan, x.options());
  at::Tensor row_dscale = at::full({M}, nan, x.options()), row_dbias = at::full({M}, nan, x.options());
  at::Tensor dx = with_grad ? at::full({M, D}, nan, x.options()) : at::empty({0}, x.options());
  at::Tensor dy = with_grad ? at::zeros({N, D}, x.options()) : at::empty({0}, x.options());
  const at::Tensor yt = y.t();
  const int64_t chunk = clipkern_cpu::chunk_rows(M, N, D, x_in.element_size(), x.element_size());
  at::Tensor tile = at::empty({std::min(chunk, std::max<int64_t>(M, 1)), N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "clipkern_sigmoid_fwd_cpu", [&] {
    const auto s = scale.item<scalar_t>();
    const auto b = bias.has_value() ? bias->item<scalar_t>() : scalar_t(0);
    for (int64_t start = 0; start < M; start += chunk) {
      const int64_t rows = std::min(chunk, M - start);
      const at::Tensor xb = x.narrow(0, start, rows);
      at::Tensor raw = tile.narrow(0, 0, rows);
      at::mm_out(raw, xb, yt);
      chunk_terms<scalar_t>(raw.data_ptr<scalar_t>(), rows, N, positive.data_ptr<int64_t>() + start, s, b, 1.0 / M,
                            with_grad, row_loss.data_ptr<scalar_t>() + start, row_dscale.data_ptr<scalar_t>() + start,
                            row_dbias.data_ptr<scalar_t>() + start);
      if (with_grad) {  // raw now holds s·dL of the chunk
        at::Tensor dx_chunk = dx.narrow(0, start, rows);
        at::mm_out(dx_chunk, raw, y);
        dy.addmm_(raw.t(), xb);
      }
    }
  });
  at::Tensor dscale_dbias = with_grad ? at::stack({row_dscale.sum(), row_dbias.sum()}) : at::empty({0}, x.options());
  return {row_loss.sum(), dx, dy, dscale_dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(clipkern, CPU, m) { m.impl("sigmoid_fwd", &sigmoid_fwd_cpu); }
