// libtorch at the engine boundary: includes, dtype names, and turning c10::Error into Status
// (CUDA out-of-memory -> kResourceExhausted, anything else -> kInternal).
#ifndef KVSWEEP_WORKER_ENGINE_TORCH_UTIL_H_
#define KVSWEEP_WORKER_ENGINE_TORCH_UTIL_H_

#include <torch/torch.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvsweep::engine {

// A compute dtype as common/model_config's DtypeName reads it ("fp32", "bf16", "fp16" and
// transformers' spellings) -> scalar type; kInvalidArgument otherwise, and for "auto" (resolved
// against the model's config.json before it reaches the engine).
absl::StatusOr<torch::ScalarType> ParseDtype(const std::string& s);
// OK if this libtorch computes in `dtype` on `device` (probed once with a 1x1 matmul; libtorch
// 1.13 has no fp16 matmul on the CPU). kFailedPrecondition naming the dtype, the device and the
// libtorch version otherwise.
absl::Status CheckDtypeOnDevice(torch::ScalarType dtype, torch::Device device);
const char* DtypeName(torch::ScalarType t);
// "cpu" | "cuda" | "cuda:N"; kInvalidArgument if malformed, kFailedPrecondition if CUDA is
// unavailable in this build or N is out of range.
absl::StatusOr<torch::Device> ParseDevice(const std::string& s);

// Bytes free on `device` for new allocations (CUDA: driver-free plus what libtorch's caching
// allocator holds but does not use); -1 for the CPU or when unknown.
int64_t FreeDeviceBytes(torch::Device device);

// Peak bytes allocated by libtorch on `device` since the last reset (CUDA), -1 elsewhere.
int64_t PeakDeviceBytes(torch::Device device);
void ResetPeakDeviceBytes(torch::Device device);
// A short name of the device ("NVIDIA H200", "cpu").
std::string DeviceName(torch::Device device);

absl::Status StatusFromException(const std::exception& e, const std::string& context);

// Runs `fn` (returning absl::Status or StatusOr<T>), converting libtorch exceptions.
template <typename Fn>
auto GuardTorch(const std::string& context, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return StatusFromException(e, context);
  }
}

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_TORCH_UTIL_H_
