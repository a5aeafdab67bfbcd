// Checks every tokenizer against tests/fixtures/tokenizer_ids.json, produced by Hugging Face on
// the accelerator machine (tools/reference/make_reference.py; the lead commits it). If that file
// is missing every case FAILS with "fixture missing" (ctest label `fixture`; `ctest -LE fixture`
// leaves them out). An entry named below but absent from the file is SKIPPED only if it is one
// the next reference run is expected to add (kPendingEntries); every entry present must match.
// KVSWEEP_TOKENIZER_FIXTURE overrides the file's path.
//
// Format: {"<name>": {"files": [paths relative to the assets],
//   "lambada": {"n_docs", "sha256", "doc_hashes": [8 hex per doc], "head": [ids]},
//   "wikitext": {"count", "sha256", "chunk_hashes": [16 hex per 4096 ids], "head": [300 ids]}}}
// LAMBADA line per doc: ids(context) "|" ids(text) "\n" with context = text minus its last
// space-separated word; sha256 over all lines; head = ids(first doc's text). WikiText: ids of
// the whole file, sha256 over ",".join(ids).
#include <algorithm>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
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

// Entries the fixture does not hold yet but the next reference run writes: "llama2-hf"
// (transformers' LlamaTokenizer on the bare tokenizer.model) and "gpt2-vocab-merges" (the
// previous run's GPT2Tokenizer path was broken). Their tests skip until then.
constexpr const char* kPendingEntries[] = {"llama2-hf", "gpt2-vocab-merges"};

std::string FixturePath() {
  if (const char* env = std::getenv("KVSWEEP_TOKENIZER_FIXTURE"); env != nullptr && *env != '\0') {
    return env;
  }
  return KVSWEEP_TOKENIZER_FIXTURE_DEFAULT;
}

absl::StatusOr<nlohmann::json> ReadFixture() {
  const std::string path = FixturePath();
  if (!PathExists(path)) {
    return absl::NotFoundError(absl::StrCat(
        "fixture missing: ", path, " (the Hugging Face reference ids; see docs/tokenizers.md)"));
  }
  return ReadJsonFile(path);
}

std::string Window(const std::vector<int32_t>& v, size_t at, size_t radius = 8) {
  const size_t lo = at > radius ? at - radius : 0, hi = std::min(v.size(), at + radius);
  return absl::StrCat("[", lo, "..", hi,
                      ") = ", JoinIds(std::vector<int32_t>(v.begin() + lo, v.begin() + hi)));
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
    auto j = ReadFixture();
    ASSERT_TRUE(j.ok()) << j.status();
    if (!j->contains(GetParam())) {
      const bool pending = std::any_of(std::begin(kPendingEntries), std::end(kPendingEntries),
                                       [&](const char* n) { return GetParam() == n; });
      if (pending) {
        GTEST_SKIP() << "fixture " << FixturePath() << " has no entry \"" << GetParam()
                     << "\" yet: the next reference run (tools/reference/make_reference.py) "
                        "writes it";
      }
      GTEST_FAIL() << "fixture " << FixturePath() << " has no entry \"" << GetParam() << "\"";
    }
    entry_ = (*j)[GetParam()];
    ASSERT_TRUE(entry_.contains("files") && entry_["files"].is_array() && !entry_["files"].empty())
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
  const std::vector<int32_t> head(ids.begin(),
                                  ids.begin() + std::min(ids.size(), want_head.size()));
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
                    << JoinIds(std::vector<int32_t>(
                           chunk.begin(), chunk.begin() + std::min<size_t>(chunk.size(), 40)));
    }
  }
  EXPECT_EQ(bad_chunks, 0);
  EXPECT_EQ(static_cast<int64_t>(ids.size()), want["count"].get<int64_t>());
  EXPECT_EQ(Sha256Hex(JoinIds(ids)), want["sha256"].get<std::string>());
}

INSTANTIATE_TEST_SUITE_P(Hf, TokenizerFixtureTest,
                         ::testing::Values("gpt2-vocab-merges", "ref-gpt2", "ref-llama",
                                           "llama2-hf", "mistral"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) c = (c == '-') ? '_' : c;
                           return n;
                         });

// "llama2-spm" holds the sentencepiece library's ids for the Llama 2 tokenizer.model. Our .model
// tokenizer follows transformers instead (merges ranked by piece id, Metaspace prepend_scheme
// "first"; docs/tokenizers.md), so it must differ from those ids exactly where the two differ:
// equal on every LAMBADA document without a run of spaces or a leading space, different on
// 537 documents that have one (the count ref-llama's tokenizer.json gives), and on WikiText the
// same number of ids with every differing 4096-id chunk holding a whitespace-run piece.
TEST(SentencePieceLibraryFixture, Llama2ModelDiffersOnlyAtSpaceRuns) {
  auto j = ReadFixture();
  ASSERT_TRUE(j.ok()) << j.status();
  ASSERT_TRUE(j->contains("llama2-spm")) << "fixture " << FixturePath() << " has no llama2-spm";
  const nlohmann::json& entry = (*j)["llama2-spm"];
  auto t = LoadTokenizer(Asset(entry["files"][0].get<std::string>()));
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ((*t)->kind(), "hf-sentencepiece-bpe");

  const auto texts = LambadaTexts();
  const auto& doc_hashes = entry["lambada"]["doc_hashes"];
  ASSERT_EQ(doc_hashes.size(), texts.size());
  int differing = 0, equal_with_space_runs = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const bool space_run = absl::StrContains(texts[i], "  ") || absl::StartsWith(texts[i], " ");
    const std::string line = LambadaLine(**t, texts[i]);
    if (Sha256Hex(line).substr(0, 8) == doc_hashes[i].get<std::string>()) {
      equal_with_space_runs += space_run;
      continue;
    }
    ++differing;
    if (!space_run) {
      ADD_FAILURE() << "LAMBADA doc " << i << " differs from libsentencepiece without a run of "
                    << "spaces. Our ids (context|text): " << line << "text: " << texts[i];
    }
  }
  std::cerr << "[ compare ] llama2 .model vs libsentencepiece: " << differing << " of "
            << texts.size() << " LAMBADA docs differ, all at runs of spaces; "
            << equal_with_space_runs << " docs with space runs agree\n";
  EXPECT_EQ(differing, 537);

  auto wiki = ReadFile(WikiPath());
  ASSERT_TRUE(wiki.ok()) << wiki.status();
  auto ids_or = (*t)->Encode(*wiki);
  ASSERT_TRUE(ids_or.ok()) << ids_or.status();
  const std::vector<int32_t>& ids = *ids_or;
  const auto& want = entry["wikitext"];
  ASSERT_EQ(static_cast<int64_t>(ids.size()), want["count"].get<int64_t>());
  // "▁" and "▁" x 2..16: the 16 pieces of score -1e9.
  const std::set<int32_t> space_runs = {259, 268,  308,  418,  462,  539,  632,   795,
                                        965, 1669, 1678, 3986, 4706, 9651, 18884, 29871};
  const auto& chunks = want["chunk_hashes"];
  ASSERT_EQ(chunks.size(), (ids.size() + kChunk - 1) / kChunk);
  int differing_chunks = 0;
  for (size_t k = 0; k < chunks.size(); ++k) {
    const size_t lo = k * kChunk, hi = std::min(ids.size(), lo + kChunk);
    const std::vector<int32_t> chunk(ids.begin() + lo, ids.begin() + hi);
    if (Sha256Hex(JoinIds(chunk)).substr(0, 16) == chunks[k].get<std::string>()) continue;
    ++differing_chunks;
    EXPECT_TRUE(std::any_of(chunk.begin(), chunk.end(),
                            [&](int32_t id) { return space_runs.count(id) > 0; }))
        << "wikitext chunk " << k
        << " differs from libsentencepiece without a whitespace-run piece";
  }
  std::cerr << "[ compare ] llama2 .model vs libsentencepiece: " << differing_chunks << " of "
            << chunks.size() << " wikitext chunks differ\n";
  EXPECT_EQ(differing_chunks, 3);  // the 9 ids that differ (docs/tokenizers.md) fall in 3 chunks
  // The file starts with " \n": "▁" for the HF conversion, "▁▁" (dummy prefix) for SentencePiece.
  EXPECT_EQ(ids[0], 29871);
  EXPECT_EQ(want["head"][0].get<int32_t>(), 259);
}

}  // namespace
}  // namespace kvsweep::engine
