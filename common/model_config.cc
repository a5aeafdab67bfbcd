#include "common/model_config.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/json_util.h"

namespace kvsweep {

const char* ArchName(Arch a) {
  switch (a) {
    case Arch::kGpt2:
      return "gpt2";
    case Arch::kLlama:
      return "llama";
    case Arch::kMistral:
      return "mistral";
    case Arch::kQwen2:
      return "qwen2";
    case Arch::kLlama2c:
      return "llama2c";
    case Arch::kQwen3:
      return "qwen3";
    case Arch::kPhi3:
      return "phi3";
    case Arch::kOlmo2:
      return "olmo2";
    case Arch::kMixtral:
      return "mixtral";
    case Arch::kGemma2:
      return "gemma2";
    case Arch::kGemma3:
      return "gemma3_text";
  }
  return "?";
}

namespace {

constexpr int kMaxDim = 1 << 17;
constexpr int kMaxLayers = 1024;
constexpr int kMaxVocab = 1 << 22;
constexpr int kMaxPositions = 1 << 24;
constexpr char kSupportedArchitectures[] =
    "(supported: gemma2, gemma3_text, gpt2, llama, mistral, mixtral, olmo2, phi3, qwen2, qwen3)";

// What a bad value is, for an error message: numbers as themselves, anything else by its type
// only (a config file may be any file a path names; its strings are never echoed).
std::string Describe(const nlohmann::json& v) {
  if (v.is_number() || v.is_boolean() || v.is_null()) return v.dump();
  if (v.is_string())
    return absl::StrCat("a string of ", v.get_ref<const std::string&>().size(), " characters");
  if (v.is_array()) return absl::StrCat("an array of ", v.size());
  return "an object";
}

// Reads an integer key; `def` is used when absent or null (nullopt default: required).
class Reader {
 public:
  Reader(const nlohmann::json& j, std::string what) : j_(j), what_(std::move(what)) {}

  absl::StatusOr<int> Int(const char* key, std::optional<int> def, int lo, int hi) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      if (def) return *def;
      return absl::InvalidArgumentError(absl::StrCat(what_, ": missing required key '", key, "'"));
    }
    if (!it->is_number_integer() &&
        !(it->is_number_float() && std::floor(it->get<double>()) == it->get<double>())) {
      return absl::InvalidArgumentError(
          absl::StrCat(what_, ": '", key, "' must be an integer, got ", Describe(*it)));
    }
    const double v = it->get<double>();
    if (v < lo || v > hi) {
      return absl::InvalidArgumentError(absl::StrCat(what_, ": '", key, "' = ", it->dump(),
                                                     " out of range [", lo, ", ", hi, "]"));
    }
    return static_cast<int>(v);
  }

  absl::StatusOr<double> Double(const nlohmann::json& obj, const char* key,
                                std::optional<double> def, double lo, double hi) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
      if (def) return *def;
      return absl::InvalidArgumentError(absl::StrCat(what_, ": missing required key '", key, "'"));
    }
    if (!it->is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what_, ": '", key, "' must be a number, got ", Describe(*it)));
    }
    const double v = it->get<double>();
    if (!std::isfinite(v) || v < lo || v > hi) {
      return absl::InvalidArgumentError(absl::StrCat(what_, ": '", key, "' = ", it->dump(),
                                                     " out of range [", lo, ", ", hi, "]"));
    }
    return v;
  }
  absl::StatusOr<double> Double(const char* key, std::optional<double> def, double lo,
                                double hi) const {
    return Double(j_, key, def, lo, hi);
  }

  absl::StatusOr<bool> Bool(const char* key, bool def) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return def;
    if (!it->is_boolean()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what_, ": '", key, "' must be true or false, got ", Describe(*it)));
    }
    return it->get<bool>();
  }

  std::string String(const char* key, const std::string& def) const {
    auto it = j_.find(key);
    if (it == j_.end() || !it->is_string()) return def;
    return it->get<std::string>();
  }

  std::optional<int> OptionalTokenId(const char* key) const {
    auto it = j_.find(key);
    if (it == j_.end()) return std::nullopt;
    if (it->is_number_integer()) return it->get<int>();
    if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) return (*it)[0].get<int>();
    return std::nullopt;
  }

  const std::string& what() const { return what_; }

 private:
  const nlohmann::json& j_;
  std::string what_;
};

#define KV_READ(lhs, expr)                  \
  {                                         \
    auto kv_r_ = (expr);                    \
    if (!kv_r_.ok()) return kv_r_.status(); \
    lhs = *kv_r_;                           \
  }

// One RoPE parameter object (`rope_parameters`, one of its per-layer-type entries, or the older
// `rope_scaling`): its rope_theta when present (else r->theta stays), its rope_type (or `type`)
// and that type's keys. `where` names the object in errors.
absl::Status ParseRopeObject(const nlohmann::json& s, const Reader& rd, const std::string& where,
                             RopeParams* r) {
  KV_READ(r->theta, rd.Double(s, "rope_theta", r->theta, 1e-6, 1e12));
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (s.contains(key) && s[key].is_string()) type = s[key].get<std::string>();
  }
  if (type == "default") return absl::OkStatus();
  if (type == "linear") {
    r->scaling = RopeScaling::kLinear;
    KV_READ(r->factor, rd.Double(s, "factor", std::nullopt, 1e-6, 1e6));
    return absl::OkStatus();
  }
  if (type == "llama3") {
    r->scaling = RopeScaling::kLlama3;
    KV_READ(r->factor, rd.Double(s, "factor", std::nullopt, 1e-6, 1e6));
    KV_READ(r->low_freq_factor, rd.Double(s, "low_freq_factor", std::nullopt, 1e-6, 1e6));
    KV_READ(r->high_freq_factor, rd.Double(s, "high_freq_factor", std::nullopt, 1e-6, 1e6));
    double orig = 0;
    KV_READ(orig, rd.Double(s, "original_max_position_embeddings", std::nullopt, 1, kMaxPositions));
    r->original_max_positions = static_cast<int>(orig);
    if (!(r->high_freq_factor > r->low_freq_factor)) {
      return absl::InvalidArgumentError(
          absl::StrCat(rd.what(), ": rope llama3 high_freq_factor must exceed low_freq_factor"));
    }
    return absl::OkStatus();
  }
  return absl::UnimplementedError(absl::StrCat(rd.what(), ": ", where, " rope type '",
                                               type.substr(0, 64),
                                               "' is not supported (default, linear, llama3)"));
}

const nlohmann::json* ObjectAt(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_object() ? &*it : nullptr;
}

absl::Status ParseRope(const nlohmann::json& j, const Reader& rd, ModelConfig* c) {
  // transformers >= 4.5x writes `rope_parameters`; older configs have top-level rope_theta and
  // an optional `rope_scaling`.
  const nlohmann::json* params = ObjectAt(j, "rope_parameters");
  const nlohmann::json* scaling = ObjectAt(j, "rope_scaling");
  const bool gemma3 = c->arch == Arch::kGemma3;
  KV_READ(c->rope.theta, rd.Double("rope_theta", gemma3 ? 1e6 : 10000.0, 1e-6, 1e12));
  if (gemma3) {
    // Gemma3TextConfig: RoPE per layer type. transformers 5 writes rope_parameters =
    // {"full_attention": {...}, "sliding_attention": {...}}; older configs rope_theta (+
    // rope_scaling) for full attention and rope_local_base_freq for the sliding layers.
    RopeParams local;
    KV_READ(local.theta, rd.Double("rope_local_base_freq", 10000.0, 1e-6, 1e12));
    if (params != nullptr &&
        (params->contains("full_attention") || params->contains("sliding_attention"))) {
      for (const char* type : {"full_attention", "sliding_attention"}) {
        const nlohmann::json* p = ObjectAt(*params, type);
        if (p == nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(rd.what(), ": rope_parameters has no '",
                                                         type, "' object (gemma3 needs both)"));
        }
        absl::Status st = ParseRopeObject(*p, rd, absl::StrCat("rope_parameters.", type),
                                          type[0] == 'f' ? &c->rope : &local);
        if (!st.ok()) return st;
      }
    } else if (const nlohmann::json* s = params != nullptr ? params : scaling; s != nullptr) {
      absl::Status st =
          ParseRopeObject(*s, rd, params != nullptr ? "rope_parameters" : "rope_scaling", &c->rope);
      if (!st.ok()) return st;
    }
    c->rope_sliding = local;
    return absl::OkStatus();
  }
  if (params != nullptr) return ParseRopeObject(*params, rd, "rope_parameters", &c->rope);
  if (scaling != nullptr) return ParseRopeObject(*scaling, rd, "rope_scaling", &c->rope);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseHfConfig(const nlohmann::json& j, const std::string& what) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(what, ": not a JSON object"));
  Reader rd(j, what);
  ModelConfig c;
  c.model_type = rd.String("model_type", "");
  if (c.model_type == "gpt2") {
    c.arch = Arch::kGpt2;
  } else if (c.model_type == "llama") {
    c.arch = Arch::kLlama;
  } else if (c.model_type == "mistral") {
    c.arch = Arch::kMistral;
  } else if (c.model_type == "qwen2") {
    c.arch = Arch::kQwen2;
  } else if (c.model_type == "qwen3") {
    c.arch = Arch::kQwen3;
  } else if (c.model_type == "phi3") {
    c.arch = Arch::kPhi3;
  } else if (c.model_type == "olmo2") {
    c.arch = Arch::kOlmo2;
  } else if (c.model_type == "mixtral") {
    c.arch = Arch::kMixtral;
  } else if (c.model_type == "gemma2") {
    c.arch = Arch::kGemma2;
  } else if (c.model_type == "gemma3_text") {
    c.arch = Arch::kGemma3;
  } else if (c.model_type.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": missing 'model_type'"));
  } else if (c.model_type == "gemma3") {
    // Gemma3ForConditionalGeneration: a vision tower, the text model under text_config and its
    // weights under language_model.
    return absl::InvalidArgumentError(
        absl::StrCat(what,
                     ": unknown architecture 'gemma3' (the multimodal Gemma 3; kvsweep reads "
                     "its text-only form, gemma3_text) ",
                     kSupportedArchitectures));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(what, ": unknown architecture '",
                                                   c.model_type.substr(0, 64), "' ",
                                                   kSupportedArchitectures));
  }
  c.torch_dtype = rd.String("dtype", rd.String("torch_dtype", ""));
  c.bos_token_id = rd.OptionalTokenId("bos_token_id");
  c.eos_token_id = rd.OptionalTokenId("eos_token_id");
  KV_READ(c.vocab_size, rd.Int("vocab_size", std::nullopt, 1, kMaxVocab));

  if (c.arch == Arch::kGpt2) {
    KV_READ(c.hidden_size, rd.Int("n_embd", std::nullopt, 1, kMaxDim));
    KV_READ(c.num_layers, rd.Int("n_layer", std::nullopt, 1, kMaxLayers));
    KV_READ(c.num_heads, rd.Int("n_head", std::nullopt, 1, kMaxDim));
    KV_READ(c.max_positions, rd.Int("n_positions", std::nullopt, 1, kMaxPositions));
    KV_READ(c.intermediate_size, rd.Int("n_inner", 4 * c.hidden_size, 1, 8 * kMaxDim));
    KV_READ(c.norm_eps, rd.Double("layer_norm_epsilon", 1e-5, 1e-30, 1.0));
    c.activation = rd.String("activation_function", "gelu_new");
    KV_READ(c.tie_word_embeddings, rd.Bool("tie_word_embeddings", true));
    KV_READ(c.scale_attn_weights, rd.Bool("scale_attn_weights", true));
    KV_READ(c.scale_attn_by_inverse_layer_idx, rd.Bool("scale_attn_by_inverse_layer_idx", false));
    if (c.hidden_size % c.num_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": n_embd=", c.hidden_size,
                                                     " is not divisible by n_head=", c.num_heads));
    }
    c.num_kv_heads = c.num_heads;
    c.head_dim = c.hidden_size / c.num_heads;
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
    c.sliding_window.assign(c.num_layers, 0);
  } else {
    KV_READ(c.hidden_size, rd.Int("hidden_size", std::nullopt, 1, kMaxDim));
    KV_READ(c.num_layers, rd.Int("num_hidden_layers", std::nullopt, 1, kMaxLayers));
    KV_READ(c.num_heads, rd.Int("num_attention_heads", std::nullopt, 1, kMaxDim));
    KV_READ(c.num_kv_heads, rd.Int("num_key_value_heads", c.num_heads, 1, kMaxDim));
    KV_READ(c.intermediate_size, rd.Int("intermediate_size", std::nullopt, 1, 8 * kMaxDim));
    KV_READ(c.max_positions, rd.Int("max_position_embeddings", 2048, 1, kMaxPositions));
    KV_READ(c.norm_eps, rd.Double("rms_norm_eps", 1e-6, 1e-30, 1.0));
    c.gemma = c.arch == Arch::kGemma2 || c.arch == Arch::kGemma3;
    c.activation =
        c.gemma ? rd.String("hidden_activation", rd.String("hidden_act", "gelu_pytorch_tanh"))
                : rd.String("hidden_act", "silu");
    KV_READ(c.tie_word_embeddings, rd.Bool("tie_word_embeddings", c.gemma));
    if (c.num_heads % c.num_kv_heads != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": num_attention_heads=", c.num_heads,
                       " is not divisible by num_key_value_heads=", c.num_kv_heads));
    }
    int default_head_dim = c.hidden_size / c.num_heads;
    KV_READ(c.head_dim, rd.Int("head_dim", default_head_dim, 1, kMaxDim));
    if (c.head_dim % 2 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": head_dim=", c.head_dim, " must be even for RoPE"));
    }
    if (c.arch == Arch::kQwen2) {
      c.qkv_bias = true;
    } else if (c.arch == Arch::kPhi3 || c.arch == Arch::kMixtral) {
      // No biases in either (transformers hard-codes bias=False).
    } else {
      KV_READ(c.qkv_bias, rd.Bool("attention_bias", false));
      c.o_bias = c.qkv_bias;
      KV_READ(c.mlp_bias, rd.Bool("mlp_bias", false));
    }
    absl::Status rope = ParseRope(j, rd, &c);
    if (!rope.ok()) return rope;
    if (c.arch == Arch::kPhi3) {
      // Phi-3.5/4-mini rotate a fraction of each head; kvsweep rotates all of it.
      double partial = 1.0;
      KV_READ(partial, rd.Double("partial_rotary_factor", 1.0, 0.0, 1.0));
      if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
        KV_READ(partial,
                rd.Double(j["rope_parameters"], "partial_rotary_factor", partial, 0.0, 1.0));
      }
      if (partial != 1.0) {
        return absl::UnimplementedError(absl::StrCat(what, ": partial_rotary_factor ", partial,
                                                     " is not supported (only 1.0)"));
      }
    }
    if (c.arch == Arch::kQwen3) c.qk_norm = QkNorm::kPerHead;
    if (c.arch == Arch::kOlmo2) {
      c.qk_norm = QkNorm::kAllHeads;
      c.norms_after = true;
    }
    if (c.gemma) {
      // Gemma3TextConfig's query_pre_attn_scalar default is 256.
      KV_READ(c.query_pre_attn_scalar,
              rd.Double("query_pre_attn_scalar", c.arch == Arch::kGemma3 ? 256.0 : c.head_dim, 1e-6,
                        1e9));
      KV_READ(c.attn_softcap, rd.Double("attn_logit_softcapping", 0.0, 0.0, 1e9));
      KV_READ(c.final_softcap, rd.Double("final_logit_softcapping", 0.0, 0.0, 1e9));
    }
    if (c.arch == Arch::kGemma3) {
      c.qk_norm = QkNorm::kPerHead;  // Gemma's (1 + w) RMSNorm over head_dim, before RoPE
      bool bidirectional = false;
      KV_READ(bidirectional, rd.Bool("use_bidirectional_attention", false));
      if (bidirectional) {
        return absl::UnimplementedError(absl::StrCat(
            what, ": use_bidirectional_attention (an encoder, EmbeddingGemma) is not supported"));
      }
    }
    if (c.arch == Arch::kMixtral) {
      KV_READ(c.num_experts, rd.Int("num_local_experts", std::nullopt, 1, 1024));
      KV_READ(c.experts_per_tok, rd.Int("num_experts_per_tok", std::nullopt, 1, c.num_experts));
    }

    c.sliding_window.assign(c.num_layers, 0);
    int window = 0;
    if (c.arch == Arch::kMixtral || c.arch == Arch::kPhi3) {
      // Absent or null: full attention.
      KV_READ(window, rd.Int("sliding_window", 0, 0, kMaxPositions));
      c.sliding_window.assign(c.num_layers, window);
    }
    if (c.arch == Arch::kMistral) {
      // MistralConfig's default is 4096 when the key is absent; null disables it.
      if (!j.contains("sliding_window")) {
        window = 4096;
      } else {
        KV_READ(window, rd.Int("sliding_window", 0, 0, kMaxPositions));
      }
      c.sliding_window.assign(c.num_layers, window);
    }
    if (j.contains("layer_types") && j["layer_types"].is_array()) {
      const auto& lt = j["layer_types"];
      if (lt.size() != static_cast<size_t>(c.num_layers)) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": layer_types has ", lt.size(),
                                                       " entries for ", c.num_layers, " layers"));
      }
      KV_READ(window,
              rd.Int("sliding_window", 4096, c.arch == Arch::kGemma3 ? 1 : 0, kMaxPositions));
      for (int i = 0; i < c.num_layers; ++i) {
        std::string t = lt[i].is_string() ? lt[i].get<std::string>() : "";
        if (t == "sliding_attention") {
          c.sliding_window[i] = window;
        } else if (t == "full_attention") {
          c.sliding_window[i] = 0;
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat(what, ": layer_types[", i, "] = ", Describe(lt[i]),
                           " is not full_attention or sliding_attention"));
        }
      }
    } else if (c.arch == Arch::kGemma3) {
      // Older configs: every pattern-th layer is global, the others slide
      // (sliding_window_pattern; transformers 5 spells it _sliding_window_pattern).
      int pattern = 6;
      KV_READ(pattern, rd.Int("sliding_window_pattern", pattern, 1, kMaxLayers));
      KV_READ(pattern, rd.Int("_sliding_window_pattern", pattern, 1, kMaxLayers));
      KV_READ(window, rd.Int("sliding_window", 4096, 1, kMaxPositions));
      for (int i = 0; i < c.num_layers; ++i) {
        if ((i + 1) % pattern != 0) c.sliding_window[i] = window;
      }
    } else if (c.arch == Arch::kQwen2 || c.arch == Arch::kQwen3) {
      bool use_sw = false;
      KV_READ(use_sw, rd.Bool("use_sliding_window", false));
      if (use_sw) {
        KV_READ(window, rd.Int("sliding_window", 4096, 1, kMaxPositions));
        int max_window_layers = 0;
        KV_READ(max_window_layers, rd.Int("max_window_layers", 28, 0, kMaxLayers));
        for (int i = max_window_layers; i < c.num_layers; ++i) c.sliding_window[i] = window;
      }
    }
  }
  const std::vector<std::string> acts = {"gelu_new", "gelu_pytorch_tanh", "gelu", "silu", "relu"};
  if (std::find(acts.begin(), acts.end(), c.activation) == acts.end()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": activation '", c.activation,
                                                   "' is not supported (",
                                                   absl::StrJoin(acts, ", "), ")"));
  }
  return c;
}

absl::StatusOr<Llama2cHeader> ParseLlama2cHeader(const void* data, size_t size,
                                                 const std::string& what) {
  if (size < 7 * sizeof(int32_t)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": llama2.c file too short for its 28-byte header (", size, " bytes)"));
  }
  int32_t h[7];
  std::memcpy(h, data, sizeof(h));
  Llama2cHeader out{h[0], h[1], h[2], h[3], h[4], h[5] < 0 ? -h[5] : h[5], h[6], h[5] > 0};
  auto check = [&](const char* name, int v, int lo, int hi) -> absl::Status {
    if (v < lo || v > hi) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": llama2.c header ", name, " = ", v,
                                                     " out of range [", lo, ", ", hi, "]"));
    }
    return absl::OkStatus();
  };
  for (auto s :
       {check("dim", out.dim, 2, kMaxDim), check("hidden_dim", out.hidden_dim, 1, 8 * kMaxDim),
        check("n_layers", out.n_layers, 1, kMaxLayers), check("n_heads", out.n_heads, 1, kMaxDim),
        check("n_kv_heads", out.n_kv_heads, 1, kMaxDim),
        check("vocab_size", out.vocab_size, 1, kMaxVocab),
        check("seq_len", out.seq_len, 1, kMaxPositions)}) {
    if (!s.ok()) return s;
  }
  if (out.dim % out.n_heads != 0 || out.n_heads % out.n_kv_heads != 0 ||
      (out.dim / out.n_heads) % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": llama2.c header shapes inconsistent (dim ", out.dim, ", heads ",
                     out.n_heads, ", kv_heads ", out.n_kv_heads, ")"));
  }
  return out;
}

ModelConfig Llama2cConfig(const Llama2cHeader& h) {
  ModelConfig c;
  c.arch = Arch::kLlama2c;
  c.model_type = "llama2c";
  c.vocab_size = h.vocab_size;
  c.hidden_size = h.dim;
  c.num_layers = h.n_layers;
  c.num_heads = h.n_heads;
  c.num_kv_heads = h.n_kv_heads;
  c.head_dim = h.dim / h.n_heads;
  c.intermediate_size = h.hidden_dim;
  c.max_positions = h.seq_len;
  c.norm_eps = 1e-5;
  c.activation = "silu";
  c.tie_word_embeddings = h.shared_classifier;
  c.rope.theta = 10000.0;
  c.rope_interleaved = true;
  c.sliding_window.assign(c.num_layers, 0);
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.torch_dtype = "float32";
  return c;
}

absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& path) {
  if (IsDirectory(path)) {
    std::string cfg = JoinPath(path, "config.json");
    absl::StatusOr<nlohmann::json> j = ReadJsonFile(cfg);
    if (!j.ok()) return j.status();
    return ParseHfConfig(*j, cfg);
  }
  absl::StatusOr<std::unique_ptr<MappedFile>> f = MappedFile::Open(path);
  if (!f.ok()) return f.status();
  absl::StatusOr<Llama2cHeader> h = ParseLlama2cHeader((*f)->data(), (*f)->size(), path);
  if (!h.ok()) return h.status();
  return Llama2cConfig(*h);
}

nlohmann::json ModelConfig::ToJson() const {
  nlohmann::json j = {{"arch", ArchName(arch)},
                      {"model_type", model_type},
                      {"vocab_size", vocab_size},
                      {"hidden_size", hidden_size},
                      {"num_layers", num_layers},
                      {"num_heads", num_heads},
                      {"num_kv_heads", num_kv_heads},
                      {"head_dim", head_dim},
                      {"intermediate_size", intermediate_size},
                      {"max_positions", max_positions},
                      {"rope_theta", rope.theta},
                      {"sliding_window", sliding_window},
                      {"tie_word_embeddings", tie_word_embeddings}};
  if (rope_sliding) j["rope_theta_sliding"] = rope_sliding->theta;
  return j;
}

absl::StatusOr<std::string> DtypeName(absl::string_view name) {
  absl::string_view n = name;
  absl::ConsumePrefix(&n, "torch.");
  if (n == "fp32" || n == "float32" || n == "float") return std::string("fp32");
  if (n == "bf16" || n == "bfloat16") return std::string("bf16");
  if (n == "fp16" || n == "float16" || n == "half") return std::string("fp16");
  if (n == "auto") return std::string("auto");
  return absl::InvalidArgumentError(
      absl::StrCat("'", name.substr(0, 64),
                   "' is not fp32, bf16, fp16 (or float32, bfloat16, float16) or auto"));
}

absl::StatusOr<std::string> ResolveDtype(absl::string_view name, const ModelConfig& config) {
  absl::StatusOr<std::string> d = DtypeName(name);
  if (!d.ok() || *d != "auto") return d;
  if (config.torch_dtype.empty()) {
    return absl::InvalidArgumentError(
        "auto: the model's config.json names no dtype (torch_dtype); give fp32, bf16 or fp16");
  }
  absl::StatusOr<std::string> own = DtypeName(config.torch_dtype);
  if (!own.ok() || *own == "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("auto: the model's dtype '", config.torch_dtype.substr(0, 64),
                     "' is not one kvsweep computes in (fp32, bf16, fp16)"));
  }
  return own;
}

}  // namespace kvsweep
