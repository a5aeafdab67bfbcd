// cuBLASLt products with a measured algorithm (tuned_gemm_kernel.h).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "worker/engine/cublaslt_config.h"
#include "worker/engine/tuned_gemm_kernel.h"

namespace kvsweep::engine {
namespace {

// One measured choice: for this GPU, cuBLASLt major version, dtype and product (n outputs, k
// inputs), from `min_rows` rows up, the algorithm whose configuration has these fields.
struct TableEntry {
  const char* gpu;  // cudaDeviceProp::name
  int lt_major;     // cublasLtGetVersion() / 10000
  bool bf16;
  int64_t n, k, min_rows;
  int config[kNumAlgoConfigFields];  // cublaslt_config.h's fields
};

// From tools/gpu/gemm_algos.cu on the H200 (cuBLASLt 13.1, bf16, 65536 rows; raw output in
// tools/gpu/results/gemm_algos.jsonl): each product's fastest of the heuristic's candidates in
// three alternated rounds against cuBLAS's default, kept where it was at least 1% faster (the
// heuristic ranks a 192x192-tile algorithm first for all of them). Entries serve products of
// 16384 rows and more: a choice (the scorer's batches on these models are 262144 rows and their
// remainders), not measured below 65536 rows.
constexpr int64_t kH200Rows = 16384;
const TableEntry kTable[] = {
    // mistral-7b: stacked q/k/v (176x128 tiles, 1.026x), o (128x160, 1.059x), stacked gate/up
    // (176x128, 1.029x), down (256x128, 1.018x).
    {"NVIDIA H200", 13, true, 6144, 4096, kH200Rows, {66, 201, 35, 1, 0, 0, 2, 0, 5}},
    {"NVIDIA H200", 13, true, 4096, 4096, kH200Rows, {66, 29, 35, 1, 0, 0, 1, 0, 3}},
    {"NVIDIA H200", 13, true, 28672, 4096, kH200Rows, {66, 201, 35, 1, 0, 0, 2, 0, 5}},
    {"NVIDIA H200", 13, true, 4096, 14336, kH200Rows, {66, 24, 35, 1, 0, 0, 7, 0, 5}},
    // qwen2-14b: stacked q/k/v (168x128, 1.041x; Qwen2's projections carry a bias, which the
    // tuned path leaves to libtorch), o (128x160, 1.047x); gate/up (1.009x) and down (1.008x)
    // stay with the default.
    {"NVIDIA H200", 13, true, 7168, 5120, kH200Rows, {66, 197, 35, 1, 0, 0, 2, 0, 5}},
    {"NVIDIA H200", 13, true, 5120, 5120, kH200Rows, {66, 29, 35, 1, 0, 0, 1, 0, 3}},
    // llama-1b: stacked q/k/v (128x160, 1.064x), o (128x160, 1.120x), stacked gate/up (256x128,
    // 1.026x), down (128x160, 1.058x).
    {"NVIDIA H200", 13, true, 3072, 2048, kH200Rows, {66, 29, 35, 1, 0, 0, 1, 0, 3}},
    {"NVIDIA H200", 13, true, 2048, 2048, kH200Rows, {66, 29, 35, 1, 0, 0, 1, 0, 3}},
    {"NVIDIA H200", 13, true, 16384, 2048, kH200Rows, {66, 24, 35, 1, 0, 0, 7, 0, 5}},
    {"NVIDIA H200", 13, true, 2048, 8192, kH200Rows, {66, 29, 35, 1, 0, 0, 1, 0, 3}},
};

struct Plan {
  cublasLtHandle_t handle = nullptr;
  LtDescriptors d;
  cublasLtMatmulAlgo_t algo;
};

bool Matches(const cublasLtMatmulAlgo_t& algo, const TableEntry& e) {
  for (int i = 0; i < kNumAlgoConfigFields; ++i) {
    if (AlgoConfigField(algo, kAlgoConfigFields[i]) != e.config[i]) return false;
  }
  return true;
}

// The device's name, asked once per device (guarded by the caller's lock or used in checks).
std::string DeviceName(int device) {
  cudaDeviceProp prop;
  return cudaGetDeviceProperties(&prop, device) == cudaSuccess ? std::string(prop.name) : "";
}

// The entry for this GPU (by name), cuBLASLt major version, dtype, n and k whose rows s.m
// reaches, or null.
const TableEntry* EntryFor(const std::string& gpu, const TunedGemmShape& s) {
  const int lt_major = static_cast<int>(cublasLtGetVersion() / 10000);
  for (const TableEntry& e : kTable) {
    if (gpu == e.gpu && e.lt_major == lt_major && e.bf16 == s.bf16 && e.n == s.n && e.k == s.k &&
        s.m >= e.min_rows) {
      return &e;
    }
  }
  return nullptr;
}

// The plan for s (see FindTunedGemmPlan); descriptors and handle are kept for the process.
std::unique_ptr<Plan> MakePlan(const TableEntry* e, const TunedGemmShape& s,
                               cublasLtHandle_t handle) {
  auto p = std::make_unique<Plan>();
  p->handle = handle;
  std::vector<cublasLtMatmulHeuristicResult_t> found;
  // No candidates where it failed.
  AskLtHeuristic(handle, s.bf16, s.m, s.n, s.k, kTunedGemmWorkspaceBytes, &p->d, &found);
  for (const cublasLtMatmulHeuristicResult_t& r : found) {
    if (r.state == CUBLAS_STATUS_SUCCESS && r.workspaceSize <= kTunedGemmWorkspaceBytes &&
        Matches(r.algo, *e)) {
      p->algo = r.algo;
      return p;
    }
  }
  DestroyLtDescriptors(&p->d);
  return nullptr;
}

}  // namespace

void ExplainTunedGemm(const TunedGemmShape& s, char* buf, size_t len) {
  const std::string gpu = DeviceName(s.device);
  std::string out = "gpu '" + gpu + "', cuBLASLt " + std::to_string(cublasLtGetVersion());
  const TableEntry* e = EntryFor(gpu, s);
  if (e == nullptr) {
    out += ", no entry for this GPU, version, dtype, n, k and rows";
  } else {
    out += ", entry {";
    for (int i = 0; i < kNumAlgoConfigFields; ++i) {
      out += (i > 0 ? ", " : "") + std::to_string(e->config[i]);
    }
    out += "}";
  }
  cublasLtHandle_t handle = nullptr;
  LtDescriptors d;
  std::vector<cublasLtMatmulHeuristicResult_t> found;
  cublasStatus_t st = cublasLtCreate(&handle);
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = AskLtHeuristic(handle, s.bf16, s.m, s.n, s.k, kTunedGemmWorkspaceBytes, &d, &found);
  }
  out += ", heuristic status " + std::to_string(static_cast<int>(st)) + ", " +
         std::to_string(found.size()) + " candidates:";
  for (const cublasLtMatmulHeuristicResult_t& r : found) out += " " + DescribeAlgoConfig(r.algo);
  DestroyLtDescriptors(&d);
  if (handle != nullptr) cublasLtDestroy(handle);
  std::snprintf(buf, len, "%s", out.c_str());
}

const void* FindTunedGemmPlan(const TunedGemmShape& shape) {
  using Key = std::tuple<int, bool, int64_t, int64_t, int64_t>;
  // Never destroyed: plans are used until exit, and their handles must not be torn down after
  // the CUDA runtime has been.
  static std::mutex* mu = new std::mutex;
  static auto* plans = new std::map<Key, std::unique_ptr<Plan>>;
  static auto* handles = new std::map<int, cublasLtHandle_t>;
  static auto* names = new std::map<int, std::string>;
  std::lock_guard<std::mutex> lock(*mu);
  auto name = names->find(shape.device);
  if (name == names->end()) name = names->emplace(shape.device, DeviceName(shape.device)).first;
  // Products without an entry (another GPU, shape or dtype; fewer rows) leave nothing behind.
  const TableEntry* e = EntryFor(name->second, shape);
  if (e == nullptr) return nullptr;
  const Key key{shape.device, shape.bf16, shape.m, shape.n, shape.k};
  auto it = plans->find(key);
  if (it == plans->end()) {
    cublasLtHandle_t& handle = (*handles)[shape.device];
    if (handle == nullptr && cublasLtCreate(&handle) != CUBLAS_STATUS_SUCCESS) handle = nullptr;
    it = plans->emplace(key, handle == nullptr ? nullptr : MakePlan(e, shape, handle)).first;
  }
  return it->second.get();
}

int LaunchTunedGemm(const void* plan, const void* x, const void* w, void* y, void* workspace,
                    cudaStream_t stream) {
  const Plan& p = *static_cast<const Plan*>(plan);
  const float one = 1.0f, zero = 0.0f;
  return static_cast<int>(cublasLtMatmul(p.handle, p.d.op, &one, w, p.d.a, x, p.d.b, &zero, y,
                                         p.d.c, y, p.d.c, &p.algo, workspace,
                                         kTunedGemmWorkspaceBytes, stream));
}

}  // namespace kvsweep::engine
