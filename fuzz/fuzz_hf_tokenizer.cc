// The Hugging Face tokenizer.json loader: any file gives a tokenizer or a one-line error, and a
// loaded tokenizer encodes and decodes a fixed text without crashing.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "worker/engine/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/kvsweep_fuzz_tok_" + std::to_string(::getpid()) + ".json";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  auto tok = kvsweep::engine::NewHfJsonTokenizer(path, /*config_path=*/"");
  if (tok.ok()) {
    auto ids = (*tok)->Encode("Hello world, 12 345 caf\xc3\xa9 \xe2\x80\x94 <s> done.");
    if (ids.ok()) (void)(*tok)->Decode(*ids);
  }
  return 0;
}
