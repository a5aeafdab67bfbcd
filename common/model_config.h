// Model configuration read from a Hugging Face `config.json` (or a llama2.c `.bin` header):
// everything the engine needs to build the forward pass and the coordinator needs to validate
// jobs (head_dim, KV heads, max positions). JSON only, no libtorch.
//
// Errors: kNotFound / kPermissionDenied for unreadable files; kInvalidArgument for malformed
// JSON, unknown architectures, missing keys and values out of range (message names the key);
// kUnimplemented for recognised features kvsweep does not support (e.g. a rope_scaling type).
#ifndef KVSWEEP_COMMON_MODEL_CONFIG_H_
#define KVSWEEP_COMMON_MODEL_CONFIG_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace kvsweep {

// Never renumber: stored in result provenance.
enum class Arch {
  kGpt2 = 0,
  kLlama = 1,
  kMistral = 2,
  kQwen2 = 3,
  kLlama2c = 4,
  kQwen3 = 5,
  kPhi3 = 6,
  kOlmo2 = 7,
  kMixtral = 8,
  kGemma2 = 9,
  kGemma3 = 10,  // gemma3_text (Gemma3ForCausalLM)
};
const char* ArchName(Arch a);

enum class RopeScaling { kNone = 0, kLinear = 1, kLlama3 = 2 };

// One rotary embedding: its base and frequency scaling (transformers' rope_type).
struct RopeParams {
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int original_max_positions = 8192;
  bool operator==(const RopeParams& o) const {
    return theta == o.theta && scaling == o.scaling && factor == o.factor &&
           low_freq_factor == o.low_freq_factor && high_freq_factor == o.high_freq_factor &&
           original_max_positions == o.original_max_positions;
  }
};

// RMSNorm of queries and keys before RoPE: per head over head_dim (qwen3), or over the whole
// projection of all heads (olmo2).
enum class QkNorm { kNone = 0, kPerHead = 1, kAllHeads = 2 };

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string model_type;  // as written in config.json ("llama2c" for .bin files)
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int intermediate_size = 0;
  int max_positions = 0;
  double norm_eps = 1e-5;
  std::string activation;  // "gelu_new" (tanh GELU), "gelu", "silu", "relu"
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // gpt2 and qwen2 have q/k/v biases; llama: attention_bias
  bool o_bias = false;    // gpt2; llama attention_bias
  bool mlp_bias = false;
  // RoPE (llama family, llama2c): `rope` for every layer, except that gemma3's sliding-window
  // layers take `rope_sliding` (a local base, rope_local_base_freq) when it is set.
  RopeParams rope;
  std::optional<RopeParams> rope_sliding;
  bool rope_interleaved = false;  // llama2c pairs (2i, 2i+1); HF rotate-half pairs (i, i+d/2)
  QkNorm qk_norm = QkNorm::kNone;
  // olmo2: each sublayer's output is RMS-normed before the residual add, its input is not.
  bool norms_after = false;
  // Mixture of experts (mixtral): every layer's MLP is num_experts SwiGLU experts, each token
  // routed to the experts_per_tok of highest router softmax, weights renormalized over them.
  int num_experts = 0;
  int experts_per_tok = 0;
  // gemma2, gemma3: RMSNorm scales by (1 + w) in fp32 (gemma3's per-head q/k norms too); norms
  // before and after attention and MLP; embeddings times sqrt(hidden); scores scaled by
  // query_pre_attn_scalar^-1/2 and soft-capped (cap * tanh(s / cap)), as are the final logits.
  // 0 = no cap (gemma3's default).
  bool gemma = false;
  double query_pre_attn_scalar = 0;
  double attn_softcap = 0;
  double final_softcap = 0;
  // Per-layer sliding window (0 = full causal attention); size num_layers.
  std::vector<int> sliding_window;
  // GPT-2 attention options.
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;
  std::optional<int> bos_token_id;
  std::optional<int> eos_token_id;
  std::string torch_dtype;  // dtype written in config.json, informational

  bool uses_rope() const { return arch != Arch::kGpt2; }
  // The rotary embedding of `layer`.
  const RopeParams& RopeOf(int layer) const {
    return rope_sliding && sliding_window[layer] > 0 ? *rope_sliding : rope;
  }
  nlohmann::json ToJson() const;
};

// Reads `path`: a Hugging Face model directory (its config.json) or a llama2.c `.bin` file.
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& path);
// Parses a config.json object (exposed for tests).
absl::StatusOr<ModelConfig> ParseHfConfig(const nlohmann::json& j, const std::string& what);

// The llama2.c legacy header: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size (negative: unshared classifier), seq_len).
struct Llama2cHeader {
  int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
  bool shared_classifier;
};
absl::StatusOr<Llama2cHeader> ParseLlama2cHeader(const void* data, size_t size,
                                                 const std::string& what);
ModelConfig Llama2cConfig(const Llama2cHeader& h);

// The compute dtypes a job runs in: "fp32", "bf16", "fp16" (the names in job specs).
// DtypeName accepts those, transformers' spellings ("float32", "bfloat16", "float16", also with
// "torch." in front) and "auto"; it returns the canonical name ("auto" stays "auto").
// kInvalidArgument "'X' is not fp32, bf16, fp16 (or float32, bfloat16, float16) or auto".
absl::StatusOr<std::string> DtypeName(absl::string_view name);
// DtypeName, with "auto" bound to the checkpoint's own dtype (config.json's `dtype` or
// `torch_dtype`); kInvalidArgument when the config names none or one kvsweep does not compute in.
absl::StatusOr<std::string> ResolveDtype(absl::string_view name, const ModelConfig& config);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_MODEL_CONFIG_H_
