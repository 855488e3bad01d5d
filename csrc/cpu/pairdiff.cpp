// CPU implementation of clipkern::pairdiff_fwd / pairdiff_bwd: PC-CLIP's all-pairs difference
// logits, reduced without materialising the P×N² logits.
//
//   L[p,i,j] = scale·(a[p,i] − a[p,j])·r[i,j]   for all ordered i ≠ j   (a: P×N, r: N×N)
//   forward:  lse_max[p] = max_{i≠j} L[p,i,j],  lse_logsum[p] = log Σ_{i≠j} exp(L[p,i,j] − lse_max[p])
//   backward: π[p,i,j] = exp(L[p,i,j] − lse_max[p] − lse_logsum[p])  (0 on i = j)
//             u[p,k] = g[p]·(Σ_j r[k,j] π[p,k,j] − Σ_i r[i,k] π[p,i,k])
//             t[i,j] = Σ_p g[p]·π[p,i,j]·(a[p,i] − a[p,j])
//   (the caller forms dA = scale·u, dR = scale·t, dscale = Σ t ⊙ r).
// r[i,j] = 0 (a degenerate pair) is still a candidate, with logit 0. N = 1 has no candidate at all:
// lse_max = −inf and lse_logsum = −inf (log of an empty sum), so lse = −inf; u = 0 and t = 0.
// Values are computed in the input precision (fp32, or fp64 for fp64 input); sums run in double.
// Each text p (forward, u) and each row i of t is an independent task for at::parallel_for; the
// forward reads the N² logits twice (max, then Σ exp) instead of storing them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace {

void check_inputs(const at::Tensor& a, const at::Tensor& r, const at::Tensor& scale) {
  TORCH_CHECK(a.dim() == 2, "clipkern::pairdiff: a must be 2-D (texts P, images N), got shape ", a.sizes());
  TORCH_CHECK(r.dim() == 2 && r.size(0) == a.size(1) && r.size(1) == a.size(1),
              "clipkern::pairdiff: r must have shape (N, N) = (", a.size(1), ", ", a.size(1), "), got ", r.sizes());
  TORCH_CHECK(a.is_floating_point() && r.is_floating_point(), "clipkern::pairdiff: a and r must be floating, got ",
              a.scalar_type(), " and ", r.scalar_type());
  TORCH_CHECK(a.device().is_cpu() && r.device().is_cpu() && scale.device().is_cpu(),
              "clipkern::pairdiff (CPU): a, r and scale must be CPU tensors");
  TORCH_CHECK(scale.dim() == 0 && scale.is_floating_point(), "clipkern::pairdiff: scale must be a 0-d floating tensor, got ",
              scale.sizes());
}

void check_vector(const char* name, const at::Tensor& t, int64_t n) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n && t.is_floating_point(), "clipkern::pairdiff_bwd: ", name,
              " must be a floating tensor of shape (", n, ",), got ", t.sizes());
}

at::ScalarType acc_type(const at::Tensor& a) { return a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

template <typename T>
void fwd_loop(const T* a, const T* r, T s, int64_t P, int64_t N, T* out_max, T* out_logsum) {
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* ap = a + p * N;
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j)
          if (i != j) m = std::max(m, s * (ap[i] - ap[j]) * r[i * N + j]);
      const T safe = std::isinf(m) && m < 0 ? T(0) : m;  // no finite candidate: keep exp args finite
      double sum = 0.0;  // a NaN logit makes the sum (hence lse) NaN
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j)
          if (i != j) sum += std::exp(static_cast<double>(s * (ap[i] - ap[j]) * r[i * N + j] - safe));
      out_max[p] = m;
      out_logsum[p] = static_cast<T>(std::log(sum));
    }
  });
}

template <typename T>
void bwd_loop(const T* a, const T* r, T s, const T* lmax, const T* lsum, const T* g, int64_t P, int64_t N, T* u,
              T* t) {
  auto prob = [&](int64_t p, int64_t i, int64_t j) {
    const T* ap = a + p * N;
    return std::exp(static_cast<double>(s * (ap[i] - ap[j]) * r[i * N + j] - lmax[p]) - lsum[p]);
  };
  // u: one text p per task; the pair (i, j) adds r[i,j]·π to u[p,i] and subtracts it from u[p,j]
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(N);
    for (int64_t p = begin; p < end; ++p) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j) {
          if (i == j) continue;
          const double w = r[i * N + j] * prob(p, i, j);
          acc[i] += w;
          acc[j] -= w;
        }
      for (int64_t k = 0; k < N; ++k) u[p * N + k] = static_cast<T>(g[p] * acc[k]);
    }
  });
  // t: one row i per task, summed over the texts p
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(N);
    for (int64_t i = begin; i < end; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t p = 0; p < P; ++p) {
        const T* ap = a + p * N;
        for (int64_t j = 0; j < N; ++j)
          if (j != i) acc[j] += static_cast<double>(g[p]) * prob(p, i, j) * (ap[i] - ap[j]);
      }
      for (int64_t j = 0; j < N; ++j) t[i * N + j] = static_cast<T>(acc[j]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> pairdiff_fwd_cpu(const at::Tensor& a_in, const at::Tensor& r_in,
                                                    const at::Tensor& scale) {
  check_inputs(a_in, r_in, scale);
  const auto acc = acc_type(a_in);
  const at::Tensor a = a_in.to(acc).contiguous(), r = r_in.to(acc).contiguous();
  const int64_t P = a.size(0), N = a.size(1);
  const double nan = std::numeric_limits<double>::quiet_NaN();  // unwritten outputs would show as NaN
  at::Tensor lmax = at::full({P}, nan, a.options()), lsum = at::full({P}, nan, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pairdiff_fwd_cpu", [&] {
    fwd_loop<scalar_t>(a.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), scale.to(acc).item<scalar_t>(), P, N,
                       lmax.data_ptr<scalar_t>(), lsum.data_ptr<scalar_t>());
  });
  return {lmax, lsum};
}

std::tuple<at::Tensor, at::Tensor> pairdiff_bwd_cpu(const at::Tensor& a_in, const at::Tensor& r_in,
                                                    const at::Tensor& scale, const at::Tensor& lse_max,
                                                    const at::Tensor& lse_logsum, const at::Tensor& g_in) {
  check_inputs(a_in, r_in, scale);
  const int64_t P = a_in.size(0), N = a_in.size(1);
  check_vector("lse_max", lse_max, P);
  check_vector("lse_logsum", lse_logsum, P);
  check_vector("g", g_in, P);
  const auto acc = acc_type(a_in);
  const at::Tensor a = a_in.to(acc).contiguous(), r = r_in.to(acc).contiguous();
  const at::Tensor lmax = lse_max.to(acc).contiguous(), lsum = lse_logsum.to(acc).contiguous();
  const at::Tensor g = g_in.to(acc).contiguous();
  const double nan = std::numeric_limits<double>::quiet_NaN();  // unwritten outputs would show as NaN
  at::Tensor u = at::full({P, N}, nan, a.options()), t = at::full({N, N}, nan, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pairdiff_bwd_cpu", [&] {
    bwd_loop<scalar_t>(a.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), scale.to(acc).item<scalar_t>(),
                       lmax.data_ptr<scalar_t>(), lsum.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), P, N,
                       u.data_ptr<scalar_t>(), t.data_ptr<scalar_t>());
  });
  return {u, t};
}

}  // namespace

TORCH_LIBRARY_IMPL(clipkern, CPU, m) {
  m.impl("pairdiff_fwd", &pairdiff_fwd_cpu);
  m.impl("pairdiff_bwd", &pairdiff_bwd_cpu);
}
