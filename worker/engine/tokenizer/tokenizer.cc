#include "worker/engine/tokenizer/tokenizer.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/hash.h"
#include "common/input_files.h"
#include "common/status_macros.h"

namespace kvsweep::engine {

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path) {
  // Which files: the resolver job identity hashes (common/input_files.h); this only dispatches.
  KV_ASSIGN_OR_RETURN(TokenizerFiles files, ResolveTokenizerFiles(path));
  std::unique_ptr<Tokenizer> t;
  switch (files.format) {
    case TokenizerFormat::kHfJson: {
      KV_ASSIGN_OR_RETURN(t, NewHfJsonTokenizer(files.main, files.config));
      break;
    }
    case TokenizerFormat::kGpt2VocabMerges: {
      KV_ASSIGN_OR_RETURN(t, NewGpt2Tokenizer(files.main, files.merges));
      break;
    }
    case TokenizerFormat::kSentencePiece: {
      KV_ASSIGN_OR_RETURN(t, NewSentencePieceTokenizer(files.main));
      break;
    }
    case TokenizerFormat::kLlama2c: {
      KV_ASSIGN_OR_RETURN(t, NewLlama2cTokenizer(files.main));
      break;
    }
  }
  // A loader that read a file the identity did not hash would let that file change results
  // without changing job ids: refuse it.
  if (t->files() != files.All()) {
    return absl::InternalError(
        absl::StrCat("tokenizer ", path, " read [", absl::StrJoin(t->files(), ", "),
                     "] but its identity covers [", absl::StrJoin(files.All(), ", "), "]"));
  }
  return t;
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
