// Would other cuBLASLt algorithms run a layer's matrix products faster than the one libtorch's
// products get? (docs/gpu.md, "What is left above the matrix products")
//
// For each product of one decoder layer of a model shape (nn.Linear's y = x W^T, bf16 operands,
// fp32 accumulation, M tokens): cublasGemmEx with the default algorithm, which is what at::mm calls
// for bf16, against every candidate cuBLASLt's heuristic returns for the same product. The H200
// runs these products at its power limit, so each one is timed sustained (ITERS back-to-back
// calls after a warm-up): a kernel that spends less energy per product gets a higher clock, and
// that shows in its time. The three fastest candidates and the default are then timed again in
// alternation (three rounds, the best of each kept). Last, the layer's products in sequence with
// the defaults against the same sequence with each product's fastest candidate, alternated.
// Prints one JSON line per product and one for the layer.
//
//   nvcc -O2 -std=c++17 -arch=sm_90 -I. tools/gpu/gemm_algos.cu -lcublasLt -lcublas -o gemm_algos
//   gemm_algos SHAPE [M] [ITERS]      SHAPE: llama-1b | mistral-7b | qwen2-14b; M default 65536
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "worker/engine/cublaslt_config.h"

#define CHECK_CUDA(x)                                                           \
  do {                                                                          \
    cudaError_t e_ = (x);                                                       \
    if (e_ != cudaSuccess) {                                                    \
      std::fprintf(stderr, "gemm_algos: %s: %s\n", #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)
#define CHECK_BLAS(x)                                                                       \
  do {                                                                                      \
    cublasStatus_t s_ = (x);                                                                \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                      \
      std::fprintf(stderr, "gemm_algos: %s: cuBLAS status %d\n", #x, static_cast<int>(s_)); \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

using kvsweep::engine::DescribeAlgoConfig;

namespace {

struct Shape {
  const char* name;
  int hidden, inter, heads, kv_heads;
};
// The shapes of tools/gpu/make_checkpoints.py.
const Shape kShapes[] = {
    {"llama-1b", 2048, 8192, 32, 8},
    {"mistral-7b", 4096, 14336, 32, 8},
    {"qwen2-14b", 5120, 13824, 40, 8},
};

struct Product {
  std::string name;
  int n, k;  // y [M, n] = x [M, k] W^T, W [n, k]
};

constexpr size_t kWorkspace = 32u << 20;  // libtorch's cuBLAS workspace on Hopper

__global__ void Fill(__nv_bfloat16* p, size_t n, unsigned seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    p[i] = __float2bfloat16(((h & 0xffffu) / 65536.0f - 0.5f) * scale);
  }
}

__nv_bfloat16* Random(size_t n, unsigned seed, float scale) {
  __nv_bfloat16* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, n * sizeof(__nv_bfloat16)));
  Fill<<<1024, 256>>>(p, n, seed, scale);
  CHECK_CUDA(cudaGetLastError());
  return p;
}

struct Gemm {
  Product p;
  __nv_bfloat16 *w = nullptr, *y = nullptr;
  kvsweep::engine::LtDescriptors d;
  std::vector<cublasLtMatmulHeuristicResult_t> candidates;
};

struct Bench {
  cublasHandle_t blas = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  __nv_bfloat16* x = nullptr;  // [M, max k]
  int m = 0;
  int iters = 10;
};

const float kOne = 1.0f, kZero = 0.0f;

void RunDefault(Bench& b, Gemm& g) {
  CHECK_BLAS(cublasGemmEx(b.blas, CUBLAS_OP_T, CUBLAS_OP_N, g.p.n, b.m, g.p.k, &kOne, g.w,
                          CUDA_R_16BF, g.p.k, b.x, CUDA_R_16BF, g.p.k, &kZero, g.y, CUDA_R_16BF,
                          g.p.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT_TENSOR_OP));
}

void RunLt(Bench& b, Gemm& g, int i) {
  CHECK_BLAS(cublasLtMatmul(b.lt, g.d.op, &kOne, g.w, g.d.a, b.x, g.d.b, &kZero, g.y, g.d.c, g.y,
                            g.d.c, &g.candidates[i].algo, b.workspace, kWorkspace, b.stream));
}

// Milliseconds per call of fn, over b.iters calls after 3 warm-up calls.
template <typename Fn>
double Time(Bench& b, Fn fn) {
  for (int i = 0; i < 3; ++i) fn();
  CHECK_CUDA(cudaEventRecord(b.start, b.stream));
  for (int i = 0; i < b.iters; ++i) fn();
  CHECK_CUDA(cudaEventRecord(b.stop, b.stream));
  CHECK_CUDA(cudaEventSynchronize(b.stop));
  float ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&ms, b.start, b.stop));
  return ms / b.iters;
}

void Prepare(Bench& b, Gemm& g, unsigned seed) {
  g.w = Random(static_cast<size_t>(g.p.n) * g.p.k, seed, 0.04f);
  CHECK_CUDA(cudaMalloc(&g.y, static_cast<size_t>(b.m) * g.p.n * sizeof(__nv_bfloat16)));
  std::vector<cublasLtMatmulHeuristicResult_t> found;
  CHECK_BLAS(
      kvsweep::engine::AskLtHeuristic(b.lt, true, b.m, g.p.n, g.p.k, kWorkspace, &g.d, &found));
  const int returned = static_cast<int>(found.size());
  for (int i = 0; i < returned; ++i) {
    if (found[i].state == CUBLAS_STATUS_SUCCESS) g.candidates.push_back(found[i]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: gemm_algos SHAPE [M] [ITERS]\n");
    return 2;
  }
  const Shape* shape = nullptr;
  for (const Shape& s : kShapes) {
    if (std::strcmp(s.name, argv[1]) == 0) shape = &s;
  }
  if (shape == nullptr) {
    std::fprintf(stderr, "gemm_algos: unknown shape %s (llama-1b, mistral-7b, qwen2-14b)\n",
                 argv[1]);
    return 2;
  }
  Bench b;
  b.m = argc > 2 ? std::atoi(argv[2]) : 65536;
  b.iters = argc > 3 ? std::atoi(argv[3]) : 10;
  if (b.m <= 0 || b.iters <= 0) {
    std::fprintf(stderr, "gemm_algos: M and ITERS must be positive\n");
    return 2;
  }
  const int head = shape->hidden / shape->heads;
  std::vector<Gemm> gemms;
  for (const Product& p :
       {Product{"qkv", (shape->heads + 2 * shape->kv_heads) * head, shape->hidden},
        Product{"o", shape->hidden, shape->heads * head},
        Product{"gate_up", 2 * shape->inter, shape->hidden},
        Product{"down", shape->hidden, shape->inter}}) {
    gemms.push_back(Gemm{p});
  }
  CHECK_CUDA(cudaStreamCreate(&b.stream));
  CHECK_BLAS(cublasCreate(&b.blas));
  CHECK_BLAS(cublasLtCreate(&b.lt));
  CHECK_CUDA(cudaMalloc(&b.workspace, kWorkspace));
  CHECK_BLAS(cublasSetStream(b.blas, b.stream));
  CHECK_BLAS(cublasSetWorkspace(b.blas, b.workspace, kWorkspace));
  CHECK_CUDA(cudaEventCreate(&b.start));
  CHECK_CUDA(cudaEventCreate(&b.stop));
  int max_k = 0;
  for (const Gemm& g : gemms) max_k = std::max(max_k, g.p.k);
  b.x = Random(static_cast<size_t>(b.m) * max_k, 7, 2.0f);
  unsigned seed = 11;
  for (Gemm& g : gemms) Prepare(b, g, seed++);
  CHECK_CUDA(cudaDeviceSynchronize());

  std::vector<int> best(gemms.size(), -1);
  double layer_flops = 0;
  for (size_t gi = 0; gi < gemms.size(); ++gi) {
    Gemm& g = gemms[gi];
    const double flops = 2.0 * b.m * g.p.n * g.p.k;
    layer_flops += flops;
    // The sweep, then the three fastest and the default again, alternated over three rounds.
    std::vector<std::pair<double, int>> swept;
    for (int i = 0; i < static_cast<int>(g.candidates.size()); ++i) {
      swept.push_back({Time(b, [&] { RunLt(b, g, i); }), i});
    }
    std::sort(swept.begin(), swept.end());
    const size_t top = std::min<size_t>(3, swept.size());
    double default_ms = 1e30;
    std::vector<double> top_ms(top, 1e30);
    for (int round = 0; round < 3; ++round) {
      default_ms = std::min(default_ms, Time(b, [&] { RunDefault(b, g); }));
      for (size_t t = 0; t < top; ++t) {
        top_ms[t] = std::min(top_ms[t], Time(b, [&] { RunLt(b, g, swept[t].second); }));
      }
    }
    size_t bt = 0;
    for (size_t t = 1; t < top; ++t) {
      if (top_ms[t] < top_ms[bt]) bt = t;
    }
    const double first_ms = [&] {
      for (const auto& s : swept) {
        if (s.second == 0) return s.first;
      }
      return 0.0;
    }();
    best[gi] = top > 0 ? swept[bt].second : -1;
    std::printf(
        "{\"shape\": \"%s\", \"product\": \"%s\", \"m\": %d, \"n\": %d, \"k\": %d, "
        "\"default_ms\": %.4f, \"default_tflops\": %.1f, \"candidates\": %zu, "
        "\"heuristic_first_ms\": %.4f, \"best_ms\": %.4f, \"best_tflops\": %.1f, "
        "\"best_index\": %d, \"best_algo\": \"%s\", \"first_algo\": \"%s\", "
        "\"default_over_best\": %.4f}\n",
        shape->name, g.p.name.c_str(), b.m, g.p.n, g.p.k, default_ms, flops / default_ms / 1e9,
        g.candidates.size(), first_ms, top > 0 ? top_ms[bt] : 0.0,
        top > 0 ? flops / top_ms[bt] / 1e9 : 0.0, best[gi],
        top > 0 ? DescribeAlgoConfig(g.candidates[best[gi]].algo).c_str() : "",
        g.candidates.empty() ? "" : DescribeAlgoConfig(g.candidates[0].algo).c_str(),
        top > 0 ? default_ms / top_ms[bt] : 0.0);
    std::fflush(stdout);
  }
  // The layer: the products in sequence, defaults against each one's fastest, alternated.
  auto layer_default = [&] {
    for (Gemm& g : gemms) RunDefault(b, g);
  };
  auto layer_best = [&] {
    for (size_t gi = 0; gi < gemms.size(); ++gi) {
      if (best[gi] >= 0) {
        RunLt(b, gemms[gi], best[gi]);
      } else {
        RunDefault(b, gemms[gi]);
      }
    }
  };
  std::vector<double> d_ms, t_ms;
  for (int round = 0; round < 4; ++round) {
    d_ms.push_back(Time(b, layer_default));
    t_ms.push_back(Time(b, layer_best));
  }
  const double d = *std::min_element(d_ms.begin(), d_ms.end());
  const double t = *std::min_element(t_ms.begin(), t_ms.end());
  std::printf(
      "{\"shape\": \"%s\", \"product\": \"layer\", \"m\": %d, \"default_ms\": %.4f, "
      "\"tuned_ms\": %.4f, \"default_tflops\": %.1f, \"tuned_tflops\": %.1f, "
      "\"default_over_tuned\": %.4f, \"default_rounds_ms\": [%.4f, %.4f, %.4f, %.4f], "
      "\"tuned_rounds_ms\": [%.4f, %.4f, %.4f, %.4f]}\n",
      shape->name, b.m, d, t, layer_flops / d / 1e9, layer_flops / t / 1e9, d / t, d_ms[0], d_ms[1],
      d_ms[2], d_ms[3], t_ms[0], t_ms[1], t_ms[2], t_ms[3]);
  return 0;
}
