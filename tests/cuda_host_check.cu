// Host-side checks of the scalar pieces of csrc/cuda/ that need no GPU: the ListMLE sort key
// (descending target order, lower column first on ties, -0.0 == +0.0), the (max, sum) log-sum-exp
// pair (merge, push, NaN propagation) and a ListMLE row computed with them against double precision.
// Built and run by tests/test_cuda_compile.py (nvcc, host code only). Prints "OK" and exits 0, or
// prints the first failures and exits 1.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "../csrc/cuda/listmle.cuh"

using namespace clipkern_cuda;

static int failures = 0;
#define CHECK(cond, ...)                      \
  do {                                        \
    if (!(cond)) {                            \
      if (++failures <= 10) {                 \
        std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
        std::printf(__VA_ARGS__);             \
        std::printf("\n");                    \
      }                                       \
    }                                         \
  } while (0)

static std::vector<int> order_by_keys(const std::vector<float>& t, int colbits) {
  std::vector<unsigned long long> keys(t.size());
  for (size_t j = 0; j < t.size(); ++j) keys[j] = listmle::sort_key(t[j], static_cast<int>(j), colbits);
  std::sort(keys.begin(), keys.end());
  std::vector<int> order(t.size());
  for (size_t k = 0; k < t.size(); ++k) order[k] = static_cast<int>(keys[k] & ((1ull << colbits) - 1ull));
  return order;
}

static std::vector<int> order_reference(const std::vector<float>& t) {
  std::vector<int> order(t.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return t[a] > t[b]; });  // -0.0 == +0.0
  return order;
}

int main() {
  std::mt19937 gen(1234);
  // 1. sort key
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + static_cast<int>(gen() % 3000);
    std::vector<float> t(n);
    std::normal_distribution<float> nd(0.f, 3.f);
    for (auto& v : t) {
      v = std::round(nd(gen) * 2.f) / 2.f;  // many ties
      if (v == 0.f) v = (gen() & 1) ? -0.f : 0.f;
      if (gen() % 97 == 0) v = (gen() & 1) ? 1e30f : -1e-30f;
      if (gen() % 211 == 0) v = (gen() & 1) ? INFINITY : -INFINITY;
    }
    const int colbits = n <= 256 ? 8 : n <= 1024 ? 10 : n <= 4096 ? 12 : 13;
    CHECK(order_by_keys(t, colbits) == order_reference(t), "sort order differs (trial %d, n %d)", trial, n);
  }
  CHECK(listmle::sort_key(-0.f, 3, 8) == listmle::sort_key(0.f, 3, 8), "-0.0 and +0.0 keys differ");
  const unsigned long long pad = (1ull << (32 + 13)) - 1ull;
  CHECK(listmle::sort_key(-INFINITY, 8190, 13) < pad, "a real key reaches the padding key");

  // 2. log-sum-exp pairs
  std::uniform_real_distribution<float> ud(-100.f, 100.f);
  for (int trial = 0; trial < 100; ++trial) {
    const int n = 1 + static_cast<int>(gen() % 500);
    std::vector<float> v(n);
    double m64 = -INFINITY;
    for (auto& x : v) { x = ud(gen); m64 = std::max(m64, static_cast<double>(x)); }
    double s64 = 0;
    for (float x : v) s64 += std::exp(static_cast<double>(x) - m64);
    const double lse64 = m64 + std::log(s64);
    LsePair pushed = lse_empty(), merged = lse_empty();
    for (float x : v) {
      lse_push(pushed, x);
      merged = lse_merge(merged, LsePair{x, 1.f});
    }
    const double e1 = std::fabs(pushed.m + std::log(static_cast<double>(pushed.l)) - lse64);
    const double e2 = std::fabs(merged.m + std::log(static_cast<double>(merged.l)) - lse64);
    CHECK(e1 < 2e-5 * std::max(1.0, std::fabs(lse64)) && e2 < 2e-5 * std::max(1.0, std::fabs(lse64)),
          "lse error push %.3e merge %.3e (n %d)", e1, e2, n);
  }
  LsePair e = lse_merge(lse_empty(), lse_empty());
  CHECK(e.m == -INFINITY && e.l == 0.f, "empty ⊕ empty is not empty");
  LsePair x = lse_merge(LsePair{2.f, 3.f}, lse_empty());
  CHECK(x.m == 2.f && x.l == 3.f, "empty is not the identity");
  LsePair nanp = lse_empty();
  lse_push(nanp, 1.f);
  lse_push(nanp, NAN);
  lse_push(nanp, 5.f);
  CHECK(std::isnan(nanp.m + std::log(nanp.l)), "NaN did not propagate through lse_push");
  CHECK(std::isnan(lse_merge(LsePair{NAN, 1.f}, LsePair{3.f, 1.f}).m), "NaN did not propagate through lse_merge");

  // 3. a ListMLE row: suffix lse by merges in reverse, loss vs double
  for (int decay = 0; decay < 2; ++decay) {
    const int n = 777;
    std::vector<float> q(n), t(n);
    for (int j = 0; j < n; ++j) { q[j] = ud(gen); t[j] = std::round(ud(gen) / 10.f); }
    const std::vector<int> order = order_by_keys(t, 10);
    std::vector<float> qs(n);
    for (int k = 0; k < n; ++k) qs[k] = q[order[k]];
    LsePair run = lse_empty();
    double loss32 = 0, loss64 = 0;
    for (int k = n - 1; k >= 0; --k) {
      run = lse_merge(run, LsePair{qs[k], 1.f});
      loss32 += listmle::weight(k, decay) * ((run.m - qs[k]) + std::log(run.l));
      double m = -INFINITY, s = 0;
      for (int i = k; i < n; ++i) m = std::max(m, static_cast<double>(qs[i]));
      for (int i = k; i < n; ++i) s += std::exp(qs[i] - m);
      loss64 += (decay ? 1.0 / std::log2(k + 2.0) : 1.0) * (m + std::log(s) - qs[k]);
    }
    CHECK(std::fabs(loss32 - loss64) < 1e-5 * std::fabs(loss64), "ListMLE row loss %.8e vs %.8e", loss32, loss64);
  }
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
