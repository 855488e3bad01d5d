// Host check of csrc/cuda/hopper_plan.h (plain C++, built with the system C++ compiler by
// tests/test_hopper_compile.py): for each input line "M N D elem_bytes sms budget_mb" prints
//   M N D row_blocks col_blocks row_splits col_splits rb_per_split cb_per_split chunk_rows ds_col_tiles
// which the test compares with the Python mirror in benchmarks/perfmodel/cuda_path.py.
#include <cstdio>

#include "../csrc/cuda/hopper_plan.h"

int main() {
  long long M, N, D, elem;
  int sms;
  double budget;
  while (std::scanf("%lld %lld %lld %lld %d %lf", &M, &N, &D, &elem, &sms, &budget) == 6) {
    const auto p = clipkern_hopper::forward_plan(M, N, sms);
    std::printf("%lld %lld %lld %d %d %d %d %d %d %lld %d\n", M, N, D, p.row_blocks, p.col_blocks, p.row_splits,
                p.col_splits, p.rb_per_split, p.cb_per_split,
                static_cast<long long>(clipkern_hopper::workspace_rows(M, N, D, elem, budget)),
                clipkern_hopper::ds_col_tiles(N));
  }
  return 0;
}
