#include "spec/job_spec.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvsweep {
namespace {

JobRequest Req() {
  JobRequest r;
  r.model_path = AssetsDir() + "/models/ref-llama";
  r.task = "lambada_openai";
  r.data_path = AssetsDir() + "/data/lambada_openai/lambada_test.jsonl";
  r.limit = 50;
  return r;
}

TEST(JobSpecTest, ResolvesDefaultsAndFingerprints) {
  auto s = ResolveJob(Req());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->model_name, "ref-llama");
  EXPECT_EQ(s->window, 2048);
  EXPECT_EQ(s->kv_heads, 2);
  EXPECT_EQ(s->method, "none");
  EXPECT_EQ(s->model_sha256.size(), 64u);
  EXPECT_EQ(s->tokenizer_sha256.size(), 64u);
  // The published sha256 of lambada_test.jsonl (assets SHA256SUMS).
  EXPECT_EQ(s->data_sha256, "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226");
  EXPECT_FALSE(s->calibration.has_value());
}

TEST(JobSpecTest, LabelTextIsPrintableUtf8) {
  using ::testing::HasSubstr;
  for (const char* ok : {"", "llama-7b", "quant@0.25[k:bits=4]", "gr\u00f6\u00dfe \u2713",
                         "\U0001F600", "\u05e9\u05dc\u05d5\u05dd"}) {
    EXPECT_TRUE(CheckLabelText(ok).ok()) << ok;
    EXPECT_EQ(EscapeLabelText(ok), ok);
  }
  struct Bad {
    std::string text, fragment, escaped;
  };
  for (const Bad& b : std::vector<Bad>{
           {std::string("a\0b", 3), "control character U+0000", "a\\u0000b"},
           {"a\nb", "control character U+000A", "a\\u000Ab"},
           {"\x1b[31m", "control character U+001B", "\\u001B[31m"},
           {"a\x7f", "control character U+007F", "a\\u007F"},
           {"a\u0085", "control character U+0085", "a\\u0085"},
           {"a\u009f", "control character U+009F", "a\\u009F"},
           {"\u061c", "bidi control U+061C", "\\u061C"},
           {"x\u200e", "bidi control U+200E", "x\\u200E"},
           {"x\u200f", "bidi control U+200F", "x\\u200F"},
           {"x\u202a", "bidi control U+202A", "x\\u202A"},
           {"<script>\u202e", "bidi control U+202E", "<script>\\u202E"},
           {"x\u2066", "bidi control U+2066", "x\\u2066"},
           {"x\u2069", "bidi control U+2069", "x\\u2069"},
           {"a\xff", "not valid UTF-8 (byte 0xFF at offset 1)", "a\\xFF"},
           {"\xc0\x80", "not valid UTF-8 (byte 0xC0 at offset 0)", "\\xC0\\x80"},  // overlong
           {"\xed\xa0\x80", "not valid UTF-8 (byte 0xED at offset 0)",
            "\\xED\\xA0\\x80"},                                                        // surrogate
           {"ab\xe2\x80", "not valid UTF-8 (byte 0xE2 at offset 2)", "ab\\xE2\\x80"},  // cut short
       }) {
    absl::Status s = CheckLabelText(b.text);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.escaped;
    EXPECT_THAT(std::string(s.message()), HasSubstr(b.fragment)) << b.escaped;
    EXPECT_EQ(EscapeLabelText(b.text), b.escaped);
  }
  // Bidi controls just outside the ranges are ordinary characters.
  EXPECT_TRUE(CheckLabelText("\u2029\u202f\u2065\u206a\u200d").ok());

  JobRequest r = Req();
  r.model_name = std::string("llama\0x", 7);
  auto j = ResolveJob(r);
  EXPECT_EQ(j.status().code(), absl::StatusCode::kInvalidArgument) << j.status();
  EXPECT_EQ(j.status().message(),
            "model_name: contains the control character U+0000; use printable text");
}

TEST(JobSpecTest, IdentityIgnoresNamesAndPathsButNotNumbersChangers) {
  auto a = ResolveJob(Req());
  JobRequest r = Req();
  r.model_name = "renamed";
  auto b = ResolveJob(r);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->JobId(), b->JobId());
  r.method = "quant:bits=4";
  auto c = ResolveJob(r);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->JobId(), c->JobId());
  r.method = "quant:group=64,bits=4";  // same method, other spelling
  EXPECT_EQ(ResolveJob(r)->JobId(), c->JobId());
  r = Req();
  r.limit = 51;
  EXPECT_NE(ResolveJob(r)->JobId(), a->JobId());
  r = Req();
  r.kv_heads = 2;  // native spelled out == default
  EXPECT_EQ(ResolveJob(r)->JobId(), a->JobId());
}

TEST(JobSpecTest, JsonRoundTrip) {
  JobRequest r = Req();
  r.method = "rank:r=16";
  auto a = ResolveJob(r);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(a->calibration.has_value());
  auto b = JobSpec::FromJson(a->ToJson());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->JobId(), a->JobId());
  EXPECT_EQ(b->ToJson(), a->ToJson());
  nlohmann::json tampered = a->ToJson();
  tampered["method"] = "none";
  EXPECT_FALSE(JobSpec::FromJson(tampered).ok());
  EXPECT_FALSE(JobSpec::FromJson(nlohmann::json::object()).ok());
}

// `wikitext` is lm-eval's per-document task; the name once meant the stream convention (now
// `wikitext_stream`). Its identity carries the definition, so that no result of the other
// definition is reused for it; other tasks' identities have no such field (their ids unchanged).
TEST(JobSpecTest, WikitextIdentityCarriesItsDefinition) {
  JobRequest r = Req();
  r.task = "wikitext";
  r.data_path = AssetsDir() + "/data/wikitext-2/wiki.test.raw";
  r.limit = 0;
  auto doc = ResolveJob(r);
  ASSERT_TRUE(doc.ok()) << doc.status();
  EXPECT_EQ(doc->task_definition, "lm-eval-documents");
  EXPECT_EQ(doc->IdentityJson()["task"]["definition"], "lm-eval-documents");
  r.task = "wikitext_stream";
  auto stream = ResolveJob(r);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_FALSE(stream->IdentityJson()["task"].contains("definition"));
  EXPECT_FALSE(ResolveJob(Req())->IdentityJson()["task"].contains("definition"));
  // A spec of the earlier definition (no field) reads back as such, under its own id.
  nlohmann::json old = doc->ToJson();
  old["task"].erase("definition");
  old.erase("job_id");
  auto back = JobSpec::FromJson(old);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->task_definition, "");
  EXPECT_NE(back->JobId(), doc->JobId());
  auto round = JobSpec::FromJson(doc->ToJson());
  ASSERT_TRUE(round.ok()) << round.status();
  EXPECT_EQ(round->JobId(), doc->JobId());
}

void ExpectBad(JobRequest r, absl::StatusCode code, const std::string& fragment) {
  auto s = ResolveJob(r);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), code) << s.status();
  EXPECT_NE(s.status().message().find(fragment), std::string::npos) << s.status().message();
}

TEST(JobSpecTest, BadRequests) {
  JobRequest r = Req();
  r.task = "hellaswag";
  ExpectBad(r, absl::StatusCode::kInvalidArgument, "unknown task 'hellaswag'");
  r = Req();
  r.model_path = "/nonexistent";
  ExpectBad(r, absl::StatusCode::kNotFound, "/nonexistent");
  r = Req();
  r.data_path = "/nonexistent.jsonl";
  ExpectBad(r, absl::StatusCode::kNotFound, "/nonexistent.jsonl");
  r = Req();
  r.window = 4096;
  ExpectBad(r, absl::StatusCode::kInvalidArgument, "exceeds the model's max positions 2048");
  r = Req();
  r.task = "wikitext";
  r.window = 128;
  r.context = 129;
  ExpectBad(r, absl::StatusCode::kInvalidArgument, "context: 129 out of range [1, window=128]");
  r = Req();
  r.kv_heads = 3;
  ExpectBad(r, absl::StatusCode::kInvalidArgument, "kv_heads: 3 does not divide the model's 2");
  r = Req();
  r.kv_heads = 4;
  ExpectBad(r, absl::StatusCode::kInvalidArgument, "kv_heads: 4 does not divide");
  r = Req();
  r.limit = -1;
  ExpectBad(r, absl::StatusCode::kInvalidArgument, "limit: -1 is negative");
  r = Req();
  r.method = "rank:r=128";
  ExpectBad(r, absl::StatusCode::kInvalidArgument, "exceeds head_dim=64");
  r = Req();
  r.method = "rank:r=16";
  r.calibration_path = "/nonexistent/calib.txt";
  ExpectBad(r, absl::StatusCode::kNotFound, "needs a calibration text");
  r = Req();
  r.dtype = "int8";
  ExpectBad(r, absl::StatusCode::kInvalidArgument, "dtype");
  r = Req();
  r.model_path = AssetsDir() + "/models/stories260K/stories260K.bin";
  ExpectBad(r, absl::StatusCode::kInvalidArgument, "needs --tokenizer");
}

}  // namespace
}  // namespace kvsweep
