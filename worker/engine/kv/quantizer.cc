#include "worker/engine/kv/quantizer.h"

#include <vector>

#include "worker/engine/kv/fused_quant.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

// x [..., N] -> fp32 [..., N/group, group].
Tensor Grouped(const Tensor& x, int group) {
  std::vector<int64_t> shape = x.sizes().vec();
  TORCH_CHECK(!shape.empty() && group > 0 && shape.back() % group == 0, "quantizer: group ", group,
              " does not divide the last dimension ", shape.empty() ? 0 : shape.back());
  shape.back() /= group;
  shape.push_back(group);
  return x.to(torch::kFloat32).reshape(shape);
}

// A 0-dim fp32 tensor on x's device (see the header on why not a plain scalar).
Tensor Scalar(double v, const Tensor& like) {
  return torch::scalar_tensor(v,
                              torch::TensorOptions().dtype(torch::kFloat32).device(like.device()));
}

Tensor ToFp16AndBack(const Tensor& t) { return t.to(torch::kFloat16).to(torch::kFloat32); }

// The shared core: codes q (fp32 integers, sym ones signed) plus the metadata they decode with.
struct Quantized {
  Tensor xf;     // fp32 [..., N/g, g]
  Tensor q;      // fp32 integer values, same shape
  Tensor scale;  // fp32 [..., N/g, 1] (fp16-representable when fp16_meta)
  Tensor zero;   // asym only, same shape as scale
};

Quantized QuantizeCore(const Tensor& x, const QuantFormat& f) {
  TORCH_CHECK(f.bits >= 1 && f.bits <= 8, "quantizer: bits ", f.bits, " out of range [1, 8]");
  TORCH_CHECK(!f.sym || f.bits >= 2, "quantizer: sym needs bits >= 2");
  Quantized r;
  r.xf = Grouped(x, f.group);
  if (f.sym) {
    const double qmax = static_cast<double>((1 << (f.bits - 1)) - 1);
    r.scale = r.xf.abs().amax(-1, /*keepdim=*/true) / Scalar(qmax, x);
    if (f.fp16_meta) r.scale = ToFp16AndBack(r.scale);
    Tensor safe = torch::where(r.scale > 0, r.scale, torch::ones_like(r.scale));
    r.q = torch::clamp(torch::round(r.xf / safe), -qmax, qmax);
  } else {
    const double levels = static_cast<double>((1 << f.bits) - 1);
    Tensor mn = r.xf.amin(-1, /*keepdim=*/true);
    Tensor mx = r.xf.amax(-1, /*keepdim=*/true);
    r.scale = (mx - mn) / Scalar(levels, x);
    r.zero = mn;
    if (f.fp16_meta) {
      r.scale = ToFp16AndBack(r.scale);
      r.zero = ToFp16AndBack(r.zero);
    }
    Tensor safe = torch::where(r.scale > 0, r.scale, torch::ones_like(r.scale));
    r.q = torch::clamp(torch::round((r.xf - r.zero) / safe), 0.0, levels);
  }
  return r;
}

std::vector<int64_t> WithLast(const torch::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> s = sizes.vec();
  s.back() = last;
  return s;
}

}  // namespace

Tensor FakeQuantize(const Tensor& x, const QuantFormat& f) {
  Tensor fused;
  if (FusedFakeQuantize(x, f, &fused)) return fused;  // CUDA: one kernel, bitwise the same
  Quantized r = QuantizeCore(x, f);
  Tensor y;
  if (f.fp16_meta) {
    // What the packed cache decodes: nothing but codes, scale16 and zero16 are stored.
    y = f.sym ? r.q * r.scale : r.q * r.scale + r.zero;
  } else {
    Tensor dq = f.sym ? r.q * r.scale : r.q * r.scale + r.zero;
    y = torch::where(r.scale > 0, dq, r.xf);
  }
  // Contiguous whatever x's layout (the model hands over transposed views): every codec returns
  // the same memory layout, so downstream matmuls round identically for equal values.
  return y.reshape(x.sizes()).to(x.scalar_type()).contiguous();
}

QuantCodes EncodeCodes(const Tensor& x, const QuantFormat& f) {
  Quantized r = QuantizeCore(x, f);
  const double offset = f.sym ? static_cast<double>((1 << (f.bits - 1)) - 1) : 0.0;
  QuantCodes c;
  c.codes = (r.q + offset).to(torch::kUInt8).reshape(x.sizes());
  const torch::ScalarType meta = f.fp16_meta ? torch::kFloat16 : torch::kFloat32;
  c.scale = r.scale.squeeze(-1).to(meta);
  if (!f.sym) c.zero = r.zero.squeeze(-1).to(meta);
  return c;
}

Tensor DecodeCodes(const QuantCodes& c, const QuantFormat& f, torch::ScalarType dtype) {
  Tensor q = Grouped(c.codes, f.group);  // fp32 [..., N/g, g]
  if (f.sym) q = q - Scalar(static_cast<double>((1 << (f.bits - 1)) - 1), q);
  Tensor scale = c.scale.to(torch::kFloat32).unsqueeze(-1);
  Tensor y = f.sym ? q * scale : q * scale + c.zero.to(torch::kFloat32).unsqueeze(-1);
  return y.reshape(c.codes.sizes()).to(dtype).contiguous();
}

int64_t PackedBytesPerRow(int64_t n, int bits) { return bits == 8 ? n : (n + 7) / 8 * bits; }

Tensor PackCodes(const Tensor& codes, int bits) {
  TORCH_CHECK(bits >= 1 && bits <= 8, "PackCodes: bits ", bits, " out of range [1, 8]");
  TORCH_CHECK(codes.scalar_type() == torch::kUInt8, "PackCodes: codes must be uint8");
  if (bits == 8) return codes.contiguous();
  const int64_t n = codes.size(-1), runs = (n + 7) / 8;
  Tensor c = codes.to(torch::kLong);
  if (runs * 8 != n) {
    std::vector<int64_t> pad_shape = WithLast(codes.sizes(), runs * 8 - n);
    c = torch::cat({c, torch::zeros(pad_shape, c.options())}, -1);
  }
  std::vector<int64_t> run_shape = WithLast(codes.sizes(), runs);
  run_shape.push_back(8);
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(codes.device());
  // A run of 8 codes as one integer of 8*bits <= 56 bits: code i at bit bits*i.
  std::vector<int64_t> weights(8), shifts(bits);
  for (int i = 0; i < 8; ++i) weights[i] = int64_t{1} << (bits * i);
  for (int j = 0; j < bits; ++j) shifts[j] = 8 * j;
  Tensor run = (c.reshape(run_shape) * torch::tensor(weights, opts)).sum(-1);  // [..., runs]
  Tensor bytes = torch::bitwise_and(
      torch::bitwise_right_shift(run.unsqueeze(-1), torch::tensor(shifts, opts)), 255);
  return bytes.to(torch::kUInt8).reshape(WithLast(codes.sizes(), runs * bits));
}

Tensor UnpackCodes(const Tensor& packed, int bits, int64_t n) {
  TORCH_CHECK(bits >= 1 && bits <= 8, "UnpackCodes: bits ", bits, " out of range [1, 8]");
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8, "UnpackCodes: packed must be uint8");
  const int64_t runs = (n + 7) / 8;
  TORCH_CHECK(packed.size(-1) == PackedBytesPerRow(n, bits), "UnpackCodes: ", packed.size(-1),
              " bytes per row, expected ", PackedBytesPerRow(n, bits));
  if (bits == 8) return packed.contiguous();
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(packed.device());
  std::vector<int64_t> run_shape = WithLast(packed.sizes(), runs);
  run_shape.push_back(bits);
  std::vector<int64_t> byte_weights(bits), shifts(8);
  for (int j = 0; j < bits; ++j) byte_weights[j] = int64_t{1} << (8 * j);
  for (int i = 0; i < 8; ++i) shifts[i] = bits * i;
  Tensor run =
      (packed.to(torch::kLong).reshape(run_shape) * torch::tensor(byte_weights, opts)).sum(-1);
  Tensor codes = torch::bitwise_and(
      torch::bitwise_right_shift(run.unsqueeze(-1), torch::tensor(shifts, opts)), (1 << bits) - 1);
  return codes.reshape(WithLast(packed.sizes(), runs * 8))
      .slice(-1, 0, n)
      .to(torch::kUInt8)
      .contiguous();
}

}  // namespace kvsweep::engine
