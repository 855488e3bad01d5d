// clipkern::contrastive_loss_fwd / contrastive_loss_bwd: the whole mean softmax-contrastive (CLIP) loss in
// one op pair, so that clip_loss(backend="cuda") issues no torch ops of its own around the csrc kernels
// (the twin of the Triton op pair triton_clip_loss / triton_clip_loss_bwd). Registered once for every
// device (CompositeExplicitAutograd): the statistics and the dS/GEMM backward come from the per-device
// contrastive_fwd / contrastive_bwd (CPU: cpu/contrastive.cpp; CUDA: cuda/kernels.cu, the Hopper path
// on sm_90a), called through the dispatcher; what is added here is O(B·D) and O(B).
//
//   x: (M, D), y: (N, D), S = s · x yᵀ, l_i = labels[i] (labels None: l_i = i, needs M ≤ N)
//   raw_pos_sum = Σ_i <x_i, y_{l_i}>   (fp32 accumulation; fp64 for fp64 features)
//   rows-only:  loss = (1/M) [Σ_i (row_max + row_logsum)[i] − s·raw_pos_sum]
//   symmetric:  loss = (1/2M) [Σ_i (row_max + row_logsum)[i] + Σ_i (col_max + col_logsum)[l_i]] − (s/M)·raw_pos_sum
//   backward, upstream g (a 0-dim tensor; never read on the host):
//     g_row[i] = g·w,  g_col[j] = g·w·#{i : l_i = j} (symmetric; 0 otherwise),  w = 1/M or 1/(2M)
//     the positives: ∂loss/∂S[i, l_i] gains c = −g/M, and ∂loss/∂s gains c·raw_pos_sum
//     labels None: (dx, dy, ds) = contrastive_bwd(..., g_row, g_col, pos_grad = c), which adds c to dS[i, i]
//       inside its chunk loop (the dS workspace, before the GEMMs: no pass over the features);
//     labels given: contrastive_bwd without pos_grad, then dx[i] += c·s·y[l_i], dy[l_i] += c·s·x[i].
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace {

using at::Tensor;

at::ScalarType accumulation(const Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// <x_i, y_{l_i}> per row in the accumulation dtype: one batched GEMM with an fp32 result (cuBLAS) for
// 16-bit CUDA features, else an elementwise product and a row sum.
Tensor raw_positives(const Tensor& x, const Tensor& y_pos) {
  const bool sixteen = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  if (x.is_cuda() && sixteen) return at::bmm(x.unsqueeze(1), y_pos.unsqueeze(2), at::kFloat).view({x.size(0)});
  const auto acc = accumulation(x);
  return (x.to(acc) * y_pos.to(acc)).sum(1);
}

Tensor rows_of(const Tensor& y, const std::optional<Tensor>& labels, int64_t M) {
  return labels.has_value() ? y.index_select(0, *labels) : y.narrow(0, 0, M);
}

void check_pair(const Tensor& x, const Tensor& y, const std::optional<Tensor>& labels, const char* op) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1), op,
              ": x and y must be 2-D with the same feature dim, got ", x.sizes(), " and ", y.sizes());
  if (labels.has_value()) {
    TORCH_CHECK(labels->dim() == 1 && labels->size(0) == x.size(0), op, ": labels must have shape (", x.size(0),
                ",), got ", labels->sizes());
  } else {
    TORCH_CHECK(x.size(0) <= y.size(0), op, ": without labels row i's positive is column i, so x may not have more "
                "rows than y (", x.size(0), " > ", y.size(0), ")");
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> contrastive_loss_fwd(
    const Tensor& x, const Tensor& y, const Tensor& scale, const std::optional<Tensor>& labels, bool symmetric) {
  const char* op = "clipkern::contrastive_loss_fwd";
  check_pair(x, y, labels, op);
  static const auto stats_op = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("clipkern::contrastive_fwd", "")
                                   .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                                                      const Tensor&)>();
  auto [row_max, row_logsum, col_max, col_logsum] = stats_op.call(x, y, scale);
  const int64_t M = x.size(0);
  const Tensor raw_pos_sum = raw_positives(x.contiguous(), rows_of(y, labels, M).contiguous()).sum();
  // Σ of the statistics the loss reads, in one reduction: rows (and, symmetric, the positives' columns)
  Tensor lse_sum;
  if (!symmetric) lse_sum = at::stack({row_max, row_logsum}).sum();
  else if (!labels.has_value()) lse_sum = at::stack({row_max, row_logsum, col_max.narrow(0, 0, M), col_logsum.narrow(0, 0, M)}).sum();
  else lse_sum = at::stack({row_max, row_logsum, col_max.index_select(0, *labels), col_logsum.index_select(0, *labels)}).sum();
  const double w = 1.0 / static_cast<double>(symmetric ? 2 * M : M);
  // loss = w·lse_sum − (s/M)·raw_pos_sum
  const Tensor loss = at::addcmul(lse_sum * w, scale.to(raw_pos_sum.scalar_type()), raw_pos_sum, -1.0 / static_cast<double>(M));
  return {loss, row_max, row_logsum, col_max, col_logsum, raw_pos_sum};
}

std::tuple<Tensor, Tensor, Tensor> contrastive_loss_bwd(const Tensor& x, const Tensor& y, const Tensor& scale,
                                                        const std::optional<Tensor>& labels, const Tensor& row_max,
                                                        const Tensor& row_logsum, const Tensor& col_max,
                                                        const Tensor& col_logsum, const Tensor& raw_pos_sum,
                                                        const Tensor& g, bool symmetric) {
  const char* op = "clipkern::contrastive_loss_bwd";
  check_pair(x, y, labels, op);
  static const auto grads_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("clipkern::contrastive_bwd", "")
          .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                    const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                    const Tensor&, const std::optional<Tensor>&)>();
  const int64_t M = x.size(0), N = y.size(0);
  const auto acc = raw_pos_sum.scalar_type();
  const Tensor g_acc = g.to(acc).reshape({});
  const Tensor g_row = (g_acc * (1.0 / static_cast<double>(symmetric ? 2 * M : M))).expand({M}).contiguous();
  Tensor g_col;
  if (!symmetric) {
    g_col = at::zeros({N}, g_row.options());
  } else if (!labels.has_value() && M == N) {
    g_col = g_row;  // the same weights: read-only in contrastive_bwd
  } else {
    g_col = at::zeros({N}, g_row.options());
    if (labels.has_value()) g_col.index_add_(0, *labels, g_row);
    else g_col.narrow(0, 0, M).copy_(g_row);
  }
  const Tensor c = g_acc * (-1.0 / static_cast<double>(M));  // ∂loss/∂S[i, l_i] from the positives
  auto [dx, dy, dscale] = grads_op.call(x, y, scale, row_max, row_logsum, col_max, col_logsum, g_row, g_col,
                                        labels.has_value() ? std::nullopt : std::optional<Tensor>(c));
  if (labels.has_value()) {
    const Tensor cs = c * scale.to(acc);
    dx.addcmul_(y.index_select(0, *labels), cs);
    dy.index_add_(0, *labels, x * cs);
  }
  return {dx, dy, at::addcmul(dscale.to(acc), c, raw_pos_sum)};
}

}  // namespace

TORCH_LIBRARY_IMPL(clipkern, CompositeExplicitAutograd, m) {
  m.impl("contrastive_loss_fwd", &contrastive_loss_fwd);
  m.impl("contrastive_loss_bwd", &contrastive_loss_bwd);
}
