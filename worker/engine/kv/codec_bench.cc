// Encode/decode cost of the KV codecs on CPU (docs/benchmarks.md). Plain timing in one process:
// every measurement is a median over repetitions, and each is printed as a ratio to baselines
// measured in the same run (so load from other processes shows up in both):
//   copy       the cost of `none`'s cache write: cloning K and V (what storing them uncompressed
//              costs); `none`'s own Apply is free (it returns its inputs)
//   attention  one layer's causal attention over the same K/V (T queries, GQA as the model)
// Part 1 runs Apply() of each codec built through the registry on ref-llama's K/V shape
// [B, 2 KV heads, T, 64] (bases prepared on the model). Part 2 splits encode and decode of the
// packed quantizer and of a projection at a larger, Llama-like layer shape [1, 8, T, 128].
//
//   kvsweep-codec-bench [--tokens T] [--batch B] [--reps N] [--threads N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "spec/job_spec.h"
#include "worker/engine/kv/bases.h"
#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/kv/quantizer.h"
#include "worker/engine/model.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

struct Options {
  int64_t tokens = 2048;
  int64_t batch = 4;
  int reps = 15;
  int threads = 1;
};

double MedianMs(int reps, const std::function<void()>& fn) {
  fn();  // warm-up
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

Tensor Attention(const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t groups = q.size(1) / k.size(1), T = q.size(2);
  Tensor kr = k.repeat_interleave(groups, 1), vr = v.repeat_interleave(groups, 1);
  Tensor s = torch::matmul(q, kr.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(3)));
  Tensor causal = torch::ones({T, T}, torch::kBool).triu(1);
  return torch::matmul(torch::softmax(s.masked_fill(causal, -INFINITY), -1), vr);
}

int Main(const Options& o) {
  at::set_num_threads(o.threads);
  torch::NoGradGuard no_grad;
  auto model = Model::Load(AssetsDir() + "/models/ref-llama", ModelOptions{});
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(model.status().message()).c_str());
    return 2;
  }
  const Model& m = **model;
  CodecContext ctx;
  ctx.model = &m;
  torch::manual_seed(1);
  for (int w = 0; w < 4; ++w) {
    Tensor ids = torch::randint(3, m.config().vocab_size, {256}, torch::kLong);
    ctx.calibration_windows.emplace_back(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + 256);
  }

  // Part 1: Apply through the registry.
  const int64_t B = o.batch, Hkv = m.kv_heads(), T = o.tokens, D = m.config().head_dim,
                H = m.config().num_heads;
  Tensor k = torch::randn({B, Hkv, T, D}), v = torch::randn({B, Hkv, T, D}),
         q = torch::randn({B, H, T, D});
  const double copy_ms = MedianMs(o.reps, [&] { Tensor a = k.clone(), b = v.clone(); });
  const double attn_ms = MedianMs(o.reps, [&] { Attention(q, k, v); });
  const double entries = static_cast<double>(B * Hkv * T);
  std::printf("# kvsweep-codec-bench: %d thread(s), libtorch %s\n\n", at::get_num_threads(),
              TORCH_VERSION);
  std::printf(
      "## Apply() per layer, K and V [%lld, %lld, %lld, %lld] (ref-llama shape), median of %d\n\n",
      static_cast<long long>(B), static_cast<long long>(Hkv), static_cast<long long>(T),
      static_cast<long long>(D), o.reps);
  std::printf("baselines: copy (none's cache write) %.3f ms, causal attention %.3f ms\n\n", copy_ms,
              attn_ms);
  std::printf(
      "| method | ms | ns per token-head (K+V) | x copy | x attention "
      "|\n|---|---:|---:|---:|---:|\n");
  const char* specs[] = {
      "none",
      "quant:bits=8",
      "quant:bits=4",
      "quant:bits=4,group=32",
      "quant:bits=3",
      "quant:bits=2",
      "quant:bits=4,sym=1",
      "quant:bits=2,axis=channel,group=32",
      "quant:bits=4,residual=128",
      "quant:bits=4,basis=hadamard",
      "quant:bits=4,basis=random",
      "quant:bits=4,basis=pca",
      "quant:bits=8,packed=1",
      "quant:bits=4,packed=1",
      "quant:bits=3,packed=1",
      "quant:bits=2,packed=1",
      "rank:r=16,basis=identity",
      "rank:r=16",
      "rank:r=32,basis=svd",
      "rank:r=16,basis=random",
      "hybrid:r=32,bits=8",
      "hybrid:r=32,bits=4,basis=random",
  };
  for (const char* s : specs) {
    absl::StatusOr<MethodSpec> p = ParseMethodSpec(s);
    absl::StatusOr<MethodSpec> r = p.ok() ? ResolveMethodSpec(*p, static_cast<int>(D)) : p;
    if (!r.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(r.status().message()).c_str());
      return 2;
    }
    auto codec = NewKvCodec(*r);
    absl::Status st = codec.ok() ? (*codec)->Prepare(ctx) : codec.status();
    if (!st.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
      return 2;
    }
    const double ms = MedianMs(o.reps, [&] { (*codec)->Apply(0, k, v); });
    std::printf("| `%s` | %.3f | %.2f | %.2f | %.3f |\n", s, ms, ms * 1e6 / entries, ms / copy_ms,
                ms / attn_ms);
  }

  // Part 2: encode and decode apart, at a Llama-like layer shape.
  const int64_t H2 = 8, D2 = 128;
  Tensor x = torch::randn({1, H2, T, D2});
  const double entries2 = static_cast<double>(H2 * T);
  const double copy2 = MedianMs(o.reps, [&] { Tensor a = x.clone(); });
  std::printf(
      "\n## Encode / decode of one tensor [1, %lld, %lld, %lld], median of %d; copy %.3f ms\n\n",
      static_cast<long long>(H2), static_cast<long long>(T), static_cast<long long>(D2), o.reps,
      copy2);
  std::printf("| operation | ms | ns per token-head | x copy |\n|---|---:|---:|---:|\n");
  auto row = [&](const std::string& name, const std::function<void()>& fn) {
    const double ms = MedianMs(o.reps, fn);
    std::printf("| %s | %.3f | %.2f | %.2f |\n", name.c_str(), ms, ms * 1e6 / entries2, ms / copy2);
  };
  for (int bits : {8, 4, 3, 2}) {
    QuantFormat f{bits, static_cast<int>(D2), false, true};
    QuantCodes c = EncodeCodes(x, f);
    Tensor packed = PackCodes(c.codes, bits);
    row("quant b=" + std::to_string(bits) + " simulate (fp32 meta)", [&] {
      FakeQuantize(x, QuantFormat{bits, static_cast<int>(D2), false, false});
    });
    row("quant b=" + std::to_string(bits) + " encode (codes + pack)", [&] {
      QuantCodes cc = EncodeCodes(x, f);
      PackCodes(cc.codes, bits);
    });
    row("quant b=" + std::to_string(bits) + " decode (unpack + dequant)", [&] {
      DecodeCodes(QuantCodes{UnpackCodes(packed, bits, D2), c.scale, c.zero}, f, torch::kFloat32);
    });
  }
  for (int r : {32, 64}) {
    Tensor u = torch::stack(std::vector<Tensor>(
        H2, RandomOrthogonalBasis(static_cast<int>(D2), 1).slice(1, 0, r).to(torch::kFloat32)));
    Tensor coeff = torch::matmul(x, u);
    row("rank r=" + std::to_string(r) + " encode (x U_r)", [&] { torch::matmul(x, u); });
    row("rank r=" + std::to_string(r) + " decode (c U_r^T)",
        [&] { torch::matmul(coeff, u.transpose(-1, -2)); });
  }
  Tensor rot = HadamardBasis(static_cast<int>(D2)).to(torch::kFloat32);
  row("hadamard rotation (x H, dense)", [&] { torch::matmul(x, rot); });
  return 0;
}

}  // namespace
}  // namespace kvsweep::engine

int main(int argc, char** argv) {
  kvsweep::engine::Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const long long value = std::atoll(argv[i + 1]);
    if (flag == "--tokens")
      o.tokens = value;
    else if (flag == "--batch")
      o.batch = value;
    else if (flag == "--reps")
      o.reps = static_cast<int>(value);
    else if (flag == "--threads")
      o.threads = static_cast<int>(value);
    else {
      std::fprintf(
          stderr, "usage: kvsweep-codec-bench [--tokens T] [--batch B] [--reps N] [--threads N]\n");
      return 2;
    }
  }
  if (o.tokens < 1 || o.batch < 1 || o.reps < 1 || o.threads < 1) {
    std::fprintf(stderr, "error: --tokens, --batch, --reps and --threads must be >= 1\n");
    return 2;
  }
  return kvsweep::engine::Main(o);
}
