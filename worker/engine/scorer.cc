#include "worker/engine/scorer.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "worker/engine/head_score.h"

namespace kvsweep::engine {

int64_t ActivationBytesPerToken(const ModelConfig& c, int64_t elt, int64_t kv_heads,
                                bool position_dependent, int64_t max_len) {
  // The residual stream, norms, q/k/v, attention output and the MLP activations in the compute
  // dtype.
  int64_t per_token =
      (8 * c.hidden_size + 3 * c.intermediate_size + 4 * c.num_heads * c.head_dim) * elt;
  if (position_dependent) {
    // Blockwise attention (attention.h): the per-block outputs and their concatenation and the
    // K/V segments a block gathers.
    per_token += (2 * c.num_heads + 4 * kv_heads) * c.head_dim * elt;
  } else if (c.attn_softcap > 0) {
    // Soft-capped scores take the explicit softmax (AttendMasked): per token, a row of max_len
    // scores per head, as products in the compute dtype and up to four fp32 copies (scaled and
    // capped, masked, softmax).
    per_token += c.num_heads * max_len * (2 * elt + 16);
  }
  return per_token;
}

int64_t DefaultBatchTokens(const Model& model, const KvCodec* codec,
                           const std::vector<ScoreRequest>& requests) {
  const torch::Device dev = model.options().device;
  if (dev.is_cpu()) return 4096;  // ~4 windows of 1k: enough to amortize, small enough for caches
  int64_t max_len = 1;
  for (const ScoreRequest& r : requests) max_len = std::max<int64_t>(max_len, r.input.size());
  return BatchTokensFor(
      ActivationBytesPerToken(model.config(), torch::elementSize(model.options().dtype),
                              model.kv_heads(), codec != nullptr && codec->position_dependent(),
                              max_len),
      max_len, FreeDeviceBytes(dev));
}

int64_t BatchTokensFor(int64_t bytes_per_token, int64_t max_len, int64_t free_bytes) {
  if (free_bytes <= 0) return 16384;
  // Keep half of what is free for the allocator's slack, the LM-head chunk and codec temporaries.
  return std::clamp<int64_t>(free_bytes / 2 / bytes_per_token, max_len, 262144);
}

absl::StatusOr<std::vector<ScoreResult>> ScoreRequests(const Model& model, const KvCodec* codec,
                                                       const std::vector<ScoreRequest>& requests,
                                                       const ScorerOptions& options,
                                                       const ScoreProgress& progress,
                                                       ScoreStats* stats,
                                                       AttentionObserver* observer) {
  const ModelConfig& c = model.config();
  int64_t total_tokens = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const ScoreRequest& r = requests[i];
    if (r.input.empty())
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": empty input"));
    if (static_cast<int64_t>(r.input.size()) > c.max_positions) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": ", r.input.size(),
                                                     " tokens exceed the model's ", c.max_positions,
                                                     " positions"));
    }
    if (r.cont.size() > r.input.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": more continuation than input tokens"));
    }
    for (int32_t id : r.input) {
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "request ", i, ": token id ", id, " outside the model's vocabulary of ", c.vocab_size));
      }
    }
    for (int32_t id : r.cont) {
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "request ", i, ": token id ", id, " outside the model's vocabulary of ", c.vocab_size));
      }
    }
    total_tokens += r.input.size();
  }
  int64_t budget = options.batch_tokens;
  if (budget <= 0) budget = DefaultBatchTokens(model, codec, requests);

  // Longest first: padding is small and the first batch hits peak memory early.
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return requests[a].input.size() > requests[b].input.size();
  });

  std::vector<ScoreResult> results(requests.size());
  int64_t done_tokens = 0;
  size_t pos = 0;
  ScoreStats local;
  absl::Status s = GuardTorch("scoring", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    while (pos < order.size()) {
      // A batch: the longest remaining request sets T; shorter ones join while the batch fits
      // the budget and padding stays under max_padding of the batch (lengths are sorted, so
      // LAMBADA-like short documents form several batches of similar length).
      const int64_t T = requests[order[pos]].input.size();
      const int64_t max_b = std::max<int64_t>(1, std::min<int64_t>(budget / T, order.size() - pos));
      int64_t B = 1, real = T;
      while (B < max_b) {
        const int64_t next = requests[order[pos + B]].input.size();
        if (static_cast<double>((B + 1) * T - (real + next)) > options.max_padding * (B + 1) * T)
          break;
        real += next;
        ++B;
      }
      std::vector<size_t> batch(order.begin() + pos, order.begin() + pos + B);
      pos += B;
      // [B, T] right-padded with token 0.
      torch::Tensor ids = torch::zeros({B, T}, torch::kLong);
      auto acc = ids.accessor<int64_t, 2>();
      for (int64_t b = 0; b < B; ++b) {
        const auto& in = requests[batch[b]].input;
        for (size_t t = 0; t < in.size(); ++t) acc[b][t] = in[t];
        local.forward_tokens += in.size();
      }
      local.padded_tokens += B * T;
      local.sequences += B;
      torch::Tensor hidden = model.Forward(ids, codec, observer);  // [B, T, hidden]
      // Gather the scored positions: row r of `rows` predicts target[r].
      std::vector<int64_t> flat_pos, target;
      std::vector<int64_t> owner;
      for (int64_t b = 0; b < B; ++b) {
        const ScoreRequest& r = requests[batch[b]];
        const int64_t L = r.input.size(), n = r.cont.size();
        for (int64_t i = 0; i < n; ++i) {
          flat_pos.push_back(b * T + (L - n + i));
          target.push_back(r.cont[i]);
          owner.push_back(b);
        }
      }
      local.scored_tokens += target.size();
      for (int64_t b = 0; b < B; ++b) results[batch[b]] = ScoreResult{0.0, true};
      if (!flat_pos.empty()) {
        torch::Tensor flat = hidden.reshape({B * T, hidden.size(-1)});
        torch::Tensor pos_t = torch::tensor(flat_pos, torch::kLong).to(hidden.device());
        torch::Tensor tgt_t = torch::tensor(target, torch::kLong).to(hidden.device());
        // Each chunk's results stay on the device; one copy to the host per batch.
        std::vector<torch::Tensor> lps, hits;
        const int64_t chunk = std::max<int64_t>(1, options.head_rows);
        for (int64_t s0 = 0; s0 < static_cast<int64_t>(target.size()); s0 += chunk) {
          const int64_t s1 = std::min<int64_t>(s0 + chunk, target.size());
          torch::Tensor rows = flat.index_select(0, pos_t.slice(0, s0, s1));
          torch::Tensor logits = model.HeadLogits(rows);  // [n, V], compute dtype
          torch::Tensor tg = tgt_t.slice(0, s0, s1);
          torch::Tensor lp, hit;
          if (!FusedHeadScore(logits, tg, &lp, &hit)) HeadScoreLibtorch(logits, tg, &lp, &hit);
          lps.push_back(lp);
          hits.push_back(hit);
        }
        const torch::Tensor lp_all = torch::cat(lps).cpu(), hit_all = torch::cat(hits).cpu();
        auto ll = lp_all.accessor<double, 1>();
        auto hit = hit_all.accessor<bool, 1>();
        for (size_t i = 0; i < target.size(); ++i) {
          ScoreResult& r = results[batch[owner[i]]];
          r.loglik += ll[i];
          r.greedy = r.greedy && hit[i];
        }
      }
      done_tokens += [&] {
        int64_t n = 0;
        for (size_t i : batch) n += requests[i].input.size();
        return n;
      }();
      if (progress &&
          !progress(static_cast<double>(done_tokens) / std::max<int64_t>(1, total_tokens))) {
        return absl::CancelledError("scoring stopped: the job was cancelled or its lease lost");
      }
    }
    return absl::OkStatus();
  });
  if (stats != nullptr) *stats = local;
  if (!s.ok()) return s;
  return results;
}

}  // namespace kvsweep::engine
