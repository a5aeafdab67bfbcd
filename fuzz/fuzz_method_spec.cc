// The method-spec parser ("quant:bits=4,group=64", ...): any text gives a spec or a one-line
// error, and a parsed spec resolves or fails cleanly at any head_dim.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/method_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<kvsweep::MethodSpec> spec = kvsweep::ParseMethodSpec(text);
  if (spec.ok()) {
    for (int head_dim : {1, 8, 64, 128}) {
      (void)kvsweep::ResolveMethodSpec(*spec, head_dim);
      (void)kvsweep::CanonicalMethodSpec(text, head_dim);
    }
  }
  return 0;
}
