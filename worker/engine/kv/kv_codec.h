// KvCodec: how a compressed KV cache looks to attention. One interface, one file per method
// family (none, quant, rank, hybrid), one registry (kv/registry.cc).
//
// What is simulated (docs/kv-methods.md): for every query position t, each cached key/value j <= t
// is in exactly the state a real compressed cache would hold at decode step t. Per-token methods
// are position-independent: one compressed tensor serves every query. Methods whose stored state
// depends on t (channel-axis blocks with an unfinished fp16 block, an fp16 residual window)
// return the compressed tensor, the raw tensor and a [T, T] mask choosing between them.
#ifndef KVSWEEP_WORKER_ENGINE_KV_KV_CODEC_H_
#define KVSWEEP_WORKER_ENGINE_KV_KV_CODEC_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "spec/ledger.h"
#include "spec/method_spec.h"
#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

class Model;

// What attention reads for K (or V) of one layer. Shapes [B, Hkv, T, D].
// use_compressed is the rule of cache_masks.h written out; attention reads the rule itself
// (block, residual) and never needs the [T, T] mask (the masked reference path and the
// diagnostics do).
struct KvOperand {
  torch::Tensor compressed;
  torch::Tensor raw;             // defined only when position dependent
  torch::Tensor use_compressed;  // bool [T, T]: query t sees entry j compressed; undefined = all
  int block = 1;                 // position dependent: tokens per compressed block (1 = token axis)
  int residual = 0;              // position dependent: the most recent tokens kept uncompressed
  bool position_dependent() const { return use_compressed.defined(); }
};

struct KvPair {
  KvOperand k, v;
};

// Data a codec may need before it runs (PCA bases need calibration activations, SVD bases the
// weights). Prepare() is called once per (model, codec) before evaluation.
struct CodecContext {
  const Model* model = nullptr;
  // Calibration token windows (each a vector of ids), empty when the method needs none.
  std::vector<std::vector<int32_t>> calibration_windows;
};

class KvCodec {
 public:
  KvCodec() = default;
  virtual ~KvCodec() = default;
  KvCodec(const KvCodec&) = delete;
  KvCodec& operator=(const KvCodec&) = delete;

  // The codec's spec; for a composite method (KvMethod with K and V apart or per-layer
  // overrides) its primary() spec.
  virtual const MethodSpec& spec() const = 0;
  // Whether some layer's K or V is position dependent (attention then needs [T, T] masks).
  virtual bool position_dependent() const { return spec().position_dependent(); }
  // Whether the model must hand this codec keys before RoPE and rotate what it returns.
  virtual bool keys_pre_rope() const {
    return spec().rope == RopeStage::kPre && spec().compresses_k();
  }
  // Computes data-dependent state. Errors: kInvalidArgument (shapes), kFailedPrecondition
  // (calibration missing), kInternal (numerics).
  virtual absl::Status Prepare(const CodecContext& ctx) { return absl::OkStatus(); }
  // k, v: [B, Hkv, T, D] for `layer`; k is pre-RoPE iff spec().rope == kPre (the model applies
  // RoPE to what this returns). May throw c10::Error (caught at the engine boundary).
  virtual KvPair Apply(int layer, const torch::Tensor& k, const torch::Tensor& v) const = 0;
  // When the codec stores real codes (packed mode): the bytes its cache actually holds (K and V
  // together: codes, scales, zeros, anything kept in fp16) per cached token per layer per KV
  // head, over the last Apply of each layer; -1 otherwise. Comparable to the ledger's
  // (k.total_bits + v.total_bits) / 8.
  virtual double MeasuredBytesPerToken() const { return -1; }
};

// Builds the codec for a resolved method spec. kInvalidArgument for specs the registry cannot
// build (unknown family, unresolved spec).
absl::StatusOr<std::unique_ptr<KvCodec>> NewKvCodec(const MethodSpec& spec);
// Builds the codec of a resolved method: the registry's codec for a single spec, else a
// composite of one codec per distinct spec (kv/composite_codec.cc).
absl::StatusOr<std::unique_ptr<KvCodec>> NewKvCodec(const KvMethod& method);
// The families the registry can build, in registry order (tests loop over it).
std::vector<MethodFamily> RegisteredFamilies();

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_KV_KV_CODEC_H_
