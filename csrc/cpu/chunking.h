// Row chunks of the C++ CPU ops: the chunk rule of the GPU backward (docs/design.md §4.2,
// clipkern/ops/base.workspace_bytes / workspace_rows), so that the CPU tests run the chunk structure
// the GPU runs. Budget: CLIPKERN_WORKSPACE_MB when set, else min(1 GiB, max(64 MiB, 4× the bytes of the
// two feature matrices)); rows per chunk = budget ÷ (N · bytes of one tile element), at least 1, at most M.
// At B = N = 8192, D = 512, fp32 that is 4096 rows (a 128 MiB tile): extra memory stays O(B·D).
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace clipkern_cpu {

inline int64_t workspace_bytes(int64_t rows, int64_t cols, int64_t width, int64_t feature_elem_bytes) {
  if (const char* env = std::getenv("CLIPKERN_WORKSPACE_MB"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const double mb = std::strtod(env, &end);
    TORCH_CHECK(end != env && mb > 0, "CLIPKERN_WORKSPACE_MB must be a positive number of megabytes, got '", env, "'");
    return static_cast<int64_t>(mb * (1 << 20));
  }
  const int64_t features = 4 * (rows + cols) * width * feature_elem_bytes;
  return std::min<int64_t>(int64_t{1024} << 20, std::max<int64_t>(int64_t{64} << 20, features));
}

// Rows of the rows × cols tile (elements of tile_elem_bytes) per chunk.
inline int64_t chunk_rows(int64_t rows, int64_t cols, int64_t width, int64_t feature_elem_bytes,
                          int64_t tile_elem_bytes) {
  const int64_t budget = workspace_bytes(rows, cols, width, feature_elem_bytes);
  const int64_t fit = budget / std::max<int64_t>(1, cols * tile_elem_bytes);
  return std::max<int64_t>(1, std::min(rows, fit));
}

}  // namespace clipkern_cpu
