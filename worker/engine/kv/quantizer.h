// The min-max quantizer every KV method shares (quant, hybrid, the diagnostics' damage
// measurement), its integer codes, and the bit packing of the packed cache format.
//
// Definition (docs/kv-methods.md, "quant"), per group of `group` consecutive elements of the
// last dimension, computed in fp32:
//   asym: scale = (max - min) / (2^B - 1), q = clamp(round((x - min) / scale), 0, 2^B - 1),
//         x^ = q * scale + min
//   sym:  scale = absmax / (2^(B-1) - 1),  q = clamp(round(x / scale), -(2^(B-1)-1), 2^(B-1)-1),
//         x^ = q * scale
// round() is half to even; a group whose scale is 0 (max == min, or all zeros) is returned
// exactly. The operation sequence is that of tools/reference/make_reference.py (`fake_quant`), so
// the result is bit-identical to the reference on CPU (tests/fixtures/quant_unit.json). The
// divisor 2^B - 1 is a 0-dim tensor on x's device, so CUDA divides too instead of multiplying by a
// reciprocal (what CUDA does for a CPU scalar divisor, one ulp apart).
//
// Two metadata precisions:
// - fp32 metadata (`fp16_meta = false`): the reference semantics, what `quant` simulates. The
//   ledger counts each scale/zero at 16 bits (what a real cache stores); the simulation keeps
//   them in fp32 (relative difference <= 2^-11 of a step, far below the step itself).
// - fp16 metadata (`fp16_meta = true`): the packed format. scale and min are rounded to fp16
//   first, codes are computed against the rounded values, and x^ = q * scale16 + min16 always
//   (a group with scale16 == 0 decodes to min16: nothing else is stored). Values must lie within
//   fp16's range (|x| < 65504), as in any fp16 cache.
#ifndef KVSWEEP_WORKER_ENGINE_KV_QUANTIZER_H_
#define KVSWEEP_WORKER_ENGINE_KV_QUANTIZER_H_

#include <cstdint>

#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

struct QuantFormat {
  int bits = 4;            // 1..8 (sym needs >= 2)
  int group = 0;           // elements per group along the last dimension; must divide it
  bool sym = false;        // symmetric absmax (no zero point) or asymmetric min-max
  bool fp16_meta = false;  // scales/zeros rounded to fp16 (the packed format)
};

// Quantize-dequantize x [..., N] (N % group == 0); returns x's dtype and shape.
torch::Tensor FakeQuantize(const torch::Tensor& x, const QuantFormat& f);

// Integer codes of x [..., N] and their metadata: the encoder of a real cache.
struct QuantCodes {
  torch::Tensor codes;  // uint8 [..., N]; sym codes are offset by 2^(B-1)-1 to be unsigned
  torch::Tensor scale;  // [..., N/group]: fp32, or fp16 when f.fp16_meta
  torch::Tensor zero;   // asym: [..., N/group] (the group minimum), same dtype; sym: undefined
};
QuantCodes EncodeCodes(const torch::Tensor& x, const QuantFormat& f);
// The decoder: x^ = q * scale (+ zero), in fp32, returned in `dtype`. With fp16 metadata this
// equals FakeQuantize(x, f) value for value (tested bitwise up to the sign of zeros: a symmetric
// code 0 decodes to +0 where the simulation may give -0); with fp32 metadata it differs from
// FakeQuantize only in groups whose scale is 0 (decoded min, same value, sign of zero aside).
torch::Tensor DecodeCodes(const QuantCodes& c, const QuantFormat& f, torch::ScalarType dtype);

// Bit packing of codes [..., N] (each < 2^bits) into uint8 [..., PackedBytesPerRow(N, bits)]:
// every 8 codes become `bits` bytes, code i of a run at bit offset bits*i, little-endian (two
// INT4 per byte, low nibble first; eight 3-bit codes in 3 bytes). A row whose N is not a multiple
// of 8 is padded with zero codes (bits < 8). bits == 8 stores the codes as they are (N bytes).
int64_t PackedBytesPerRow(int64_t n, int bits);
torch::Tensor PackCodes(const torch::Tensor& codes, int bits);
torch::Tensor UnpackCodes(const torch::Tensor& packed, int bits, int64_t n);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_KV_QUANTIZER_H_
