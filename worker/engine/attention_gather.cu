// The packed attention's band gather in one pass (attention_gather_kernel.h): each gathered row
// read from whichever state it is in, so the compressed and raw K/V are never concatenated (a
// copy of twice the layer's K and V before libtorch's index_select). Rows are copied in the
// widest unit (16, 8, 4 or 2 bytes) that the row size, the strides and the pointers allow.
#include <stdint.h>

#include <algorithm>

#include "worker/engine/attention_gather_kernel.h"

namespace kvsweep::engine {
namespace {

// Block (x, y): `rows` consecutive gathered rows of batch-head y (grid-strided past 65535), its
// threads over the rows' units; 32-bit index arithmetic within a block.
template <typename U>
__global__ void BandGatherKernel(BandGatherArgs a, int per_row, int rows) {
  const int64_t scale = static_cast<int64_t>(sizeof(U)) / a.elem_bytes;  // elements per unit
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * rows;
  for (int64_t bh = blockIdx.y; bh < a.B * a.H; bh += gridDim.y) {
    const int64_t b = bh / a.H, h = bh % a.H;
    // Strides in units of U (the launcher checked they divide).
    const U* first =
        static_cast<const U*>(a.first) + (b * a.first_strides[0] + h * a.first_strides[1]) / scale;
    const U* second = a.second == nullptr
                          ? nullptr
                          : static_cast<const U*>(a.second) +
                                (b * a.second_strides[0] + h * a.second_strides[1]) / scale;
    U* out = static_cast<U*>(a.out) +
             (b * a.out_strides[0] + h * a.out_strides[1] + i0 * a.out_strides[2]) / scale;
    for (int k = threadIdx.x; k < rows * per_row; k += blockDim.x) {
      const int r = k / per_row, u = k - r * per_row;
      if (i0 + r >= a.n) break;
      const int64_t j = a.index[i0 + r];
      const U* src = j < a.T ? first + j * (a.first_strides[2] / scale)
                             : second + (j - a.T) * (a.second_strides[2] / scale);
      out[r * (a.out_strides[2] / scale) + u] = src[u];
    }
  }
}

template <typename U>
cudaError_t Launch(const BandGatherArgs& a, cudaStream_t stream) {
  if (a.B * a.H * a.n == 0 || a.D == 0) return cudaSuccess;
  const int per_row = static_cast<int>(a.D * a.elem_bytes / static_cast<int64_t>(sizeof(U)));
  const int threads = 256;
  const int rows = std::max(1, threads / per_row);
  const dim3 grid(static_cast<unsigned>((a.n + rows - 1) / rows),
                  static_cast<unsigned>(std::min<int64_t>(a.B * a.H, 65535)));
  BandGatherKernel<U><<<grid, threads, 0, stream>>>(a, per_row, rows);
  return cudaGetLastError();
}

// Whether units of `bytes` divide every row start: the pointers, the strides and the row.
bool Fits(const BandGatherArgs& a, int bytes) {
  auto ok = [&](const void* p, const int64_t* s) {
    if (p == nullptr) return true;
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
    for (int i = 0; i < 3; ++i) {
      if (s[i] * a.elem_bytes % bytes != 0) return false;
    }
    return true;
  };
  return a.D * a.elem_bytes % bytes == 0 && ok(a.out, a.out_strides) &&
         ok(a.first, a.first_strides) && ok(a.second, a.second_strides);
}

}  // namespace

cudaError_t LaunchBandGather(const BandGatherArgs& a, cudaStream_t stream) {
  if (a.elem_bytes != 2 && a.elem_bytes != 4) return cudaErrorInvalidValue;
  if (Fits(a, 16)) return Launch<uint4>(a, stream);
  if (Fits(a, 8)) return Launch<uint2>(a, stream);
  if (Fits(a, 4)) return Launch<uint32_t>(a, stream);
  if (a.elem_bytes == 2 && Fits(a, 2)) return Launch<uint16_t>(a, stream);
  return cudaErrorMisalignedAddress;
}

}  // namespace kvsweep::engine
