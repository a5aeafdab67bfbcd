#include "worker/engine/tuned_gemm.h"

#include <atomic>
#include <cstdint>
#include <vector>

#ifdef KVSWEEP_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "worker/engine/tuned_gemm_kernel.h"
#endif

namespace kvsweep::engine {
namespace {

std::atomic<bool> enabled{true};
std::atomic<int64_t> tuned_count{0};

}  // namespace

void SetTunedGemmEnabled(bool on) { enabled.store(on); }
bool TunedGemmEnabled() { return enabled.load(std::memory_order_relaxed); }
int64_t TunedGemmCount() { return tuned_count.load(std::memory_order_relaxed); }

std::string ExplainTunedLinear(torch::Device device, torch::ScalarType dtype, int64_t m, int64_t n,
                               int64_t k) {
#ifdef KVSWEEP_CUDA
  if (device.is_cuda()) {
    TunedGemmShape shape;
    shape.device = device.has_index() ? device.index() : c10::cuda::current_device();
    shape.bf16 = dtype == torch::kBFloat16;
    shape.m = m;
    shape.n = n;
    shape.k = k;
    c10::cuda::CUDAGuard guard(device);
    std::vector<char> buf(8192);
    ExplainTunedGemm(shape, buf.data(), buf.size());
    return buf.data();
  }
#endif
  (void)device;
  (void)dtype;
  (void)m;
  (void)n;
  (void)k;
  return "not CUDA";
}

torch::Tensor TunedLinear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
#ifdef KVSWEEP_CUDA
  const torch::ScalarType t = x.scalar_type();
  // cuBLASLt's heuristic assumes 256-byte aligned operands (a view may start anywhere); the raw
  // launch records nothing for autograd.
  auto aligned = [](const torch::Tensor& a) {
    return reinterpret_cast<uintptr_t>(a.data_ptr()) % 256 == 0;
  };
  if (TunedGemmEnabled() && !b.defined() && x.is_cuda() && w.device() == x.device() &&
      (t == torch::kBFloat16 || t == torch::kFloat16) && w.scalar_type() == t && w.dim() == 2 &&
      x.dim() >= 2 && x.size(-1) == w.size(1) && x.is_contiguous() && w.is_contiguous() &&
      x.numel() > 0 && aligned(x) && aligned(w) &&
      !(torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad()))) {
    TunedGemmShape shape;
    shape.device = x.device().index();
    shape.bf16 = t == torch::kBFloat16;
    shape.k = w.size(1);
    shape.n = w.size(0);
    shape.m = x.numel() / shape.k;
    c10::cuda::CUDAGuard guard(x.device());
    if (const void* plan = FindTunedGemmPlan(shape)) {
      std::vector<int64_t> sizes = x.sizes().vec();
      sizes.back() = shape.n;
      torch::Tensor y = torch::empty(sizes, x.options());
      torch::Tensor workspace = torch::empty({static_cast<int64_t>(kTunedGemmWorkspaceBytes)},
                                             x.options().dtype(torch::kUInt8));
      const int status = LaunchTunedGemm(plan, x.data_ptr(), w.data_ptr(), y.data_ptr(),
                                         workspace.data_ptr(), at::cuda::getCurrentCUDAStream());
      TORCH_CHECK(status == 0, "cuBLASLt status ", status, " on the tuned product [", shape.m, ", ",
                  shape.k, "] x [", shape.n, ", ", shape.k, "]^T");
      tuned_count.fetch_add(1, std::memory_order_relaxed);
      return y;
    }
  }
#endif
  return torch::linear(x, w, b);
}

}  // namespace kvsweep::engine
