// Lying and truncated checkpoints are one-line errors, never crashes.
#include "worker/engine/safetensors.h"

#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/file_util.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/model.h"

namespace kvsweep::engine {
namespace {

namespace fs = std::filesystem;

std::string Temp(const std::string& name) {
  std::string d = ::testing::TempDir() + "/kvsweep_st_" + std::to_string(::getpid());
  fs::create_directories(d);
  return d + "/" + name;
}

// header JSON + `data_bytes` bytes of data.
std::string Make(const std::string& header, size_t data_bytes, uint64_t claimed_len = 0) {
  uint64_t n = claimed_len ? claimed_len : header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  out += header;
  out += std::string(data_bytes, '\x01');
  return out;
}

void ExpectBad(const std::string& bytes, const std::string& fragment) {
  const std::string path = Temp("bad.safetensors");
  ASSERT_TRUE(WriteFileAtomic(path, bytes).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok()) << fragment;
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
  EXPECT_NE(f.status().message().find(fragment), std::string::npos) << f.status().message();
  EXPECT_EQ(f.status().message().find('\n'), std::string::npos);
}

TEST(SafetensorsTest, ValidFileParses) {
  const std::string path = Temp("ok.safetensors");
  ASSERT_TRUE(
      WriteFileAtomic(
          path,
          Make(
              R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"format":"pt"}})",
              16))
          .ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_NE((*f)->Find("a"), nullptr);
  EXPECT_EQ((*f)->Find("a")->numel(), 4);
}

TEST(SafetensorsTest, LyingOrTruncatedFilesAreRejected) {
  ExpectBad("abc", "shorter than the 8-byte header length");
  ExpectBad(Make("{}", 0, 1000), "runs past the end of the file");
  ExpectBad(Make("{}", 0, 1ull << 40), "exceeds 100 MB");
  ExpectBad(Make("{not json", 0), "invalid JSON");
  ExpectBad(Make("[1,2]", 0), "not a JSON object");
  ExpectBad(Make(R"({"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4), "unknown dtype");
  ExpectBad(Make(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", 4),
            "fall outside the data block");
  ExpectBad(Make(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "need 12");
  ExpectBad(Make(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "bad dimension");
  ExpectBad(Make(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4), "fall outside");
  ExpectBad(Make(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "lacks dtype/shape/data_offsets");
  ExpectBad(
      Make(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
          12),
      "overlap");
  ExpectBad(
      Make(
          R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}})",
          4),
      "overflows");
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  auto f = SafetensorsFile::Open("/nonexistent/x.safetensors");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
}

// A copy of a tiny checkpoint folder that a test may then damage.
std::string CopyTiny(const std::string& name, const std::string& as) {
  const std::string src = std::string(KVSWEEP_FIXTURES) + "/tiny_models/" + name;
  const std::string dst = Temp(as);
  fs::remove_all(dst);
  fs::copy(src, dst, fs::copy_options::recursive);
  return dst;
}

void ExpectLoadFails(const std::string& dir, absl::StatusCode code, const std::string& fragment) {
  auto m = Model::Load(dir, ModelOptions{});
  ASSERT_FALSE(m.ok()) << dir;
  EXPECT_EQ(m.status().code(), code) << m.status();
  EXPECT_NE(m.status().message().find(fragment), std::string::npos) << m.status().message();
  EXPECT_EQ(m.status().message().find('\n'), std::string::npos);
}

TEST(CheckpointTest, BadCheckpointsAreOneLineErrors) {
  // Config disagrees with the weights' shapes.
  std::string d = CopyTiny("tiny-qwen2", "wrong_hidden");
  auto cfg = ReadFile(d + "/config.json");
  std::string c = *cfg;
  c.replace(c.find("\"hidden_size\": 64"), 17, "\"hidden_size\": 128");
  ASSERT_TRUE(WriteFileAtomic(d + "/config.json", c).ok());
  ExpectLoadFails(d, absl::StatusCode::kInvalidArgument, "but the config implies");
  // Config vocab disagrees with the embedding.
  d = CopyTiny("tiny-qwen2", "wrong_vocab");
  c = *ReadFile(d + "/config.json");
  c.replace(c.find("\"vocab_size\": 96"), 16, "\"vocab_size\": 97");
  ASSERT_TRUE(WriteFileAtomic(d + "/config.json", c).ok());
  ExpectLoadFails(d, absl::StatusCode::kInvalidArgument, "model.embed_tokens.weight");
  // Sharded checkpoint with a shard missing.
  d = CopyTiny("tiny-llama", "missing_shard");
  fs::remove(d + "/model-00003-of-00004.safetensors");
  ExpectLoadFails(d, absl::StatusCode::kNotFound, "model-00003-of-00004.safetensors");
  // Index pointing a tensor at the wrong shard.
  d = CopyTiny("tiny-llama", "wrong_index");
  c = *ReadFile(d + "/model.safetensors.index.json");
  c.replace(c.find("\"lm_head.weight\": \"model-00004"), 30, "\"lm_head.weight\": \"model-00001");
  ASSERT_TRUE(WriteFileAtomic(d + "/model.safetensors.index.json", c).ok());
  ExpectLoadFails(d, absl::StatusCode::kInvalidArgument, "which does not contain it");
  // Untied model without lm_head: drop it from the index and its shard.
  d = CopyTiny("tiny-mistral", "no_weights");
  fs::remove(d + "/model.safetensors");
  ExpectLoadFails(d, absl::StatusCode::kNotFound, "no model.safetensors");
  // Truncated weights file.
  d = CopyTiny("tiny-gpt2", "truncated");
  std::string w = *ReadFile(d + "/model.safetensors");
  ASSERT_TRUE(WriteFileAtomic(d + "/model.safetensors", w.substr(0, w.size() / 2)).ok());
  ExpectLoadFails(d, absl::StatusCode::kInvalidArgument, "fall outside the data block");
  // Unknown architecture.
  d = CopyTiny("tiny-gpt2", "unknown_arch");
  c = *ReadFile(d + "/config.json");
  c.replace(c.find("\"model_type\": \"gpt2\""), 20, "\"model_type\": \"bert\"");
  ASSERT_TRUE(WriteFileAtomic(d + "/config.json", c).ok());
  ExpectLoadFails(d, absl::StatusCode::kInvalidArgument, "unknown architecture 'bert'");
  // Truncated llama2.c file.
  const std::string bin = Temp("short.bin");
  std::string s = *ReadFile(kvsweep::AssetsDir() + "/models/stories260K/stories260K.bin");
  ASSERT_TRUE(WriteFileAtomic(bin, s.substr(0, s.size() - 100)).ok());
  ExpectLoadFails(bin, absl::StatusCode::kInvalidArgument, "header implies");
}

}  // namespace
}  // namespace kvsweep::engine
