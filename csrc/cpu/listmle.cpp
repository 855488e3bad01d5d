// CPU implementation of clipkern::listmle_fwd / listmle_bwd: the per-row ListMLE (Plackett–Luce)
// loss and its closed-form gradient.
//
// For one row of scores q and targets t (N columns; sorted positions k = 0..N−1):
//   π    = argsort_desc(t), stable: ties keep the lower column index first; −0.0 ties with +0.0
//          (IEEE comparison already does); NaN sorts first, as in torch.sort
//   q_k  = q[π_k],  w_k = 1, or 1/log2(k + 2) with decay_log
//   lse_k = logsumexp(q_k, ..., q_{N−1})   suffix scan of a running (max, sum) pair
//   ℓ    = Σ_k w_k (lse_k − q_k)             plus 0·Σ t: a non-finite target makes ℓ NaN
// Backward, given g = ∂Loss/∂ℓ of the row:
//   ∂ℓ/∂q_k = exp(q_k + logC_k) − w_k,   logC_k = logcumsumexp_{m≤k}(log w_m − lse_m)   prefix scan
//   (every exponent is ≤ log Σ_{m≤k} w_m: no overflow, no product of probabilities), times g,
//   written back to column π_k.
// Values are computed in double (inputs are converted exactly); outputs: ℓ fp32 (fp64 for fp64
// scores), the gradient in the scores' dtype. Rows are independent tasks for at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

void check_pair(const at::Tensor& scores, const at::Tensor& targets) {
  TORCH_CHECK(scores.dim() == 2, "clipkern::listmle: scores must be 2-D (rows, list length), got shape ",
              scores.sizes());
  TORCH_CHECK(targets.sizes() == scores.sizes(), "clipkern::listmle: targets has shape ", targets.sizes(),
              " but scores has shape ", scores.sizes());
  TORCH_CHECK(scores.is_floating_point() && targets.is_floating_point(),
              "clipkern::listmle: scores and targets must be floating, got ", scores.scalar_type(), " and ",
              targets.scalar_type());
  TORCH_CHECK(scores.device().is_cpu() && targets.device().is_cpu(),
              "clipkern::listmle (CPU): scores and targets must be CPU tensors");
}

// Running log-sum-exp as (max, Σ exp(x − max)); −inf inputs add nothing, NaN poisons the sum.
struct Lse {
  double m = -kInf, s = 0.0;
  void add(double x) {
    if (x > m) {
      s = (m == -kInf ? 0.0 : s * std::exp(m - x)) + 1.0;
      m = x;
    } else if (x != -kInf) {
      s += std::exp(x - m);
    }
  }
  double value() const { return m == -kInf ? -kInf : m + std::log(s); }
};

double weight(int64_t k, bool decay_log) { return decay_log ? 1.0 / std::log2(static_cast<double>(k) + 2.0) : 1.0; }

// One row: its sort order, q in sorted order and the suffix lse. Returns 0·Σ t (NaN if a target is
// not finite).
double sort_row(const double* q, const double* t, int64_t N, std::vector<int64_t>& order, std::vector<double>& qs,
                std::vector<double>& lse) {
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [t](int64_t i, int64_t j) {
    const double a = t[i], b = t[j];
    if (std::isnan(a)) return !std::isnan(b);  // NaN first (largest), like torch.sort
    if (std::isnan(b)) return false;
    return a > b;
  });
  double poison = 0.0;
  for (int64_t k = 0; k < N; ++k) {
    qs[k] = q[order[k]];
    poison += t[k] * 0.0;
  }
  Lse run;
  for (int64_t k = N - 1; k >= 0; --k) {
    run.add(qs[k]);
    lse[k] = run.value();
  }
  return poison;
}

at::Tensor listmle_fwd_cpu(const at::Tensor& scores, const at::Tensor& targets, bool decay_log) {
  check_pair(scores, targets);
  const int64_t B = scores.size(0), N = scores.size(1);
  const at::Tensor q = scores.to(at::kDouble).contiguous(), t = targets.to(at::kDouble).contiguous();
  at::Tensor loss = at::full({B}, std::numeric_limits<double>::quiet_NaN(), q.options());
  const double *qp = q.data_ptr<double>(), *tp = t.data_ptr<double>();
  double* lp = loss.data_ptr<double>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(N);
    std::vector<double> qs(N), lse(N);
    for (int64_t row = begin; row < end; ++row) {
      double total = sort_row(qp + row * N, tp + row * N, N, order, qs, lse);
      for (int64_t k = 0; k < N; ++k) total += weight(k, decay_log) * (lse[k] - qs[k]);
      lp[row] = total;
    }
  });
  return loss.to(scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

at::Tensor listmle_bwd_cpu(const at::Tensor& scores, const at::Tensor& targets, const at::Tensor& g,
                           bool decay_log) {
  check_pair(scores, targets);
  const int64_t B = scores.size(0), N = scores.size(1);
  TORCH_CHECK(g.dim() == 1 && g.size(0) == B && g.is_floating_point(),
              "clipkern::listmle_bwd: g must be a floating tensor of shape (", B, ",), got ", g.sizes());
  const at::Tensor q = scores.to(at::kDouble).contiguous(), t = targets.to(at::kDouble).contiguous();
  const at::Tensor gd = g.to(at::kCPU).to(at::kDouble).contiguous();
  at::Tensor grad = at::full({B, N}, std::numeric_limits<double>::quiet_NaN(), q.options());
  const double *qp = q.data_ptr<double>(), *tp = t.data_ptr<double>(), *gp = gd.data_ptr<double>();
  double* dp = grad.data_ptr<double>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(N);
    std::vector<double> qs(N), lse(N);
    for (int64_t row = begin; row < end; ++row) {
      sort_row(qp + row * N, tp + row * N, N, order, qs, lse);
      Lse log_c;  // logcumsumexp of log w_m − lse_m over m ≤ k
      for (int64_t k = 0; k < N; ++k) {
        const double w = weight(k, decay_log);
        log_c.add(std::log(w) - lse[k]);
        dp[row * N + order[k]] = gp[row] * (std::exp(qs[k] + log_c.value()) - w);
      }
    }
  });
  return grad.to(scores.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(clipkern, CPU, m) {
  m.impl("listmle_fwd", &listmle_fwd_cpu);
  m.impl("listmle_bwd", &listmle_bwd_cpu);
}
