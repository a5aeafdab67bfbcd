#include "worker/engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/hash.h"
#include "common/status_macros.h"

namespace kvsweep::engine {
namespace {

std::string Basename(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGpt2Beside(const std::string& vocab,
                                                          const std::string& merges) {
  for (const std::string& p : {vocab, merges}) {
    if (!PathExists(p)) {
      return absl::NotFoundError(absl::StrCat("GPT-2 tokenizer needs vocab.json and merges.txt side by side: ",
                                              p, " not found"));
    }
  }
  return NewGpt2Tokenizer(vocab, merges);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadFromDirectory(const std::string& dir) {
  const std::string tj = JoinPath(dir, "tokenizer.json");
  if (PathExists(tj)) return NewHfJsonTokenizer(tj);
  const std::string vocab = JoinPath(dir, "vocab.json"), merges = JoinPath(dir, "merges.txt");
  if (PathExists(vocab) || PathExists(merges)) return LoadGpt2Beside(vocab, merges);
  const std::string spm = JoinPath(dir, "tokenizer.model");
  if (PathExists(spm)) return NewSentencePieceTokenizer(spm);
  const std::string tbin = JoinPath(dir, "tokenizer.bin");
  if (PathExists(tbin)) return NewLlama2cTokenizer(tbin);
  std::vector<std::string> tok_bins;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (absl::StartsWith(name, "tok") && absl::EndsWith(name, ".bin")) {
      tok_bins.push_back(e.path().string());
    }
  }
  std::sort(tok_bins.begin(), tok_bins.end());
  if (tok_bins.size() == 1) return NewLlama2cTokenizer(tok_bins[0]);
  if (tok_bins.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": several llama2.c tokenizers (", absl::StrJoin(tok_bins, ", "), "); name one"));
  }
  return absl::NotFoundError(absl::StrCat(
      dir, ": no tokenizer found (looked for tokenizer.json, vocab.json + merges.txt, "
           "tokenizer.model, tokenizer.bin, tok*.bin)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path) {
  if (!PathExists(path)) {
    return absl::NotFoundError(absl::StrCat("tokenizer path not found: ", path));
  }
  if (IsDirectory(path)) return LoadFromDirectory(path);

  const std::string name = Basename(path), dir = Dirname(path);
  if (name == "tokenizer.json") return NewHfJsonTokenizer(path);
  if (absl::EndsWith(name, "vocab.json")) {
    return LoadGpt2Beside(path, JoinPath(dir, "merges.txt"));
  }
  if (absl::EndsWith(name, "merges.txt")) {
    return LoadGpt2Beside(JoinPath(dir, "vocab.json"), path);
  }
  if (absl::EndsWith(name, ".model")) return NewSentencePieceTokenizer(path);
  if (absl::EndsWith(name, ".bin")) return NewLlama2cTokenizer(path);

  // Unknown name: look at the content. A tokenizer.json has a "model" key near the top level;
  // anything else JSON is taken as a GPT-2 vocab.json.
  KV_ASSIGN_OR_RETURN(std::string head, ReadFile(path));
  if (head.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
  const size_t first = head.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && head[first] == '{') {
    if (head.find("\"model\"") != std::string::npos) return NewHfJsonTokenizer(path);
    return LoadGpt2Beside(path, JoinPath(dir, "merges.txt"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      path, ": cannot tell the tokenizer format (expected tokenizer.json, vocab.json, merges.txt, "
            "*.model or tok*.bin)"));
}

absl::StatusOr<std::string> TokenizerFingerprint(const Tokenizer& t) {
  Sha256 sha;
  for (const std::string& f : t.files()) {
    KV_ASSIGN_OR_RETURN(std::string bytes, ReadFile(f));
    sha.Update(absl::StrCat(bytes.size(), "\n"));
    sha.Update(bytes);
  }
  return sha.HexDigest();
}

}  // namespace kvsweep::engine
