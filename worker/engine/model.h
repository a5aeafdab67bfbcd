// A decoder-only transformer loaded from a Hugging Face checkpoint (gemma2, gemma3_text, gpt2,
// llama, mistral, mixtral, olmo2, phi3, qwen2, qwen3) or a llama2.c .bin, with the whole forward
// pass in one readable function (Forward) and a KV codec hook inside attention.
//
// Weights are stored the torch.nn.Linear way ([out, in]); GPT-2's Conv1D ([in, out]) and fused
// c_attn are converted at load. `kv_heads` below the native count mean-pools the K/V projections
// (and biases) of consecutive groups of native KV heads (GQA checkpoint conversion); query heads
// are unchanged.
#ifndef KVSWEEP_WORKER_ENGINE_MODEL_H_
#define KVSWEEP_WORKER_ENGINE_MODEL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/placement.h"
#include "worker/engine/rms_norm_style.h"
#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

struct ModelOptions {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  int kv_heads = 0;  // 0 = native
  // Two or more: the layers are split across these devices (a pipeline, placed by
  // worker/engine/placement.h), and `device` is their first.
  std::vector<torch::Device> pipeline;
};

struct LayerWeights {
  torch::Tensor norm1_w, norm1_b;  // [hidden] (b: gpt2 only)
  torch::Tensor wq, bq;            // [H*D, hidden], [H*D]
  torch::Tensor wk, bk;            // [Hkv*D, hidden]
  torch::Tensor wv, bv;            // [Hkv*D, hidden]
  torch::Tensor wo, bo;            // [hidden, H*D]
  torch::Tensor norm2_w, norm2_b;
  torch::Tensor w_gate;          // llama family: [inter, hidden]
  torch::Tensor w_up, b_up;      // [inter, hidden] (gpt2: c_fc)
  torch::Tensor w_down, b_down;  // [hidden, inter]
  // qk_norm: [D] per head (qwen3, gemma3), [H*D] / [Hkv*D] (olmo2)
  torch::Tensor q_norm, k_norm;
  torch::Tensor post_attn_norm, post_ffn_norm;  // gemma: on the attention and MLP outputs
  // Mixture of experts (mixtral): router [experts, hidden]; per expert gate/up [inter, hidden],
  // down [hidden, inter] (w_gate/w_up/w_down unused).
  torch::Tensor router;
  std::vector<torch::Tensor> e_gate, e_up, e_down;
  // Where the fused layer kernels exist (fused_layer.h: CUDA, bf16/fp16): q, k and v stacked
  // into one projection, gate and up into another, one matrix product each; wq..wv, bq..bv,
  // w_gate and w_up are then views of their rows. Undefined elsewhere.
  torch::Tensor w_qkv, b_qkv, w_gate_up;
};

// RMSNorm of x over its last dimension as transformers computes it: LlamaRMSNorm (statistics in
// fp32, w * the normalized value in x's dtype), GemmaRMSNorm (fp32, times (1 + w), then x's
// dtype) and Olmo2RMSNorm (fp32, times w, then x's dtype); RmsNormOf picks by style. The libtorch
// path of Model::Forward; fused_layer.h's kernels replace it on the GPU.
torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& w, double eps);
torch::Tensor GemmaRmsNorm(const torch::Tensor& x, const torch::Tensor& w, double eps);
torch::Tensor Olmo2RmsNorm(const torch::Tensor& x, const torch::Tensor& w, double eps);
torch::Tensor RmsNormOf(RmsNormStyle style, const torch::Tensor& x, const torch::Tensor& w,
                        double eps);

// The style of the model's RMSNorms.
RmsNormStyle RmsNormStyleOf(const ModelConfig& c);

// Per-layer observer of attention, for diagnostics: receives q [B, H, T, D] (post-RoPE), the
// uncompressed K/V [B, Hkv, T, D] (post-RoPE) and what attention actually read.
class AttentionObserver {
 public:
  virtual ~AttentionObserver() = default;
  virtual void Observe(int layer, const torch::Tensor& q, const torch::Tensor& k_raw,
                       const torch::Tensor& v_raw, const KvPair& seen,
                       const torch::Tensor& allowed) = 0;
};

class Model {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& path,
                                                     const ModelOptions& options);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }
  const ModelOptions& options() const { return options_; }
  int kv_heads() const { return kv_heads_; }
  int64_t num_parameters() const;

  // tokens: [B, T] int64 (any device). Returns the final-normed hidden states [B, T, hidden] in
  // the compute dtype, on the LM head's device (a pipeline's last; its first if the head is
  // tied). `codec` may be null (= none). T must not exceed max_positions.
  torch::Tensor Forward(const torch::Tensor& tokens, const KvCodec* codec,
                        AttentionObserver* observer = nullptr) const;
  // hidden [..., hidden] -> logits [..., vocab] in the compute dtype (gemma2's soft cap applied
  // in it, as transformers does).
  torch::Tensor HeadLogits(const torch::Tensor& hidden) const;
  // HeadLogits widened to fp32.
  torch::Tensor Logits(const torch::Tensor& hidden) const;

  const LayerWeights& layer(int i) const { return layers_[i]; }
  // Where layer i's weights are (options().device unless pipelined).
  torch::Device layer_device(int i) const { return layer_devices_[i]; }
  // The pipeline's placement (empty unless options().pipeline has two or more devices).
  const Placement& placement() const { return placement_; }
  // The factor attention multiplies q.k by in `layer` (1/sqrt(D), GPT-2's options).
  double AttentionScale(int layer) const;
  // Applies layer `layer`'s RoPE to x [B, Hx, T, D] at positions 0..T-1 (no-op for gpt2).
  torch::Tensor ApplyRope(const torch::Tensor& x, int layer) const;

 private:
  Model() = default;
  absl::Status LoadHf(const std::string& dir);
  absl::Status LoadLlama2c(const std::string& path);
  absl::Status PoolKvHeads(int target);
  void BuildRope();
  void StackProjections();

  ModelConfig config_;
  ModelOptions options_;
  int kv_heads_ = 0;
  torch::Tensor tok_emb_;  // [vocab, hidden]
  torch::Tensor pos_emb_;  // gpt2: [max_positions, hidden]
  torch::Tensor final_w_, final_b_;
  torch::Tensor lm_head_;  // [vocab, hidden] (tied: tok_emb_)
  std::vector<LayerWeights> layers_;
  std::vector<torch::Device> layer_devices_;
  Placement placement_;
  // One [max_positions, D] cos/sin table in the compute dtype per distinct RoPE (gemma3: full
  // and sliding layers differ); layer l uses rope_table_[l].
  std::vector<torch::Tensor> rope_cos_, rope_sin_;
  std::vector<int> rope_table_;
  std::shared_ptr<void> keepalive_;  // the checkpoint mapping backing zero-copy weights
};

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_MODEL_H_
