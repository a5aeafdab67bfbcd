// The method parsers: a single spec ("quant:bits=4,group=64") and a whole method (K and V
// apart, per-layer overrides: "k=...;v=...;layers=0-1:..."). Any text gives a method or a
// one-line error; a parsed method resolves or fails cleanly at any shape, and a canonical string
// re-parses to itself.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "spec/method_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<kvsweep::MethodSpec> spec = kvsweep::ParseMethodSpec(text);
  if (spec.ok()) {
    for (int head_dim : {1, 8, 64, 128}) {
      (void)kvsweep::ResolveMethodSpec(*spec, head_dim);
      (void)kvsweep::CanonicalMethodSpec(text, head_dim);
    }
  }
  absl::StatusOr<kvsweep::KvMethod> method = kvsweep::ParseKvMethod(text);
  if (method.ok()) {
    for (int head_dim : {8, 64}) {
      for (int layers : {1, 6}) {
        absl::StatusOr<kvsweep::KvMethod> r = kvsweep::ResolveKvMethod(*method, head_dim, layers);
        if (!r.ok()) continue;
        const std::string canonical = r->ToString();
        absl::StatusOr<std::string> again = kvsweep::CanonicalKvMethod(canonical, head_dim, layers);
        if (!again.ok() || *again != canonical) std::abort();
      }
    }
  }
  return 0;
}
