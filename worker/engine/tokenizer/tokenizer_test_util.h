// Test-only helpers shared by tokenizer_test.cc and tokenizer_fixture_test.cc: where the assets
// are, the evaluation texts, and the id serializations of tests/fixtures/tokenizer_ids.json.
#ifndef KVSWEEP_WORKER_ENGINE_TOKENIZER_TOKENIZER_TEST_UTIL_H_
#define KVSWEEP_WORKER_ENGINE_TOKENIZER_TOKENIZER_TEST_UTIL_H_

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/hash.h"
#include "common/json_util.h"
#include "gtest/gtest.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace kvsweep::engine::testing {

// $KVSWEEP_ASSETS, else the CMake cache value compiled in, else ../shared/assets.
inline std::string AssetsDir() {
  if (const char* env = std::getenv("KVSWEEP_ASSETS"); env != nullptr && *env != '\0') return env;
#ifdef KVSWEEP_ASSETS_DEFAULT
  return KVSWEEP_ASSETS_DEFAULT;
#else
  return "../shared/assets";
#endif
}
inline std::string Asset(const std::string& rel) { return JoinPath(AssetsDir(), rel); }

inline std::string LambadaPath() { return Asset("data/lambada_openai/lambada_test.jsonl"); }
inline std::string WikiPath() { return Asset("data/wikitext-2/wiki.test.raw"); }

// The "text" of every non-empty line of the LAMBADA jsonl.
inline std::vector<std::string> LambadaTexts() {
  std::vector<std::string> out;
  auto data = ReadFile(LambadaPath());
  if (!data.ok()) {
    ADD_FAILURE() << data.status();
    return out;
  }
  for (absl::string_view line : absl::StrSplit(*data, '\n')) {
    if (line.empty()) continue;
    auto j = ParseJson(line, "lambada line");
    if (!j.ok()) {
      ADD_FAILURE() << j.status();
      continue;
    }
    out.push_back((*j)["text"].get<std::string>());
  }
  return out;
}

inline std::string JoinIds(const std::vector<int32_t>& ids) { return absl::StrJoin(ids, ","); }

// lm-eval's LAMBADA split, as in the fixture: context = " ".join(text.split(" ")[:-1]).
inline std::string LambadaContext(const std::string& text) {
  std::vector<absl::string_view> words = absl::StrSplit(text, ' ');
  words.pop_back();
  return absl::StrJoin(words, " ");
}

// The fixture's per-document line: ids(context) "|" ids(text) "\n".
inline std::string LambadaLine(const Tokenizer& t, const std::string& text) {
  auto a = t.Encode(LambadaContext(text));
  auto b = t.Encode(text);
  EXPECT_TRUE(a.ok() && b.ok());
  if (!a.ok() || !b.ok()) return "";
  return JoinIds(*a) + "|" + JoinIds(*b) + "\n";
}

}  // namespace kvsweep::engine::testing

#endif  // KVSWEEP_WORKER_ENGINE_TOKENIZER_TOKENIZER_TEST_UTIL_H_
