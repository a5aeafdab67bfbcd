#include "worker/engine/fused_layer.h"

#include <atomic>

#ifdef KVSWEEP_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "worker/engine/fused_layer_kernel.h"
#endif

namespace kvsweep::engine {
namespace {

std::atomic<bool> enabled{true};

}  // namespace

bool FusedLayerSupports(torch::Device device, torch::ScalarType dtype) {
#ifdef KVSWEEP_CUDA
  return device.is_cuda() && (dtype == torch::kBFloat16 || dtype == torch::kFloat16);
#else
  (void)device;
  (void)dtype;
  return false;
#endif
}

void SetFusedLayerEnabled(bool on) { enabled.store(on); }
bool FusedLayerEnabled() { return enabled.load(std::memory_order_relaxed); }

bool FusedLayerApplies(const torch::Tensor& like) {
  return like.defined() && FusedLayerEnabled() &&
         FusedLayerSupports(like.device(), like.scalar_type());
}

#ifdef KVSWEEP_CUDA
namespace {

int KernelDtype(torch::ScalarType t) { return t == torch::kBFloat16 ? kLayerBf16 : kLayerFp16; }

// Whether t is [rows, cols] in its last two dimensions with the leading ones collapsing into
// rows of one stride (returned) and a contiguous last dimension.
bool RowStride(const torch::Tensor& t, int64_t* stride) {
  const int64_t d = t.dim();
  if (d < 2 || t.stride(d - 1) != 1) return false;
  for (int64_t i = 0; i + 2 < d; ++i) {
    if (t.stride(i) != t.stride(i + 1) * t.size(i + 1)) return false;
  }
  *stride = t.stride(d - 2);
  return true;
}

// The kernels' grids: one block per row (RMSNorm) or position (RoPE), at most this many.
constexpr int64_t kMaxBlocks = 0x7fffffff;

bool Like(const torch::Tensor& t, const torch::Tensor& ref) {
  return t.defined() && t.device() == ref.device() && t.scalar_type() == ref.scalar_type();
}

}  // namespace

namespace {

// Whether w is a norm weight for x's rows (one per column, x's device and dtype) and the rows fit
// the kernel's grid (one block per row).
bool NormWeightFits(const torch::Tensor& x, const torch::Tensor& w) {
  const int64_t cols = x.size(-1);
  return cols > 0 && Like(w, x) && w.dim() == 1 && w.size(0) == cols && w.is_contiguous() &&
         x.numel() / cols <= kMaxBlocks;
}

// The RMSNorm kernel over x's rows with weight w, `a` holding the operands of its mode.
void LaunchNormOver(RmsNormArgs a, const torch::Tensor& x, const torch::Tensor& w, double eps,
                    RmsNormStyle style, const char* what) {
  a.w = w.data_ptr();
  a.cols = x.size(-1);
  a.rows = x.numel() / a.cols;
  a.eps = static_cast<float>(eps);
  a.style = style;
  a.dtype = KernelDtype(x.scalar_type());
  c10::cuda::CUDAGuard guard(x.device());
  const cudaError_t e = LaunchRmsNorm(a, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, what, " kernel: ", cudaGetErrorString(e));
}

}  // namespace

bool FusedAddRmsNorm(torch::Tensor* x, const torch::Tensor& residual, const torch::Tensor& w,
                     double eps, RmsNormStyle style, torch::Tensor* y) {
  if (!FusedLayerApplies(*x) || x->dim() < 1 || !x->is_contiguous() || !NormWeightFits(*x, w)) {
    return false;
  }
  if (residual.defined() &&
      (!Like(residual, *x) || residual.sizes() != x->sizes() || !residual.is_contiguous())) {
    return false;
  }
  const int64_t cols = x->size(-1);
  *y = torch::empty(x->sizes(), x->options());
  RmsNormArgs a{};
  a.x = x->data_ptr();
  a.x_stride = cols;
  a.residual = residual.defined() ? residual.data_ptr() : nullptr;
  a.residual_stride = cols;
  a.y = y->data_ptr();
  LaunchNormOver(a, *x, w, eps, style, "fused add + RMSNorm");
  return true;
}

bool FusedRmsNormAdd(torch::Tensor* x, const torch::Tensor& delta, const torch::Tensor& w,
                     double eps, RmsNormStyle style) {
  int64_t ds = 0;
  if (!FusedLayerApplies(*x) || x->dim() < 2 || !x->is_contiguous() || !Like(delta, *x) ||
      delta.sizes() != x->sizes() || !RowStride(delta, &ds) || !NormWeightFits(*x, w)) {
    return false;
  }
  RmsNormArgs a{};
  a.x = const_cast<void*>(delta.data_ptr());  // read only: no residual to add into it
  a.x_stride = ds;
  a.add_to = x->data_ptr();
  a.add_to_stride = x->size(-1);
  LaunchNormOver(a, *x, w, eps, style, "fused RMSNorm + add");
  return true;
}

bool FusedSwiGlu(const torch::Tensor& gate, const torch::Tensor& up, torch::Tensor* out) {
  int64_t gs = 0, us = 0;
  if (!FusedLayerApplies(gate) || !Like(up, gate) || up.sizes() != gate.sizes() ||
      !RowStride(gate, &gs) || !RowStride(up, &us)) {
    return false;
  }
  *out = torch::empty(gate.sizes(), gate.options());
  SwiGluArgs a{};
  a.gate = gate.data_ptr();
  a.gate_stride = gs;
  a.up = up.data_ptr();
  a.up_stride = us;
  a.out = out->data_ptr();
  a.cols = gate.size(-1);
  a.rows = a.cols == 0 ? 0 : gate.numel() / a.cols;
  a.dtype = KernelDtype(gate.scalar_type());
  c10::cuda::CUDAGuard guard(gate.device());
  const cudaError_t e = LaunchSwiGlu(a, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "fused SwiGLU kernel: ", cudaGetErrorString(e));
  return true;
}

bool FusedRopeLayout(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& cos, const torch::Tensor& sin, int64_t H, int64_t Hkv,
                     int64_t D, torch::Tensor* q_out, torch::Tensor* k_out, torch::Tensor* v_out,
                     const QkHeadNorm* norm, bool q_position_major) {
  int64_t qs = 0, ks = 0, vs = 0;
  if (!FusedLayerApplies(q) || !Like(k, q) || !Like(v, q) || !Like(cos, q) || !Like(sin, q) ||
      q.dim() != 3 || k.dim() != 3 || v.dim() != 3 || D % 2 != 0 || !RowStride(q, &qs) ||
      !RowStride(k, &ks) || !RowStride(v, &vs)) {
    return false;
  }
  const int64_t B = q.size(0), T = q.size(1);
  if (B * T > kMaxBlocks) return false;  // one block per position
  if (k.size(0) != B || v.size(0) != B || k.size(1) != T || v.size(1) != T || q.size(2) != H * D ||
      k.size(2) != Hkv * D || v.size(2) != Hkv * D || cos.dim() != 2 ||
      cos.sizes() != sin.sizes() || cos.size(0) < T || cos.size(1) != D || !cos.is_contiguous() ||
      !sin.is_contiguous()) {
    return false;
  }
  if (norm != nullptr) {
    for (const torch::Tensor* w : {&norm->q_w, &norm->k_w}) {
      if (!Like(*w, q) || w->dim() != 1 || w->size(0) != D || !w->is_contiguous()) return false;
    }
  }
  RopeLayoutArgs a{};
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.q_stride = qs;
  a.k_stride = ks;
  a.v_stride = vs;
  a.cos = cos.data_ptr();
  a.sin = sin.data_ptr();
  a.B = B;
  a.T = T;
  a.H = static_cast<int>(H);
  a.Hkv = static_cast<int>(Hkv);
  a.D = static_cast<int>(D);
  a.dtype = KernelDtype(q.scalar_type());
  a.q_position_major = q_position_major;
  if (norm != nullptr) {
    a.q_norm = norm->q_w.data_ptr();
    a.k_norm = norm->k_w.data_ptr();
    a.norm_eps = static_cast<float>(norm->eps);
    a.norm_style = norm->style;
  }
  // Asked before the outputs exist (fresh allocations are aligned for every width).
  if (RopeLayoutWidth(a) == 0) return false;
  torch::Tensor qo = q_position_major ? torch::empty({B, T, H, D}, q.options()).transpose(1, 2)
                                      : torch::empty({B, H, T, D}, q.options());
  torch::Tensor ko = torch::empty({B, Hkv, T, D}, q.options());
  torch::Tensor vo = torch::empty({B, Hkv, T, D}, q.options());
  a.q_out = qo.data_ptr();
  a.k_out = ko.data_ptr();
  a.v_out = vo.data_ptr();
  c10::cuda::CUDAGuard guard(q.device());
  const cudaError_t e = LaunchRopeLayout(a, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "fused RoPE kernel: ", cudaGetErrorString(e));
  *q_out = std::move(qo);
  *k_out = std::move(ko);
  *v_out = std::move(vo);
  return true;
}

#else

bool FusedAddRmsNorm(torch::Tensor*, const torch::Tensor&, const torch::Tensor&, double,
                     RmsNormStyle, torch::Tensor*) {
  return false;
}
bool FusedRmsNormAdd(torch::Tensor*, const torch::Tensor&, const torch::Tensor&, double,
                     RmsNormStyle) {
  return false;
}
bool FusedSwiGlu(const torch::Tensor&, const torch::Tensor&, torch::Tensor*) { return false; }
bool FusedRopeLayout(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                     const torch::Tensor&, const torch::Tensor&, int64_t, int64_t, int64_t,
                     torch::Tensor*, torch::Tensor*, torch::Tensor*, const QkHeadNorm*, bool) {
  return false;
}

#endif

}  // namespace kvsweep::engine
