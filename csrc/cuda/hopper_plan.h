// Launch plan of the Hopper (sm_90a) contrastive kernels: tile sizes, the forward's split grid, the
// dS kernel's grid and the backward's workspace chunk. Plain C++ (no CUDA), so that
//   - kernels.cu and hopper_contrastive.cu launch with it,
//   - tests/hopper_plan_check.cpp checks it on the host against the Python mirror in
//     benchmarks/perfmodel/cuda_path.py (which counts the CUDA path's work for the performance model).
// The numbers mirror the Triton path's sm_90 configuration (clipkern/ops/base: tile_config,
// TileConfig.split_grid, workspace_bytes, workspace_rows) so that both backends walk S alike.
#pragma once

#include <algorithm>
#include <cstdint>

namespace clipkern_hopper {

// One CTA = one warpgroup (4 warps). A tile is kTileRows rows of X × kTileCols rows of Y, its raw
// product accumulated over D in kTileK-wide steps through shared-memory stages, each filled by one TMA
// load of X and one of Y. Both kernels (3 stages, ≤ 168 registers, ≤ 75 KB + the 1 KB the SM reserves
// per CTA) fit 3 CTAs per SM (228 KB): one CTA's softmax epilogue runs under the other CTAs' MMAs.
constexpr int kTileRows = 128;
constexpr int kTileCols = 64;
constexpr int kTileK = 64;  // 64 16-bit elements = one 128-byte swizzle row
constexpr int kThreads = 128;
constexpr int kFwdStages = 3;
constexpr int kDsStages = 3;
constexpr int kFwdCtasPerSm = 3;  // also the forward grid's slots: row_splits·col_splits ≤ 3 × the SMs
constexpr int kDsCtasPerSm = 3;
constexpr int kMaxSplits = 64;  // bounds the (row_splits·N + col_splits·M) partial buffers
// Dynamic shared memory per CTA: stages × (X box + Y box) + barriers + the epilogue's scratch, rounded up
// to 1 KB (the storage is 1024-byte aligned). static_asserts in hopper_contrastive.cu keep these equal
// to the kernels' storage; the performance model reads them for the CTAs per SM.
constexpr int kFwdSmemBytes = 76800;
constexpr int kDsSmemBytes = 74752;

inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The forward's grid: CTA (rs, cs) walks row blocks [rs·rb_per, …) × column blocks [cs·cb_per, …);
// no split is empty. As tile_config + split_grid: row_splits·col_splits ≤ kFwdCtasPerSm × the SMs.
struct ForwardPlan {
  int row_blocks, col_blocks;  // tiles along M and N
  int row_splits, col_splits;  // grid
  int rb_per_split, cb_per_split;
};

inline ForwardPlan forward_plan(int64_t M, int64_t N, int sms) {
  ForwardPlan p{};
  p.row_blocks = static_cast<int>(ceil_div64(M, kTileRows));
  p.col_blocks = static_cast<int>(ceil_div64(N, kTileCols));
  const int slots = kFwdCtasPerSm * std::max(1, sms);
  const int rs = std::min({p.row_blocks, kMaxSplits, slots});
  const int cs = std::max(1, std::min({p.col_blocks, slots / rs, kMaxSplits}));
  p.rb_per_split = static_cast<int>(ceil_div64(p.row_blocks, rs));
  p.cb_per_split = static_cast<int>(ceil_div64(p.col_blocks, cs));
  p.row_splits = static_cast<int>(ceil_div64(p.row_blocks, p.rb_per_split));
  p.col_splits = static_cast<int>(ceil_div64(p.col_blocks, p.cb_per_split));
  return p;
}

// The backward's dS workspace (as ops/base.workspace_bytes / workspace_rows): `budget_mb` > 0 is
// CLIPKERN_WORKSPACE_MB; otherwise min(1 GiB, max(64 MiB, 4× the feature bytes)). Rows per chunk: a
// multiple of kTileRows, at least one tile, at most all rows.
inline int64_t workspace_bytes(int64_t M, int64_t N, int64_t D, int64_t elem_bytes, double budget_mb) {
  if (budget_mb > 0) return static_cast<int64_t>(budget_mb * 1048576.0);
  const int64_t features = 4 * (M + N) * D * elem_bytes;
  return std::min<int64_t>(int64_t(1024) << 20, std::max<int64_t>(int64_t(64) << 20, features));
}

inline int64_t workspace_rows(int64_t M, int64_t N, int64_t D, int64_t elem_bytes, double budget_mb) {
  const int64_t fit = workspace_bytes(M, N, D, elem_bytes, budget_mb) / std::max<int64_t>(1, N * elem_bytes);
  return std::min<int64_t>(M, std::max<int64_t>(kTileRows, fit / kTileRows * kTileRows));
}

// dS grid of a chunk of `rows` rows: one CTA per (row tile, column tile); the chunk starting at row r0
// writes its dscale partials from slot (r0 / kTileRows) · ds_col_tiles(N) of one buffer for all chunks.
inline int ds_row_tiles(int64_t rows) { return static_cast<int>(ceil_div64(rows, kTileRows)); }
inline int ds_col_tiles(int64_t N) { return static_cast<int>(ceil_div64(N, kTileCols)); }

}  // namespace clipkern_hopper
