// The CUDA side of the fused fake quantizer (fused_quant.cu); no libtorch in this header so that
// nvcc compiles the kernel without torch's headers. See fused_quant.h for the torch-facing call.
#ifndef KVSWEEP_WORKER_ENGINE_KV_FUSED_QUANT_KERNEL_H_
#define KVSWEEP_WORKER_ENGINE_KV_FUSED_QUANT_KERNEL_H_

#include <cuda_runtime.h>
#include <stdint.h>

namespace kvsweep::engine {

enum { kFusedF32 = 0, kFusedBF16 = 1, kFusedF16 = 2 };

// x: rows indexed by three outer dimensions (sizes `rows`, element strides `strides`), each row
// `n` contiguous elements, all quantized; y: contiguous [rows..., out_n] (out_n >= n), its first n
// columns the quantized row and the rest zero (the dropped coordinates of an identity-basis
// projection).
struct FusedQuantShape {
  int64_t rows[3];
  int64_t strides[3];
  int64_t n;
  int64_t out_n;
};

struct FusedQuantTensor {
  const void* x;
  void* y;
  FusedQuantShape s;
};

// Quantizes `count` (1 or 2: K and V) tensors of one dtype and format in one launch.
cudaError_t LaunchFusedFakeQuant(const FusedQuantTensor* tensors, int count, int dtype, int group,
                                 int bits, bool sym, cudaStream_t stream);

// Channel-axis quantization (KIVI keys): x [B, H, T, D] (element strides `strides` for B, H, T; D
// contiguous), each channel over blocks of `group` consecutive tokens; y contiguous [B, H, T, D],
// tokens past the last whole block copied as they are. Per group the arithmetic of the per-token
// kernel, so y is bitwise FakeQuantize of the transposed blocks.
struct FusedChannelShape {
  int64_t size[4];  // B, H, T, D
  int64_t strides[3];
};

struct FusedChannelTensor {
  const void* x;
  void* y;
  FusedChannelShape s;
};

// `count` (1 or 2: K and V) tensors of one dtype and format in one launch.
cudaError_t LaunchFusedChannelFakeQuant(const FusedChannelTensor* tensors, int count, int dtype,
                                        int group, int bits, bool sym, cudaStream_t stream);

// Which kernel LaunchFusedFakeQuant uses where the layout allows both: the vectorized one
// (default) or the one-warp-per-group fallback; LaunchFusedChannelFakeQuant: 16-byte or scalar
// accesses. For the benchmark that checks both.
void SetFusedQuantVectorized(bool on);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_KV_FUSED_QUANT_KERNEL_H_
