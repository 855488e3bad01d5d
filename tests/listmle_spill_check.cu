// Instantiates every ListMLE kernel the launcher can pick (csrc/cuda/kernels.cu dispatches through
// listmle::for_each_row_capacity) for each feature dtype, so that tests/test_listmle_spills.py can
// compile them alone (seconds, not the whole extension) and read ptxas's spill report.
#include "../csrc/cuda/listmle.cuh"

namespace clipkern_cuda {
namespace listmle {

template <typename T> void instantiate_all_row_capacities(void** out) {
  int slot = 0;
  for (int n : {256, 1024, 4096, kListmleMaxN}) {
    for_each_row_capacity(n, [&](auto threads, auto ipt, auto colbits) {
      constexpr int TH = decltype(threads)::value, IPT = decltype(ipt)::value, CB = decltype(colbits)::value;
      out[slot++] = reinterpret_cast<void*>(&listmle_fwd_kernel<T, TH, IPT, CB>);
      out[slot++] = reinterpret_cast<void*>(&listmle_bwd_kernel<T, TH, IPT, CB>);
    });
  }
}

template void instantiate_all_row_capacities<float>(void**);
template void instantiate_all_row_capacities<__half>(void**);
template void instantiate_all_row_capacities<__nv_bfloat16>(void**);

}  // namespace listmle
}  // namespace clipkern_cuda
