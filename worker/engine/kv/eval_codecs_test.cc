// Codecs through the whole job (Engine::Run on real data): the ledger the result reports,
// packed bytes beside it, INT8 against none, kv_heads = native, GQA pooling's
// fraction of the native cache, and the diagnostics object.
#include <cmath>

#include "gtest/gtest.h"
#include "spec/job_spec.h"
#include "worker/engine/eval.h"

namespace kvsweep::engine {
namespace {

nlohmann::json RunJob(Engine& engine, const std::string& model, const std::string& method,
                      int limit = 40, int kv_heads = 0, bool diagnostics = false) {
  JobRequest req;
  req.model_path = AssetsDir() + "/models/" + model;
  req.task = "lambada_openai";
  req.data_path = AssetsDir() + "/data/lambada_openai/lambada_test.jsonl";
  req.limit = limit;
  req.method = method;
  req.kv_heads = kv_heads;
  req.diagnostics = diagnostics;
  absl::StatusOr<JobSpec> spec = ResolveJob(req);
  EXPECT_TRUE(spec.ok()) << spec.status();
  if (!spec.ok()) return {};
  absl::StatusOr<nlohmann::json> r = engine.Run(*spec, nullptr);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : nlohmann::json();
}

double D(const nlohmann::json& j) { return j.get<double>(); }

TEST(EvalCodecsTest, ResultLedgerInt4AndRankD4) {
  Engine engine(EngineOptions{});
  nlohmann::json q = RunJob(engine, "ref-gpt2", "quant:bits=4,group=64");
  const nlohmann::json& l = q["ledger"];
  for (const char* t : {"k", "v"}) {
    EXPECT_DOUBLE_EQ(D(l[t]["payload_bits"]), 256);
    EXPECT_DOUBLE_EQ(D(l[t]["metadata_bits"]), 32);
    EXPECT_DOUBLE_EQ(D(l[t]["basis_bits"]), 0);
    EXPECT_DOUBLE_EQ(D(l[t]["fraction"]), 0.28125);
  }
  EXPECT_DOUBLE_EQ(D(l["fraction_payload"]), 0.25);
  EXPECT_DOUBLE_EQ(D(l["fraction_total"]), 0.28125);
  EXPECT_EQ(l["kv_heads"], 4);
  EXPECT_FALSE(l.contains("measured_bytes_per_token"));

  // rank d/4 with a PCA basis: payload 0.25 plus 16x64 fp16 basis amortized over the job's L.
  nlohmann::json r = RunJob(engine, "ref-gpt2", "rank:r=16");
  const nlohmann::json& rl = r["ledger"];
  const double L = D(rl["context_len"]);
  EXPECT_GT(L, 10);
  EXPECT_DOUBLE_EQ(D(rl["k"]["payload_bits"]), 256);
  EXPECT_DOUBLE_EQ(D(rl["k"]["metadata_bits"]), 0);
  EXPECT_DOUBLE_EQ(D(rl["k"]["basis_bits"]), 16.0 * 16 * 64 / L);
  EXPECT_DOUBLE_EQ(D(rl["fraction_payload"]), 0.25);
  EXPECT_DOUBLE_EQ(D(rl["fraction_total"]), 0.25 + 16.0 * 16 * 64 / L / 1024);
  EXPECT_EQ(r["spec"]["calibration"]["windows"], 16);
  EXPECT_EQ(r["spec"]["method"], "rank:r=16,basis=pca,target=kv,rope=post,seed=0");
}

// A method whose every layer is overridden with one spec runs through the composite codec and
// scores exactly as that spec alone; K and V apart report each tensor's own ledger.
TEST(EvalCodecsTest, KAndVApartAndPerLayerOverridesThroughTheModel) {
  Engine engine(EngineOptions{});
  nlohmann::json all_layers =
      RunJob(engine, "ref-llama", "quant:bits=2;layers=0-5:quant:bits=4", 20);
  nlohmann::json plain = RunJob(engine, "ref-llama", "quant:bits=4", 20);
  EXPECT_EQ(all_layers["metrics"]["lambada_openai"]["loglik_sum"],
            plain["metrics"]["lambada_openai"]["loglik_sum"]);
  EXPECT_DOUBLE_EQ(D(all_layers["ledger"]["fraction_total"]), D(plain["ledger"]["fraction_total"]));
  EXPECT_NE(all_layers["spec"]["job_id"], plain["spec"]["job_id"]);

  nlohmann::json kivi =
      RunJob(engine, "ref-llama", "k=quant:bits=2,axis=channel,group=32;v=quant:bits=2", 20);
  nlohmann::json keys =
      RunJob(engine, "ref-llama", "quant:bits=2,axis=channel,group=32,target=k", 20);
  nlohmann::json values = RunJob(engine, "ref-llama", "quant:bits=2,target=v", 20);
  ASSERT_TRUE(kivi.contains("ledger"));
  EXPECT_DOUBLE_EQ(D(kivi["ledger"]["k"]["total_bits"]), D(keys["ledger"]["k"]["total_bits"]));
  EXPECT_DOUBLE_EQ(D(kivi["ledger"]["v"]["total_bits"]), D(values["ledger"]["v"]["total_bits"]));
  EXPECT_EQ(
      kivi["spec"]["method"].get<std::string>().rfind("k=quant:bits=2,group=32,axis=channel", 0),
      0u);
  // Compressing both tensors costs more than compressing either alone.
  const double none_ll =
      D(RunJob(engine, "ref-llama", "none", 20)["metrics"]["lambada_openai"]["loglik_sum"]);
  const double both = D(kivi["metrics"]["lambada_openai"]["loglik_sum"]);
  EXPECT_LT(both, none_ll);
}

TEST(EvalCodecsTest, PackedBytesAppearBesideTheLedger) {
  Engine engine(EngineOptions{});
  for (const char* m :
       {"quant:bits=4,group=64,packed=1", "quant:bits=3,group=32,sym=1,target=k,packed=1"}) {
    nlohmann::json r = RunJob(engine, "ref-llama", m, 20);
    const nlohmann::json& l = r["ledger"];
    ASSERT_TRUE(l.contains("measured_bytes_per_token")) << m;
    EXPECT_DOUBLE_EQ(D(l["measured_bytes_per_token"]), D(l["ledger_bytes_per_token"])) << m;
    EXPECT_DOUBLE_EQ(D(l["ledger_bytes_per_token"]),
                     (D(l["k"]["total_bits"]) + D(l["v"]["total_bits"])) / 8)
        << m;
  }
  nlohmann::json r = RunJob(engine, "ref-llama", "quant:bits=4,group=64,packed=1", 20);
  EXPECT_DOUBLE_EQ(D(r["ledger"]["measured_bytes_per_token"]), 72.0);
}

// INT8 (group 64, per token) against none on 200 LAMBADA documents: the reference measured a
// relative loglik change of 6.4e-5 (ref-gpt2) and 9.5e-6 (ref-llama) on 400; allow 5e-4.
TEST(EvalCodecsTest, Int8IsWithinToleranceOfNone) {
  for (const char* model : {"ref-gpt2", "ref-llama"}) {
    Engine engine(EngineOptions{});
    nlohmann::json a = RunJob(engine, model, "none", 200),
                   b = RunJob(engine, model, "quant:bits=8", 200);
    const double la = D(a["metrics"]["lambada_openai"]["loglik_sum"]);
    const double lb = D(b["metrics"]["lambada_openai"]["loglik_sum"]);
    EXPECT_LE(std::fabs(lb - la) / std::fabs(la), 5e-4) << model;
    EXPECT_NE(la, lb) << model << ": INT8 should not be bit-identical to none";
  }
}

TEST(EvalCodecsTest, KvHeadsNativeIsExactlyNoneAndPoolingShrinksTheCache) {
  Engine engine(EngineOptions{});
  nlohmann::json a = RunJob(engine, "ref-llama", "quant:bits=4", 30);
  nlohmann::json b = RunJob(engine, "ref-llama", "quant:bits=4", 30, /*kv_heads=*/2);
  EXPECT_EQ(a["metrics"], b["metrics"]);
  EXPECT_EQ(b["spec"]["kv_heads"], 2);
  EXPECT_DOUBLE_EQ(D(b["ledger"]["fraction_of_native"]), D(b["ledger"]["fraction_total"]));
  nlohmann::json c = RunJob(engine, "ref-llama", "quant:bits=4", 30, /*kv_heads=*/1);
  EXPECT_EQ(c["ledger"]["kv_heads"], 1);
  EXPECT_EQ(c["ledger"]["native_kv_heads"], 2);
  EXPECT_DOUBLE_EQ(D(c["ledger"]["fraction_of_native"]), D(c["ledger"]["fraction_total"]) / 2);
  EXPECT_NE(a["metrics"], c["metrics"]);
}

TEST(EvalCodecsTest, DiagnosticsPerLayer) {
  Engine engine(EngineOptions{});
  nlohmann::json none = RunJob(engine, "ref-llama", "none", 30, 0, true);
  ASSERT_TRUE(none.contains("diagnostics"));
  const nlohmann::json& d0 = none["diagnostics"];
  ASSERT_EQ(d0["layers"].size(), 6u);
  EXPECT_EQ(d0["damage_bits"], 4);
  EXPECT_DOUBLE_EQ(D(d0["predicted_ratio"]), 768);
  EXPECT_GT(D(d0["tokens"]), 0);
  for (const auto& l : d0["layers"]) {
    EXPECT_EQ(D(l["kl_mean"]), 0);  // p and p^ come from the same keys
    EXPECT_EQ(D(l["flip_rate"]), 0);
    EXPECT_EQ(D(l["out_rel_err"]), 0);
    EXPECT_GT(D(l["damage_ratio"]), 1);  // dropping a coordinate hurts more than INT4 noise
    EXPECT_GT(D(l["kappa"]), 1);
    EXPECT_GT(D(l["queries"]), 0);
  }
  nlohmann::json q2 = RunJob(engine, "ref-llama", "quant:bits=2", 30, 0, true);
  nlohmann::json q8 = RunJob(engine, "ref-llama", "quant:bits=8", 30, 0, true);
  nlohmann::json r16 = RunJob(engine, "ref-llama", "rank:r=16,basis=identity", 30, 0, true);
  nlohmann::json v2 = RunJob(engine, "ref-llama", "quant:bits=2,target=v", 30, 0, true);
  EXPECT_EQ(q2["diagnostics"]["damage_bits"], 2);
  EXPECT_DOUBLE_EQ(D(q2["diagnostics"]["predicted_ratio"]), 48);
  for (int l = 0; l < 6; ++l) {
    const auto& a = q2["diagnostics"]["layers"][l];
    const auto& b = q8["diagnostics"]["layers"][l];
    EXPECT_GT(D(a["kl_mean"]), D(b["kl_mean"])) << l;
    EXPECT_GT(D(a["flip_rate"]), 0) << l;
    EXPECT_GT(D(a["out_rel_err"]), D(b["out_rel_err"])) << l;
    // V-only compression leaves attention weights alone but not the outputs.
    EXPECT_EQ(D(v2["diagnostics"]["layers"][l]["kl_mean"]), 0) << l;
    EXPECT_GT(D(v2["diagnostics"]["layers"][l]["out_rel_err"]), 0) << l;
    EXPECT_GT(D(r16["diagnostics"]["layers"][l]["kl_mean"]), 0) << l;
  }
  // Diagnostics are a separate pass: the metrics are those of the job without them.
  nlohmann::json plain = RunJob(engine, "ref-llama", "quant:bits=2", 30);
  EXPECT_EQ(plain["metrics"], q2["metrics"]);
}

}  // namespace
}  // namespace kvsweep::engine
