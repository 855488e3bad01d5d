// ATen side of the Hopper contrastive path: when to take it, and the backward's chunk loop (dS kernel
// into a bounded workspace, then cuBLAS GEMMs). Included by kernels.cu inside its anonymous namespace,
// after the shared helpers (new_buffer, sm_count, ceil_div) it uses; the kernels are behind the plain
// interface of hopper_contrastive.h (their CuTe headers stay in hopper_contrastive.cu).
//
// Taken for fp16/bf16 features on a compute-capability 9.0 GPU (the sm_90a cubin runs there only) when
// the build holds the sm_90a kernels (clipkern_hopper::compiled()), D % 8 == 0 and both matrices start
// 16-byte aligned (TMA: 16-byte global strides and base); CLIPKERN_CUDA_HOPPER=0 turns it off (the wmma
// kernels then run on Hopper too). Everything else keeps the wmma / SIMT kernels of contrastive.cuh.
// kernels.cu includes <cstdlib>, <string> and hopper_contrastive.h at global scope, before this file.
#pragma once

// Read at every call (not cached), so that a test can compare both paths in one process.
bool hopper_env_enabled() {
  const char* v = std::getenv("CLIPKERN_CUDA_HOPPER");
  return v == nullptr || std::string(v) != "0";
}

// x, y: contiguous, same dtype (checked by the caller).
bool use_hopper_contrastive(const Tensor& x, const Tensor& y) {
  if (!clipkern_hopper::compiled() || !hopper_env_enabled()) return false;
  if (x.scalar_type() != at::kHalf && x.scalar_type() != at::kBFloat16) return false;
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  if (prop->major != 9 || prop->minor != 0) return false;
  const auto aligned = [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  return x.size(1) % 8 == 0 && aligned(x) && aligned(y);
}

clipkern_hopper::Element hopper_element(const Tensor& x) {
  return x.scalar_type() == at::kHalf ? clipkern_hopper::Element::kHalf : clipkern_hopper::Element::kBFloat16;
}

void check_hopper_launch(cudaError_t err, const char* op, const char* kernel) {
  TORCH_CHECK(err == cudaSuccess, op, ": launching the Hopper kernel ", kernel, " failed: ", cudaGetErrorString(err),
              " (set CLIPKERN_CUDA_HOPPER=0 to use the wmma kernels)");
}

// CLIPKERN_WORKSPACE_MB as ops/base.workspace_bytes reads it (0: unset, use the default budget).
double workspace_mb_env(const char* op) {
  const char* v = std::getenv("CLIPKERN_WORKSPACE_MB");
  if (v == nullptr || std::string(v).find_first_not_of(" \t") == std::string::npos) return 0.0;
  char* end = nullptr;
  const double mb = std::strtod(v, &end);
  TORCH_CHECK(end != v && mb > 0, op, ": CLIPKERN_WORKSPACE_MB must be a positive number of megabytes, got '", v, "'");
  return mb;
}

// dx, dy, dscale of contrastive_bwd through the Hopper dS kernel: for each row chunk [r0, r1),
//   ws = scale·dS[r0:r1] (feature dtype; + pos_ws on (i, i) when defined),  dx[r0:r1] = ws·y,  dy (+)= wsᵀ·x[r0:r1]
// as ops/base.chunked_input_grads: one chunk makes dy a single GEMM in the feature dtype; several
// accumulate dy in fp32 (mm / addmm with out_dtype float32) and round once at the end.
std::tuple<Tensor, Tensor, Tensor> hopper_contrastive_bwd(const Tensor& x, const Tensor& y, const Tensor& scale,
                                                          const Tensor& row_max, const Tensor& row_logsum,
                                                          const Tensor& col_max, const Tensor& col_logsum,
                                                          const Tensor& g_row, const Tensor& g_col,
                                                          const Tensor& pos_ws, const char* op) {
  const int64_t M = x.size(0), N = y.size(0), D = x.size(1);
  const int64_t chunk = clipkern_hopper::workspace_rows(M, N, D, x.element_size(), workspace_mb_env(op));
  Tensor ws = new_buffer({chunk, N}, x.options());
  Tensor dx = new_buffer(x.sizes(), x.options());
  Tensor dscale_part = new_buffer({int64_t(clipkern_hopper::ds_row_tiles(M)) * clipkern_hopper::ds_col_tiles(N)},
                                  x.options().dtype(at::kFloat));
  Tensor dy;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t r0 = 0; r0 < M; r0 += chunk) {
    const int64_t rows = std::min(chunk, M - r0);
    Tensor w = ws.narrow(0, 0, rows);
    check_hopper_launch(
        clipkern_hopper::contrastive_ds_chunk(hopper_element(x), x.data_ptr(), y.data_ptr(), scale.data_ptr<float>(),
                                              int(M), int(N), int(D), int(r0), int(r0 + rows),
                                              row_max.data_ptr<float>(), row_logsum.data_ptr<float>(),
                                              col_max.data_ptr<float>(), col_logsum.data_ptr<float>(),
                                              g_row.data_ptr<float>(), g_col.data_ptr<float>(), w.data_ptr(),
                                              dscale_part.data_ptr<float>(), stream),
        op, "contrastive_ds_sm90_kernel");
    if (pos_ws.defined()) w.diagonal(r0).add_(pos_ws);  // s·pos_grad at (i − r0, i): the positives, before the GEMMs
    Tensor dx_rows = dx.narrow(0, r0, rows);
    at::mm_out(dx_rows, w, y);
    const Tensor x_rows = x.narrow(0, r0, rows);
    if (chunk >= M) dy = at::mm(w.t(), x);
    else if (!dy.defined()) dy = at::mm(w.t(), x_rows, at::kFloat);
    else dy = at::addmm(dy, w.t(), x_rows, at::kFloat);
  }
  if (dy.scalar_type() != x.scalar_type()) dy = dy.to(x.scalar_type());
  return {dx, dy, dscale_part.sum()};
}
