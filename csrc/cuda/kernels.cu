// CUDA implementations of clipkern's ops (schemas in csrc/ops.cpp): host launchers and the
// TORCH_LIBRARY_IMPL(clipkern, CUDA, m) registrations. The kernels and their math live in one header
// per family: contrastive.cuh, pairdiff.cuh, listmle.cuh. One translation unit on purpose (CI compiles
// it on 2 cores); the Hopper (sm_90a) contrastive kernels are the one exception: they live in
// hopper_contrastive.cu (its CuTe headers stay there) and are taken through hopper_dispatch.cuh.
//
// Every launcher checks its inputs (errors name the argument), makes them contiguous, allocates its
// outputs (statistics and gradients of statistics in fp32; feature gradients in the features' dtype),
// launches on the current stream and checks the launch. Inputs: fp32 / fp16 / bf16 features
// (fp32 accumulation); a, r, stats and upstream gradients fp32; scale a one-element fp32 tensor.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>
#include <string>
#include <optional>
#include <tuple>

#include "contrastive.cuh"
#include "hopper_contrastive.h"
#include "listmle.cuh"
#include "pairdiff.cuh"

namespace clipkern_cuda {
namespace {

using at::Tensor;

template <typename T> struct TypeTag { using type = T; };

// Calls f(TypeTag<T>{}) with the CUDA element type of a float32 / float16 / bfloat16 tensor.
template <typename F> void dispatch_feature_type(const Tensor& t, const char* op, const char* name, F&& f) {
  switch (t.scalar_type()) {
    case at::kFloat: f(TypeTag<float>{}); break;
    case at::kHalf: f(TypeTag<__half>{}); break;
    case at::kBFloat16: f(TypeTag<__nv_bfloat16>{}); break;
    default: TORCH_CHECK(false, op, ": ", name, " must be float32, float16 or bfloat16 on CUDA, got ", t.scalar_type());
  }
}

template <typename T> const T* cptr(const Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); }
template <typename T> T* mptr(Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

void check_cuda_2d(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D, got shape ", t.sizes());
  TORCH_CHECK(t.size(0) > 0 && t.size(1) > 0, op, ": ", name, " must not be empty, got shape ", t.sizes());
}

void check_same_device(const Tensor& t, const Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), ", got ", t.device());
}

// x (M×D) and y (N×D) of the contrastive ops: CUDA, 2-D, non-empty, same device, dtype and width.
void check_feature_pair(const Tensor& x, const Tensor& y, const char* op) {
  check_cuda_2d(x, op, "x");
  check_cuda_2d(y, op, "y");
  check_same_device(y, x, op, "y");
  TORCH_CHECK(y.scalar_type() == x.scalar_type(), op, ": y must have the dtype of x (", x.scalar_type(), "), got ",
              y.scalar_type());
  TORCH_CHECK(y.size(1) == x.size(1), op, ": y must have as many columns as x (", x.size(1), "), got shape ",
              y.sizes());
}

// A 1-D float32 vector of `n` elements on ref's device, made contiguous.
Tensor vector_f32(const Tensor& t, int64_t n, const Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, op, ": ", name, " must have shape (", n, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  check_same_device(t, ref, op, name);
  return t.contiguous();
}

// The scale as a one-element float32 tensor on ref's device (a CPU scale is copied over).
Tensor scale_f32(const Tensor& scale, const Tensor& ref, const char* op) {
  TORCH_CHECK(scale.numel() == 1, op, ": scale must have exactly one element, got shape ", scale.sizes());
  TORCH_CHECK(scale.scalar_type() == at::kFloat, op, ": scale must be float32, got ", scale.scalar_type());
  return scale.to(ref.device()).contiguous();
}

// Output / partial buffers. With CLIPKERN_NAN_FILL=1 (the tests set it, as for the Triton launchers)
// they start as NaN, so that an element a kernel forgot to write shows up.
bool nan_fill() {
  static const bool on = [] {
    const char* v = std::getenv("CLIPKERN_NAN_FILL");
    return v != nullptr && v[0] != '\0' && std::string(v) != "0";
  }();
  return on;
}

Tensor new_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  Tensor t = at::empty(sizes, options);
  if (nan_fill()) t.fill_(std::numeric_limits<float>::quiet_NaN());
  return t;
}

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

#include "hopper_dispatch.cuh"  // use_hopper_contrastive, hopper_contrastive_bwd (uses the helpers above)

// ------------------------------------------------------------------------------------------------------
// contrastive

std::tuple<Tensor, Tensor, Tensor, Tensor> contrastive_fwd_cuda(const Tensor& x_in, const Tensor& y_in,
                                                                 const Tensor& scale_in) {
  constexpr const char* op = "clipkern::contrastive_fwd";
  check_feature_pair(x_in, y_in, op);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous(), y = y_in.contiguous(), scale = scale_f32(scale_in, x_in, op);
  const int M = static_cast<int>(x.size(0)), N = static_cast<int>(y.size(0)), D = static_cast<int>(x.size(1));
  using namespace contrastive;

  // grid: row_splits (≤ 64, bounds the column-partial buffer) × col_splits (fills the GPU); the Hopper
  // kernel takes its own plan (hopper_plan.h), with the same partial buffers and merge.
  const bool hopper = use_hopper_contrastive(x, y);
  const clipkern_hopper::ForwardPlan plan = clipkern_hopper::forward_plan(M, N, sm_count());
  const int rb = ceil_div(M, F_TM), cb = ceil_div(N, F_TN), target = 4 * sm_count();
  int row_splits = std::min(rb, 64);
  const int rb_per = ceil_div(rb, row_splits);
  row_splits = ceil_div(rb, rb_per);
  int col_splits = std::min(cb, std::max(1, ceil_div(target, row_splits)));
  const int cb_per = ceil_div(cb, col_splits);
  col_splits = ceil_div(cb, cb_per);
  if (hopper) row_splits = plan.row_splits, col_splits = plan.col_splits;

  const auto f32 = x.options().dtype(at::kFloat);
  Tensor row_part_m = new_buffer({col_splits, M}, f32), row_part_l = new_buffer({col_splits, M}, f32);
  Tensor col_part_m = new_buffer({row_splits, N}, f32), col_part_l = new_buffer({row_splits, N}, f32);
  Tensor row_max = new_buffer({M}, f32), row_logsum = new_buffer({M}, f32);
  Tensor col_max = new_buffer({N}, f32), col_logsum = new_buffer({N}, f32);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (hopper) {
    check_hopper_launch(clipkern_hopper::contrastive_fwd_partials(
                            hopper_element(x), x.data_ptr(), y.data_ptr(), scale.data_ptr<float>(), M, N, D, plan,
                            row_part_m.data_ptr<float>(), row_part_l.data_ptr<float>(), col_part_m.data_ptr<float>(),
                            col_part_l.data_ptr<float>(), stream),
                        op, "contrastive_fwd_sm90_kernel");
  } else dispatch_feature_type(x, op, "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    contrastive_fwd_kernel<T><<<dim3(row_splits, col_splits), F_NT, 0, stream>>>(
        cptr<T>(x), cptr<T>(y), scale.data_ptr<float>(), row_part_m.data_ptr<float>(), row_part_l.data_ptr<float>(),
        col_part_m.data_ptr<float>(), col_part_l.data_ptr<float>(), M, N, D, rb_per, cb_per);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  lse_split_merge_kernel<<<ceil_div(M, 256), 256, 0, stream>>>(row_part_m.data_ptr<float>(), row_part_l.data_ptr<float>(),
                                                               col_splits, M, row_max.data_ptr<float>(),
                                                               row_logsum.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  lse_split_merge_kernel<<<ceil_div(N, 256), 256, 0, stream>>>(col_part_m.data_ptr<float>(), col_part_l.data_ptr<float>(),
                                                               row_splits, N, col_max.data_ptr<float>(),
                                                               col_logsum.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {row_max, row_logsum, col_max, col_logsum};
}

// Largest D slice (a multiple of B_DC, ≤ B_DSLICE_MAX) whose fp32 accumulator fits next to the
// kernel's static shared memory; the dynamic size for a slice of width w.
size_t bwd_dynamic_bytes(int w) {
  const int wp = (w + contrastive::B_DC - 1) / contrastive::B_DC * contrastive::B_DC;
  return static_cast<size_t>(contrastive::B_OWN) * (wp + 4) * sizeof(float) + 128;
}

template <typename Kernel> int bwd_d_slice(Kernel kernel, int D) {
  using namespace contrastive;
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  const size_t optin = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  int slice = std::min(B_DSLICE_MAX, (D + B_DC - 1) / B_DC * B_DC);
  while (slice > B_DC && attr.sharedSizeBytes + bwd_dynamic_bytes(slice) > optin) slice -= B_DC;
  return slice;
}

template <typename T, bool TRANSPOSED>
void launch_contrastive_bwd(const Tensor& x, const Tensor& y, const Tensor& scale, const Tensor& own_max,
                            const Tensor& own_logsum, const Tensor& own_g, const Tensor& oth_max,
                            const Tensor& oth_logsum, const Tensor& oth_g, Tensor& out, float* dscale_part,
                            cudaStream_t stream) {
  using namespace contrastive;
  const int M = static_cast<int>(x.size(0)), N = static_cast<int>(y.size(0)), D = static_cast<int>(x.size(1));
  auto kernel = contrastive_bwd_kernel<T, TRANSPOSED>;
  const int slice = bwd_d_slice(kernel, D);
  const size_t dyn = bwd_dynamic_bytes(slice);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn)));
  const int own_count = TRANSPOSED ? N : M;
  const dim3 grid(ceil_div(own_count, B_OWN), ceil_div(D, slice));
  kernel<<<grid, B_NT, dyn, stream>>>(cptr<T>(x), cptr<T>(y), scale.data_ptr<float>(), own_max.data_ptr<float>(),
                                      own_logsum.data_ptr<float>(), own_g.data_ptr<float>(), oth_max.data_ptr<float>(),
                                      oth_logsum.data_ptr<float>(), oth_g.data_ptr<float>(), mptr<T>(out), dscale_part,
                                      M, N, D, slice);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<Tensor, Tensor, Tensor> contrastive_bwd_cuda(const Tensor& x_in, const Tensor& y_in, const Tensor& scale_in,
                                                        const Tensor& row_max_in, const Tensor& row_logsum_in,
                                                        const Tensor& col_max_in, const Tensor& col_logsum_in,
                                                        const Tensor& g_row_in, const Tensor& g_col_in,
                                                        const std::optional<Tensor>& pos_grad_in) {
  constexpr const char* op = "clipkern::contrastive_bwd";
  check_feature_pair(x_in, y_in, op);
  const int64_t M = x_in.size(0), N = y_in.size(0);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous(), y = y_in.contiguous(), scale = scale_f32(scale_in, x_in, op);
  const Tensor row_max = vector_f32(row_max_in, M, x_in, op, "row_max");
  const Tensor row_logsum = vector_f32(row_logsum_in, M, x_in, op, "row_logsum");
  const Tensor col_max = vector_f32(col_max_in, N, x_in, op, "col_max");
  const Tensor col_logsum = vector_f32(col_logsum_in, N, x_in, op, "col_logsum");
  const Tensor g_row = vector_f32(g_row_in, M, x_in, op, "g_row");
  const Tensor g_col = vector_f32(g_col_in, N, x_in, op, "g_col");
  // pos_grad (0-dim): added to dS[i, i] for every row (the positives of a loss with labels i); s·pos_grad,
  // the value the s·dS workspace gains there. Its scale term (pos_grad·Σ raw_ii) is the caller's.
  Tensor pos_ws;
  if (pos_grad_in.has_value()) {
    TORCH_CHECK(pos_grad_in->dim() == 0, op, ": pos_grad must be a 0-dim tensor, got shape ", pos_grad_in->sizes());
    TORCH_CHECK(M <= N, op, ": pos_grad adds to dS[i, i], so x may not have more rows than y (", M, " > ", N, ")");
    check_same_device(*pos_grad_in, x_in, op, "pos_grad");
    pos_ws = pos_grad_in->to(at::kFloat) * scale;
  }
  if (use_hopper_contrastive(x, y))
    return hopper_contrastive_bwd(x, y, scale, row_max, row_logsum, col_max, col_logsum, g_row, g_col, pos_ws, op);
  Tensor dx = new_buffer(x.sizes(), x.options()), dy = new_buffer(y.sizes(), y.options());
  Tensor dscale_part = new_buffer({ceil_div(M, contrastive::B_OWN)}, x.options().dtype(at::kFloat));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_feature_type(x, op, "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_contrastive_bwd<T, false>(x, y, scale, row_max, row_logsum, g_row, col_max, col_logsum, g_col, dx,
                                     dscale_part.data_ptr<float>(), stream);
    launch_contrastive_bwd<T, true>(x, y, scale, col_max, col_logsum, g_col, row_max, row_logsum, g_row, dy, nullptr,
                                    stream);
  });
  Tensor dscale = dscale_part.sum();  // fixed-size reduction: deterministic
  if (pos_ws.defined()) {  // these kernels own whole rows of dx / dy: the diagonal term as two feature passes
    dx.addcmul_(y.narrow(0, 0, M), pos_ws);
    dy.narrow(0, 0, M).addcmul_(x, pos_ws);
  }
  return {dx, dy, dscale};
}

// ------------------------------------------------------------------------------------------------------
// pairdiff

void check_pairdiff_inputs(const Tensor& a, const Tensor& r, const char* op) {
  check_cuda_2d(a, op, "a");
  check_cuda_2d(r, op, "r");
  check_same_device(r, a, op, "r");
  TORCH_CHECK(a.scalar_type() == at::kFloat, op, ": a must be float32, got ", a.scalar_type());
  TORCH_CHECK(r.scalar_type() == at::kFloat, op, ": r must be float32, got ", r.scalar_type());
  TORCH_CHECK(r.size(0) == a.size(1) && r.size(1) == a.size(1), op, ": r must have shape (", a.size(1), ", ",
              a.size(1), ") to match a's ", a.size(1), " columns, got ", r.sizes());
}

std::tuple<Tensor, Tensor> pairdiff_fwd_cuda(const Tensor& a_in, const Tensor& r_in, const Tensor& scale_in) {
  constexpr const char* op = "clipkern::pairdiff_fwd";
  check_pairdiff_inputs(a_in, r_in, op);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const Tensor a = a_in.contiguous(), r = r_in.contiguous(), scale = scale_f32(scale_in, a_in, op);
  const int P = static_cast<int>(a.size(0)), N = static_cast<int>(a.size(1));
  using namespace pairdiff;
  const int splits = ceil_div(N, PF_I);
  const auto f32 = a.options();
  Tensor part_m = new_buffer({P, splits}, f32), part_l = new_buffer({P, splits}, f32);
  Tensor lse_max = new_buffer({P}, f32), lse_logsum = new_buffer({P}, f32);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  pairdiff_fwd_kernel<<<dim3(ceil_div(P, PF_P), splits), PF_NT, 0, stream>>>(
      a.data_ptr<float>(), r.data_ptr<float>(), scale.data_ptr<float>(), part_m.data_ptr<float>(),
      part_l.data_ptr<float>(), P, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  pairdiff_merge_kernel<<<ceil_div(P, 256), 256, 0, stream>>>(part_m.data_ptr<float>(), part_l.data_ptr<float>(), P,
                                                              splits, lse_max.data_ptr<float>(),
                                                              lse_logsum.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {lse_max, lse_logsum};
}

std::tuple<Tensor, Tensor> pairdiff_bwd_cuda(const Tensor& a_in, const Tensor& r_in, const Tensor& scale_in,
                                             const Tensor& lse_max_in, const Tensor& lse_logsum_in, const Tensor& g_in) {
  constexpr const char* op = "clipkern::pairdiff_bwd";
  check_pairdiff_inputs(a_in, r_in, op);
  const int64_t P64 = a_in.size(0);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const Tensor a = a_in.contiguous(), r = r_in.contiguous(), scale = scale_f32(scale_in, a_in, op);
  const Tensor lse_max = vector_f32(lse_max_in, P64, a_in, op, "lse_max");
  const Tensor lse_logsum = vector_f32(lse_logsum_in, P64, a_in, op, "lse_logsum");
  const Tensor g = vector_f32(g_in, P64, a_in, op, "g");
  const int P = static_cast<int>(P64), N = static_cast<int>(a.size(1));
  using namespace pairdiff;
  Tensor u = new_buffer({P, N}, a.options()), t = new_buffer({N, N}, a.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  pairdiff_bwd_u_kernel<<<dim3(ceil_div(P, PU_P), ceil_div(N, PU_K)), PU_NT, 0, stream>>>(
      a.data_ptr<float>(), r.data_ptr<float>(), scale.data_ptr<float>(), lse_max.data_ptr<float>(),
      lse_logsum.data_ptr<float>(), g.data_ptr<float>(), u.data_ptr<float>(), P, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  pairdiff_bwd_t_kernel<<<dim3(ceil_div(N, PT_J), ceil_div(N, PT_I)), PT_NT, 0, stream>>>(
      a.data_ptr<float>(), r.data_ptr<float>(), scale.data_ptr<float>(), lse_max.data_ptr<float>(),
      lse_logsum.data_ptr<float>(), g.data_ptr<float>(), t.data_ptr<float>(), P, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {u, t};
}

// ------------------------------------------------------------------------------------------------------
// listmle

// Calls f(THREADS, IPT, COLBITS) for the smallest row capacity ≥ N (listmle::for_each_row_capacity), or
// raises for rows longer than the kernels' maximum.
template <typename F> void dispatch_row_capacity(int N, const char* op, F&& f) {
  TORCH_CHECK(listmle::for_each_row_capacity(N, f), op, ": rows of ", N, " columns exceed the CUDA kernel's maximum of ",
              listmle::kListmleMaxN, " (one row per thread block); use backend='triton' or 'reference' for longer rows");
}

template <typename Kernel> void set_dynamic_smem(Kernel kernel, size_t bytes, int N, const char* op) {
  const size_t optin = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(bytes <= optin, op, ": rows of ", N, " columns need ", bytes, " bytes of shared memory per block, this GPU "
              "allows ", optin, "; use backend='triton' or 'reference' for such rows");
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

void check_listmle_inputs(const Tensor& scores, const Tensor& targets, const char* op) {
  check_cuda_2d(scores, op, "scores");
  check_cuda_2d(targets, op, "targets");
  check_same_device(targets, scores, op, "targets");
  TORCH_CHECK(targets.sizes() == scores.sizes(), op, ": targets must have the shape of scores (", scores.sizes(),
              "), got ", targets.sizes());
  TORCH_CHECK(at::isFloatingType(targets.scalar_type()), op, ": targets must be a floating tensor, got ",
              targets.scalar_type());
  TORCH_CHECK(scores.size(0) <= INT32_MAX, op, ": too many rows in scores: ", scores.size(0));
}

Tensor listmle_fwd_cuda(const Tensor& scores_in, const Tensor& targets_in, bool decay_log) {
  constexpr const char* op = "clipkern::listmle_fwd";
  check_listmle_inputs(scores_in, targets_in, op);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const Tensor scores = scores_in.contiguous(), targets = targets_in.to(at::kFloat).contiguous();
  const int B = static_cast<int>(scores.size(0)), N = static_cast<int>(scores.size(1));
  Tensor loss = new_buffer({B}, scores.options().dtype(at::kFloat));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_feature_type(scores, op, "scores", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_row_capacity(N, op, [&](auto threads, auto ipt, auto colbits) {
      constexpr int TH = decltype(threads)::value, IPT = decltype(ipt)::value, CB = decltype(colbits)::value;
      auto kernel = listmle::listmle_fwd_kernel<T, TH, IPT, CB>;
      const size_t bytes = sizeof(typename listmle::ListmleBlock<TH, IPT>::Shared) + 128;
      set_dynamic_smem(kernel, bytes, N, op);
      kernel<<<B, TH, bytes, stream>>>(cptr<T>(scores), targets.data_ptr<float>(), loss.data_ptr<float>(), N, decay_log);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return loss;
}

Tensor listmle_bwd_cuda(const Tensor& scores_in, const Tensor& targets_in, const Tensor& g_in, bool decay_log) {
  constexpr const char* op = "clipkern::listmle_bwd";
  check_listmle_inputs(scores_in, targets_in, op);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const Tensor scores = scores_in.contiguous(), targets = targets_in.to(at::kFloat).contiguous();
  const Tensor g = vector_f32(g_in, scores_in.size(0), scores_in, op, "g");
  const int B = static_cast<int>(scores.size(0)), N = static_cast<int>(scores.size(1));
  Tensor grad = new_buffer(scores.sizes(), scores.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_feature_type(scores, op, "scores", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_row_capacity(N, op, [&](auto threads, auto ipt, auto colbits) {
      constexpr int TH = decltype(threads)::value, IPT = decltype(ipt)::value, CB = decltype(colbits)::value;
      auto kernel = listmle::listmle_bwd_kernel<T, TH, IPT, CB>;
      const size_t bytes = sizeof(typename listmle::ListmleBlock<TH, IPT>::Shared) + 128;
      set_dynamic_smem(kernel, bytes, N, op);
      kernel<<<B, TH, bytes, stream>>>(cptr<T>(scores), targets.data_ptr<float>(), g.data_ptr<float>(),
                                       mptr<T>(grad), N, decay_log);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad;
}

}  // namespace
}  // namespace clipkern_cuda

TORCH_LIBRARY_IMPL(clipkern, CUDA, m) {
  m.impl("contrastive_fwd", &clipkern_cuda::contrastive_fwd_cuda);
  m.impl("contrastive_bwd", &clipkern_cuda::contrastive_bwd_cuda);
  m.impl("pairdiff_fwd", &clipkern_cuda::pairdiff_fwd_cuda);
  m.impl("pairdiff_bwd", &clipkern_cuda::pairdiff_bwd_cuda);
  m.impl("listmle_fwd", &clipkern_cuda::listmle_fwd_cuda);
  m.impl("listmle_bwd", &clipkern_cuda::listmle_bwd_cuda);
}
