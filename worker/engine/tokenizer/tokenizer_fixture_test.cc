// Checks every tokenizer against tests/fixtures/tokenizer_ids.json, produced by Hugging Face on
// the accelerator machine (the lead commits it). Until that file exists every case FAILS with
// "fixture missing" (ctest label `fixture`; `ctest -LE fixture` leaves them out).
// KVSWEEP_TOKENIZER_FIXTURE overrides the file's path.
//
// Format: {"<name>": {"files": [paths relative to the assets],
//   "lambada": {"n_docs", "sha256", "doc_hashes": [8 hex per doc], "head": [ids]},
//   "wikitext": {"count", "sha256", "chunk_hashes": [16 hex per 4096 ids], "head": [300 ids]}}}
// LAMBADA line per doc: ids(context) "|" ids(text) "\n" with context = text minus its last
// space-separated word; sha256 over all lines; head = ids(first doc's text). WikiText: ids of
// the whole file, sha256 over ",".join(ids).
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/hash.h"
#include "common/json_util.h"
#include "gtest/gtest.h"
#include "worker/engine/tokenizer/tokenizer.h"
#include "worker/engine/tokenizer/tokenizer_test_util.h"

namespace kvsweep::engine {
namespace {

using ::kvsweep::engine::testing::Asset;
using ::kvsweep::engine::testing::JoinIds;
using ::kvsweep::engine::testing::LambadaLine;
using ::kvsweep::engine::testing::LambadaTexts;
using ::kvsweep::engine::testing::WikiPath;

constexpr size_t kChunk = 4096;

std::string FixturePath() {
  if (const char* env = std::getenv("KVSWEEP_TOKENIZER_FIXTURE"); env != nullptr && *env != '\0') {
    return env;
  }
  return KVSWEEP_TOKENIZER_FIXTURE_DEFAULT;
}

std::string Window(const std::vector<int32_t>& v, size_t at, size_t radius = 8) {
  const size_t lo = at > radius ? at - radius : 0, hi = std::min(v.size(), at + radius);
  return absl::StrCat("[", lo, "..", hi, ") = ",
                      JoinIds(std::vector<int32_t>(v.begin() + lo, v.begin() + hi)));
}

// Where two id lists first differ, with the ids around it.
std::string FirstDiff(const std::vector<int32_t>& got, const std::vector<int32_t>& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  return absl::StrCat("first difference at id ", i, " (sizes ", got.size(), " vs ", want.size(),
                      "): ours ", Window(got, i), "; HF ", Window(want, i));
}

class TokenizerFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string path = FixturePath();
    if (!PathExists(path)) {
      GTEST_FAIL() << "fixture missing: " << path
                   << " (the Hugging Face reference ids; see docs/tokenizers.md)";
    }
    auto j = ReadJsonFile(path);
    ASSERT_TRUE(j.ok()) << j.status();
    ASSERT_TRUE(j->contains(GetParam())) << "fixture " << path << " has no entry \"" << GetParam()
                                         << "\"";
    entry_ = (*j)[GetParam()];
    ASSERT_TRUE(entry_.contains("files") && entry_["files"].is_array() &&
                !entry_["files"].empty())
        << "fixture entry " << GetParam() << " has no files";
    const std::string first = Asset(entry_["files"][0].get<std::string>());
    auto t = LoadTokenizer(first);
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = std::move(t).value();
  }
  nlohmann::json entry_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_P(TokenizerFixtureTest, Lambada) {
  const auto& want = entry_["lambada"];
  const auto texts = LambadaTexts();
  ASSERT_EQ(static_cast<int64_t>(texts.size()), want["n_docs"].get<int64_t>());
  ASSERT_FALSE(texts.empty());

  auto head = tokenizer_->Encode(texts[0]);
  ASSERT_TRUE(head.ok()) << head.status();
  const auto want_head = want["head"].get<std::vector<int32_t>>();
  EXPECT_EQ(*head, want_head) << "doc 0: " << FirstDiff(*head, want_head);

  const auto& doc_hashes = want["doc_hashes"];
  ASSERT_EQ(doc_hashes.size(), texts.size());
  Sha256 all;
  int bad_docs = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string line = LambadaLine(*tokenizer_, texts[i]);
    all.Update(line);
    if (Sha256Hex(line).substr(0, 8) != doc_hashes[i].get<std::string>()) {
      if (++bad_docs <= 3) {
        ADD_FAILURE() << GetParam() << ": LAMBADA doc " << i << " differs from HF. Our ids "
                      << "(context|text): " << line << "text: " << texts[i];
      }
    }
  }
  EXPECT_EQ(bad_docs, 0) << GetParam() << ": LAMBADA docs differing from HF";
  EXPECT_EQ(all.HexDigest(), want["sha256"].get<std::string>());
}

TEST_P(TokenizerFixtureTest, Wikitext) {
  const auto& want = entry_["wikitext"];
  auto text = ReadFile(WikiPath());
  ASSERT_TRUE(text.ok()) << text.status();
  auto ids_or = tokenizer_->Encode(*text);
  ASSERT_TRUE(ids_or.ok()) << ids_or.status();
  const std::vector<int32_t>& ids = *ids_or;

  const auto want_head = want["head"].get<std::vector<int32_t>>();
  const std::vector<int32_t> head(ids.begin(), ids.begin() + std::min(ids.size(), want_head.size()));
  EXPECT_EQ(head, want_head) << FirstDiff(head, want_head);

  const auto& chunks = want["chunk_hashes"];
  int bad_chunks = 0;
  for (size_t k = 0; k * kChunk < ids.size() || k < chunks.size(); ++k) {
    const size_t lo = std::min(ids.size(), k * kChunk), hi = std::min(ids.size(), lo + kChunk);
    const std::vector<int32_t> chunk(ids.begin() + lo, ids.begin() + hi);
    const std::string got = Sha256Hex(JoinIds(chunk)).substr(0, 16);
    const std::string exp = k < chunks.size() ? chunks[k].get<std::string>() : "(none)";
    if (got != exp && ++bad_chunks <= 3) {
      ADD_FAILURE() << GetParam() << ": wikitext chunk " << k << " (ids " << lo << ".." << hi
                    << ") differs from HF; our ids there start: "
                    << JoinIds(std::vector<int32_t>(chunk.begin(),
                                                    chunk.begin() + std::min<size_t>(chunk.size(), 40)));
    }
  }
  EXPECT_EQ(bad_chunks, 0);
  EXPECT_EQ(static_cast<int64_t>(ids.size()), want["count"].get<int64_t>());
  EXPECT_EQ(Sha256Hex(JoinIds(ids)), want["sha256"].get<std::string>());
}

INSTANTIATE_TEST_SUITE_P(Hf, TokenizerFixtureTest,
                         ::testing::Values("gpt2-vocab-merges", "ref-gpt2", "ref-llama",
                                           "llama2-spm", "mistral"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) c = (c == '-') ? '_' : c;
                           return n;
                         });

}  // namespace
}  // namespace kvsweep::engine
