// The safetensors header reader: any file gives a validated tensor table or a one-line error;
// every tensor it accepts lies inside the file.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "worker/engine/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path =
      "/tmp/kvsweep_fuzz_st_" + std::to_string(::getpid()) + ".safetensors";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  auto st = kvsweep::engine::SafetensorsFile::Open(path);
  if (st.ok()) {
    for (const auto& [name, t] : (*st)->tensors()) {
      // Touch the first and last byte: out-of-file views crash under the sanitizers.
      if (t.nbytes > 0) {
        volatile uint8_t sum = t.data[0] + t.data[t.nbytes - 1];
        (void)sum;
      }
    }
  }
  return 0;
}
