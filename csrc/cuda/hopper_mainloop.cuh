// The raw-tile mainloop of the Hopper (sm_90a) contrastive kernels, built from CuTe's tested parts:
// TMA loads (SM90_TMA_LOAD, completing on an mbarrier with a transaction count) into 128-byte-swizzled
// shared-memory stages, and warpgroup MMA (wgmma, chosen by GMMA::ss_op_selector) reading both operands
// from shared memory, fp32 accumulators in registers.
//
//     raw = X[rows of the tile] · Y[cols of the tile]ᵀ        (kTileRows × kTileCols, fp32, over all of D)
//
// One CTA = one warpgroup (kThreads = 128). A CTA computes a sequence of tiles (the forward walks its
// split's rectangle, the dS kernel one tile); the loads run through one pipeline over the flattened
// sequence of (tile, k-step) "items", so the first k-steps of the next tile load during the current
// tile's epilogue. Item q lives in stage q % Stages; it is the (q / Stages)-th use of that stage, so
// its barriers complete phase parity (q / Stages) & 1.
//
// Ordering (each a documented PTX rule; the correctness hazards of this file):
//   full[s]  (ClusterTransactionBarrier, 1 arrival + the TMA's byte count): thread 0 arrives with
//            expect_tx(bytes of both boxes, out-of-bounds zero fill included), the TMA completes the bytes.
//            Consumers wait on it before their wgmma reads the stage.
//   empty[s] (ClusterBarrier, kThreads arrivals): every thread arrives once its wgmma reading the stage
//            has completed (after warpgroup_wait); thread 0 waits on it before re-filling the stage.
//   wgmma:   warpgroup_fence_operand(acc) around the asynchronous MMAs (no register reuse across
//            them), warpgroup_arrive() (wgmma.fence) before the first MMA of a batch,
//            warpgroup_commit_batch() after, warpgroup_wait<N>() before the accumulators or the stage
//            are touched. One batch (one k-step) stays in flight while the next is issued.
//   Barrier initialisation: fence_barrier_init() + __syncthreads() before any TMA or wait uses them.
// Out-of-range rows (M, N not multiples of the tile) and columns (D not a multiple of kTileK) are
// zero-filled by the TMA, so every raw value of a valid (row, col) is exact and the rest are 0.
#pragma once

#include <cute/tensor.hpp>  // first: the atom headers below rely on it
#include <cute/arch/cluster_sm90.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>

#include "hopper_plan.h"

namespace clipkern_hopper {

using namespace cute;

template <class E, int kStages>
struct HopperTile {
  using Element = E;  // cutlass::half_t or cutlass::bfloat16_t
  static constexpr int kStageCount = kStages;
  using TileRows = Int<kTileRows>;
  using TileCols = Int<kTileCols>;
  using TileK = Int<kTileK>;
  using Stages = Int<kStages>;
  // K-major (D contiguous) operands, 128-byte swizzle: one kTileK row of 16-bit values per swizzle row.
  using SmemLayoutX = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<E>{}, make_shape(TileRows{}, TileK{}, Stages{})));
  using SmemLayoutY = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<E>{}, make_shape(TileCols{}, TileK{}, Stages{})));
  // One warpgroup; a kTileRows × kTileCols tile is kTileRows / 64 wgmma m64nNk16 atoms per 16-wide k slice.
  using MmaOp = decltype(GMMA::ss_op_selector<E, E, float, Shape<TileRows, TileCols, TileK>>());
  using TiledMma = decltype(make_tiled_mma(MmaOp{}));
  static_assert(size(TiledMma{}) == kThreads, "one warpgroup per CTA");
  // The epilogues rely on this accumulator layout (CuTe's GMMA::CLayout_64xN): per thread, values
  // (2 adjacent columns, rows r and r + 8, kTileCols / 8 column blocks); lanes 4g..4g+3 of a warp share
  // rows, lanes with equal lane % 4 share columns, warp w holds rows 16w..16w+15 of each 64-row atom.
  static_assert(std::is_same_v<typename MMA_Atom<MmaOp>::Traits::CLayout, GMMA::CLayout_64xN<kTileCols>>,
                "unexpected wgmma accumulator layout");
  static constexpr uint32_t kStageBytes = (kTileRows + kTileCols) * kTileK * sizeof(E);
};

// A row-major feature matrix (rows × D, D contiguous) as the TMA sees it, and its TMA atom for boxes of
// box_rows × kTileK. The descriptor is built on the host (cuTensorMapEncodeTiled through the runtime's
// driver entry point) and passed to the kernel by value as a __grid_constant__ parameter.
template <class Tile, int BoxRows>
auto make_feature_tma(typename Tile::Element const* ptr, int rows, int D) {
  auto gmem = make_tensor(make_gmem_ptr(ptr), make_shape(rows, D), make_stride(D, Int<1>{}));
  using Smem = std::conditional_t<BoxRows == kTileRows, typename Tile::SmemLayoutX, typename Tile::SmemLayoutY>;
  return make_tma_atom(SM90_TMA_LOAD{}, gmem, Smem{}(_, _, 0), make_shape(Int<BoxRows>{}, Int<kTileK>{}));
}
template <class Tile> using TmaX = decltype(make_feature_tma<Tile, kTileRows>(nullptr, 0, 0));
template <class Tile> using TmaY = decltype(make_feature_tma<Tile, kTileCols>(nullptr, 0, 0));

template <class Tile, class Scratch>
struct SharedStorage {
  alignas(1024) ArrayEngine<typename Tile::Element, cosize_v<typename Tile::SmemLayoutX>> x;
  alignas(1024) ArrayEngine<typename Tile::Element, cosize_v<typename Tile::SmemLayoutY>> y;
  alignas(16) uint64_t full[Tile::kStageCount];
  alignas(16) uint64_t empty[Tile::kStageCount];
  Scratch scratch;  // the epilogue's own shared memory
};

// Bytes of dynamic shared memory to launch with. The storage must start 1024-byte aligned (the 128-byte
// swizzle pattern of the TMA boxes and the wgmma descriptors repeats every 1 KB): the dynamic window is
// declared __align__(1024), and the kernel traps, rather than compute garbage, if it is not.
template <class Storage> constexpr int dynamic_smem_bytes() { return int(sizeof(Storage)); }

template <class Storage> CUTE_DEVICE Storage& aligned_storage() {
  extern __shared__ __align__(1024) unsigned char clipkern_hopper_smem[];
  if (cast_smem_ptr_to_uint(clipkern_hopper_smem) % 1024 != 0) __trap();
  return *reinterpret_cast<Storage*>(clipkern_hopper_smem);
}

// (m, n) views of a thread's accumulator (or of its coordinates, partition_C of an identity tensor):
// ((2 cols, 2 rows, N/8), MMA_M, MMA_N) -> ((2 rows, MMA_M), (2 cols, N/8, MMA_N)).
template <class Layout> CUTE_HOST_DEVICE constexpr auto rowcol(Layout l) {
  static_assert(decltype(rank<0>(l))::value == 3 && decltype(size<0, 0>(l))::value == 2 &&
                decltype(size<0, 1>(l))::value == 2, "a GMMA fp32 accumulator layout");
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<0, 2>(l), get<2>(l)));
}

// Runs the tiles 0 … num_tiles − 1 of this CTA: tile_coords(t) -> (row block, column block) of X and Y
// (in tile units); prologue() once, collectively, after the first loads are issued (it may use
// __syncthreads and the epilogue's scratch); for each tile, epilogue(t, acc, coord) with acc the
// (kTileRows × kTileCols) raw tile as a rowcol view of this thread's registers and coord its (row, col)
// within the tile. All kThreads threads must call it (collective).
template <class Tile, class Storage, class Coords, class Prologue, class Epilogue>
CUTE_DEVICE void for_each_raw_tile(Storage& smem, TmaX<Tile> const& tma_x, TmaY<Tile> const& tma_y, int M, int N,
                                   int D, int num_tiles, Coords tile_coords, Prologue&& prologue,
                                   Epilogue&& epilogue) {
  using Full = cutlass::arch::ClusterTransactionBarrier;
  using Empty = cutlass::arch::ClusterBarrier;
  constexpr int kStages = Tile::kStageCount;
  const int tid = threadIdx.x;
  const bool producer = tid == 0;
  const int k_tiles = (D + kTileK - 1) / kTileK;
  const int items = num_tiles * k_tiles;

  if (producer) {
    for (int s = 0; s < kStages; ++s) {
      Full::init(&smem.full[s], 1);
      Empty::init(&smem.empty[s], kThreads);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  Tensor sX = make_tensor(make_smem_ptr(smem.x.begin()), typename Tile::SmemLayoutX{});  // (rows, k, stage)
  Tensor sY = make_tensor(make_smem_ptr(smem.y.begin()), typename Tile::SmemLayoutY{});
  // TMA views: (box, row block, k block) of global memory and (box, stage) of shared memory
  Tensor gX = local_tile(tma_x.get_tma_tensor(make_shape(M, D)), Shape<Int<kTileRows>, Int<kTileK>>{}, make_coord(_, _));
  Tensor gY = local_tile(tma_y.get_tma_tensor(make_shape(N, D)), Shape<Int<kTileCols>, Int<kTileK>>{}, make_coord(_, _));
  auto x_parts = tma_partition(tma_x, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sX), group_modes<0, 2>(gX));
  auto y_parts = tma_partition(tma_y, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sY), group_modes<0, 2>(gY));
  Tensor tXg = get<0>(x_parts);  // (box, row block, k block)
  Tensor tXs = get<1>(x_parts);  // (box, stage)
  Tensor tYg = get<0>(y_parts);
  Tensor tYs = get<1>(y_parts);

  // thread 0: load item q (tile q / k_tiles, k-step q % k_tiles) into stage q % kStages
  auto issue = [&](int q) {
    const int stage = q % kStages, k = q % k_tiles;
    const auto rc = tile_coords(q / k_tiles);
    Full::arrive_and_expect_tx(&smem.full[stage], Tile::kStageBytes);
    copy(tma_x.with(smem.full[stage]), tXg(_, get<0>(rc), k), tXs(_, stage));
    copy(tma_y.with(smem.full[stage]), tYg(_, get<1>(rc), k), tYs(_, stage));
  };
  // every thread: item q's MMAs have completed, its stage may be re-filled (with item q + kStages)
  auto release = [&](int q) {
    const int stage = q % kStages;
    Empty::arrive(&smem.empty[stage]);
    if (producer && q + kStages < items) {
      Empty::wait(&smem.empty[stage], (q / kStages) & 1);
      issue(q + kStages);
    }
  };
  if (producer)
    for (int q = 0; q < kStages && q < items; ++q) issue(q);
  prologue();

  typename Tile::TiledMma mma;
  auto thr_mma = mma.get_thread_slice(tid);
  Tensor tCsX = thr_mma.partition_A(sX);  // (MMA, MMA_M, MMA_K, stage)
  Tensor tCsY = thr_mma.partition_B(sY);
  Tensor tCrX = thr_mma.make_fragment_A(tCsX);  // wgmma shared-memory descriptors, not registers
  Tensor tCrY = thr_mma.make_fragment_B(tCsY);
  Tensor acc = partition_fragment_C(mma, Shape<Int<kTileRows>, Int<kTileCols>>{});  // (MMA, MMA_M, MMA_N) fp32
  Tensor coord = thr_mma.partition_C(make_identity_tensor(Shape<Int<kTileRows>, Int<kTileCols>>{}));
  Tensor acc_rc = make_tensor(acc.data(), rowcol(acc.layout()));
  Tensor coord_rc = make_tensor(coord.data(), rowcol(coord.layout()));

  int q = 0;
  for (int t = 0; t < num_tiles; ++t) {
    mma.accumulate_ = GMMA::ScaleOut::Zero;  // the first k-step overwrites the accumulators
    for (int k = 0; k < k_tiles; ++k, ++q) {
      const int stage = q % kStages;
      Full::wait(&smem.full[stage], (q / kStages) & 1);
      warpgroup_fence_operand(acc);
      warpgroup_arrive();
      CUTE_UNROLL
      for (int kb = 0; kb < size<2>(tCrX); ++kb) {
        cute::gemm(mma, tCrX(_, _, kb, stage), tCrY(_, _, kb, stage), acc);
        mma.accumulate_ = GMMA::ScaleOut::One;
      }
      warpgroup_commit_batch();
      warpgroup_wait<1>();  // the previous item's MMAs are done: its stage can be re-filled
      warpgroup_fence_operand(acc);
      if (k > 0) release(q - 1);
    }
    warpgroup_wait<0>();  // the tile is complete
    warpgroup_fence_operand(acc);
    release(q - 1);
    epilogue(t, acc_rc, coord_rc);
  }
}

}  // namespace clipkern_hopper
