// The SentencePiece .model reader: any bytes give a model or a one-line error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "worker/engine/tokenizer/spm_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)kvsweep::engine::tokenizer_internal::ParseSpmModel(
      absl::string_view(reinterpret_cast<const char*>(data), size), "fuzz.model");
  return 0;
}
