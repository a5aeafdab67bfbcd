#include "worker/engine/torch_util.h"

#include <torch/version.h>

#include <map>
#include <mutex>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/model_config.h"

#ifdef KVSWEEP_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

namespace kvsweep::engine {

absl::StatusOr<torch::ScalarType> ParseDtype(const std::string& s) {
  // The spellings (and their error) are common/model_config's DtypeName; only the torch type is
  // the engine's.
  absl::StatusOr<std::string> name = ::kvsweep::DtypeName(s);
  if (!name.ok())
    return absl::InvalidArgumentError(absl::StrCat("dtype ", name.status().message()));
  if (*name == "fp32") return torch::kFloat32;
  if (*name == "bf16") return torch::kBFloat16;
  if (*name == "fp16") return torch::kFloat16;
  return absl::InvalidArgumentError(
      "dtype auto: resolve it from the model's config.json first (ResolveDtype)");
}

absl::Status CheckDtypeOnDevice(torch::ScalarType dtype, torch::Device device) {
  if (dtype == torch::kFloat32) return absl::OkStatus();
  // Whether this libtorch multiplies matrices of the dtype on the device (1.13 has no fp16
  // matmul on the CPU; 2.x has): asked once per (dtype, device type) with a 1x1 product.
  static std::mutex mu;
  static std::map<std::pair<int, int>, bool> known;
  const std::pair<int, int> key{static_cast<int>(dtype), static_cast<int>(device.type())};
  std::lock_guard<std::mutex> lock(mu);
  auto it = known.find(key);
  if (it == known.end()) {
    bool ok = true;
    try {
      torch::Tensor a = torch::ones({1, 1}, torch::TensorOptions().dtype(dtype).device(device));
      (void)torch::mm(a, a);
    } catch (const std::exception&) {
      ok = false;
    }
    it = known.emplace(key, ok).first;
  }
  if (it->second) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(DtypeName(dtype), " is not supported on ", device.str(), " by this libtorch (",
                   TORCH_VERSION, "): run the job on a GPU worker, or ask for another dtype"));
}

const char* DtypeName(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32:
      return "fp32";
    case torch::kBFloat16:
      return "bf16";
    case torch::kFloat16:
      return "fp16";
    default:
      return "other";
  }
}

absl::StatusOr<torch::Device> ParseDevice(const std::string& s) {
  if (s == "cpu") return torch::Device(torch::kCPU);
  if (s == "cuda" || absl::StartsWith(s, "cuda:")) {
    int index = 0;
    if (s.size() > 5 && !absl::SimpleAtoi(s.substr(5), &index)) {
      return absl::InvalidArgumentError(absl::StrCat("device '", s, "' is not cpu|cuda|cuda:N"));
    }
    if (!torch::cuda::is_available()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", s, "': CUDA is not available in this build or on this machine"));
    }
    const int n = static_cast<int>(torch::cuda::device_count());
    if (index < 0 || index >= n) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", s, "': only ", n, " CUDA device(s) present"));
    }
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  return absl::InvalidArgumentError(absl::StrCat("device '", s, "' is not cpu|cuda|cuda:N"));
}

// The CUDA helpers below never throw: libtorch's allocator raises c10::Error ("Invalid device
// argument") when asked about a device it has not initialized yet.
int64_t FreeDeviceBytes(torch::Device device) {
#ifdef KVSWEEP_CUDA
  if (device.is_cuda()) try {
      c10::cuda::CUDACachingAllocator::emptyCache();
      size_t free_b = 0, total_b = 0;
      int prev = 0;
      cudaGetDevice(&prev);
      cudaSetDevice(device.index() < 0 ? 0 : device.index());
      const bool ok = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
      cudaSetDevice(prev);
      return ok ? static_cast<int64_t>(free_b) : -1;
    } catch (const std::exception&) {
      return -1;
    }
#endif
  return -1;
}

int64_t PeakDeviceBytes(torch::Device device) {
#ifdef KVSWEEP_CUDA
  if (device.is_cuda()) try {
      const auto stats =
          c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
      return stats.allocated_bytes[0].peak;  // aggregate over pools
    } catch (const std::exception&) {
      return -1;
    }
#endif
  return -1;
}

void ResetPeakDeviceBytes(torch::Device device) {
#ifdef KVSWEEP_CUDA
  if (device.is_cuda()) try {
      c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
    } catch (const std::exception&) {
    }
#endif
}

std::string DeviceName(torch::Device device) {
#ifdef KVSWEEP_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device.index() < 0 ? 0 : device.index()) == cudaSuccess)
      return prop.name;
  }
#endif
  return device.str();
}

absl::Status StatusFromException(const std::exception& e, const std::string& context) {
  std::string what = e.what();
  // c10 messages carry a C++ backtrace after the first line; keep the first line.
  size_t nl = what.find('\n');
  std::string first = nl == std::string::npos ? what : what.substr(0, nl);
  if (absl::StrContains(what, "out of memory") || absl::StrContains(what, "CUDA out of memory") ||
      dynamic_cast<const std::bad_alloc*>(&e) != nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(context, ": out of memory: ", first));
  }
  return absl::InternalError(absl::StrCat(context, ": ", first));
}

}  // namespace kvsweep::engine
