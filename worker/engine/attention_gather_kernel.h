// The CUDA side of the packed attention's band gather (attention.cc, AttendPacked); no libtorch
// in this header so that nvcc compiles the kernel without torch's headers.
#ifndef KVSWEEP_WORKER_ENGINE_ATTENTION_GATHER_KERNEL_H_
#define KVSWEEP_WORKER_ENGINE_ATTENTION_GATHER_KERNEL_H_

#include <cuda_runtime.h>
#include <stdint.h>

namespace kvsweep::engine {

// out [B, H, n, D] (strides out_strides, D contiguous) from two sources [B, H, T, D] read as one
// of 2T rows:
//   out[b][h][i][:] = index[i] < T ? first[b][h][index[i]][:] : second[b][h][index[i] - T][:]
// (the K or V entries each query block reads, in the compressed state or the raw one, without
// concatenating the two). `second` may be null when every index is below T. Strides are in
// elements; D is contiguous in both sources. Elements are copied as bytes (`elem_bytes` each).
struct BandGatherArgs {
  const void* first;
  int64_t first_strides[3];
  const void* second;
  int64_t second_strides[3];
  const int64_t* index;  // device, n entries in [0, 2T)
  int64_t n;
  void* out;
  int64_t out_strides[3];
  int64_t B, H, T, D;
  int elem_bytes;
};

cudaError_t LaunchBandGather(const BandGatherArgs& a, cudaStream_t stream);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_ATTENTION_GATHER_KERNEL_H_
