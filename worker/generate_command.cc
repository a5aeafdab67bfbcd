#include "worker/generate_command.h"

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "spec/method_spec.h"
#include "worker/engine/generate.h"
#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/model.h"
#include "worker/engine/tokenizer/tokenizer.h"
#include "worker/engine/torch_util.h"

namespace kvsweep {

int RunGenerateCommand(int argc, char** argv) {
  CLI::App app{"Greedy continuation of a prompt (temperature 0).", "kvsweep-worker generate"};
  std::string model_path, tokenizer_path, prompt, method = "none", dtype = "fp32", device = "cpu";
  int max_new = 32;
  app.add_option("--model", model_path, "Model directory or llama2.c .bin")->required();
  app.add_option("--tokenizer", tokenizer_path, "Tokenizer (default: the model directory's)");
  app.add_option("--prompt", prompt, "Prompt text")->required();
  app.add_option("--max-new-tokens", max_new, "Tokens to generate")->check(CLI::Range(1, 1 << 20));
  app.add_option("--method", method, "KV method spec (needs no calibration)");
  app.add_option("--dtype", dtype, "fp32 | bf16 | fp16");
  app.add_option("--device", device, "cpu | cuda | cuda:N");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return s.code() == absl::StatusCode::kInternal ? 1 : 2;
  };
  absl::StatusOr<torch::ScalarType> dt = engine::ParseDtype(dtype);
  if (!dt.ok()) return fail(dt.status());
  absl::StatusOr<torch::Device> dev = engine::ParseDevice(device);
  if (!dev.ok()) return fail(dev.status());
  absl::StatusOr<std::unique_ptr<engine::Model>> model =
      engine::Model::Load(model_path, engine::ModelOptions{*dev, *dt, 0});
  if (!model.ok()) return fail(model.status());
  absl::StatusOr<std::unique_ptr<engine::Tokenizer>> tok =
      engine::LoadTokenizer(tokenizer_path.empty() ? model_path : tokenizer_path);
  if (!tok.ok()) return fail(tok.status());
  absl::StatusOr<KvMethod> m = ParseKvMethod(method);
  if (!m.ok()) return fail(m.status());
  absl::StatusOr<KvMethod> rm =
      ResolveKvMethod(*m, (*model)->config().head_dim, (*model)->config().num_layers);
  if (!rm.ok()) return fail(rm.status());
  if (rm->needs_calibration())
    return fail(absl::InvalidArgumentError(
        "generate: methods that need calibration are not supported here"));
  absl::StatusOr<std::unique_ptr<engine::KvCodec>> codec = engine::NewKvCodec(*rm);
  if (!codec.ok()) return fail(codec.status());
  engine::CodecContext ctx;
  ctx.model = model->get();
  absl::Status ps = (*codec)->Prepare(ctx);
  if (!ps.ok()) return fail(ps);
  absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(prompt);
  if (!ids.ok()) return fail(ids.status());
  std::vector<int32_t> input;
  if (auto bos = (*tok)->bos_id()) input.push_back(*bos);
  input.insert(input.end(), ids->begin(), ids->end());
  const int32_t stop = (*tok)->eos_id().value_or(-1);
  absl::StatusOr<std::vector<int32_t>> out =
      engine::GreedyGenerate(**model, codec->get(), input, max_new, stop);
  if (!out.ok()) return fail(out.status());
  std::vector<int32_t> shown = *out;
  if (!shown.empty() && shown.back() == stop) shown.pop_back();
  std::cout << (*tok)->Decode(shown) << std::endl;
  return 0;
}

}  // namespace kvsweep
