// Host interface of the Hopper (sm_90a) contrastive kernels in hopper_contrastive.cu: raw pointers and
// a stream, no ATen, so that the CuTe/CUTLASS headers stay inside that one translation unit.
// kernels.cu (contrastive_fwd_cuda / contrastive_bwd_cuda) decides when to take this path.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "hopper_plan.h"

namespace clipkern_hopper {

enum class Element { kHalf, kBFloat16 };

// True when this build holds the sm_90a kernels: the CUTLASS/CuTe headers were found (pip
// nvidia-cutlass, see setup.py) and the arch list had 9.0a (setup.py defines CLIPKERN_HOPPER_SM90A).
// A build without them (e.g. the JIT fallback) keeps the wmma kernels on every GPU.
bool compiled();

// Forward partials over the plan's split grid, written exactly like contrastive_fwd_kernel's:
//   row_part_{m,l}[cs·M + i]  (max, Σ exp) of row i over column split cs,
//   col_part_{m,l}[rs·N + j]  (max, Σ exp) of column j over row split rs,
// then merged by lse_split_merge_kernel. x (M×D), y (N×D) row-major, 16-byte aligned, D % 8 == 0.
// Returns the launch's error (cudaSuccess when launched).
cudaError_t contrastive_fwd_partials(Element element, const void* x, const void* y, const float* scale, int M, int N,
                                     int D, const ForwardPlan& plan, float* row_part_m, float* row_part_l,
                                     float* col_part_m, float* col_part_l, cudaStream_t stream);

// One row chunk [row0, row_end) of the backward: ws[(i − row0)·N + j] = scale·dS[i, j] in the feature
// dtype, dS = g_row[i]·P_r + g_col[j]·P_c, and one partial Σ dS ⊙ raw per CTA into
// dscale_part[(row0 / kTileRows + tile_row)·ds_col_tiles(N) + tile_col]. row0 is a multiple of kTileRows.
cudaError_t contrastive_ds_chunk(Element element, const void* x, const void* y, const float* scale, int M, int N, int D,
                                 int row0, int row_end, const float* row_max, const float* row_logsum,
                                 const float* col_max, const float* col_logsum, const float* g_row,
                                 const float* g_col, void* ws, float* dscale_part, cudaStream_t stream);

}  // namespace clipkern_hopper
