#include "common/input_files.h"

#include <dirent.h>

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/json_util.h"

namespace kvsweep {
namespace {

absl::Status Allowed(const PathPolicy* policy, const std::string& path) {
  return policy == nullptr ? absl::OkStatus() : policy->Check(path);
}

// Shard file names of an index's weight_map, sorted and distinct.
absl::StatusOr<std::vector<std::string>> IndexShards(const std::string& index_path) {
  absl::StatusOr<nlohmann::json> idx = ReadJsonFile(index_path);
  if (!idx.ok()) return idx.status();
  if (!idx->is_object() || !idx->contains("weight_map") || !(*idx)["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": no \"weight_map\" object"));
  }
  std::set<std::string> shards;
  for (auto it = (*idx)["weight_map"].begin(); it != (*idx)["weight_map"].end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map['", it.key(), "'] is not a file name"));
    }
    const std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": shard name '", shard, "' is not a plain file name"));
    }
    shards.insert(shard);
  }
  if (shards.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": \"weight_map\" is empty"));
  }
  return std::vector<std::string>(shards.begin(), shards.end());
}

absl::StatusOr<TokenizerFiles> HfJson(const std::string& json_path, const PathPolicy* policy) {
  TokenizerFiles t;
  t.format = TokenizerFormat::kHfJson;
  t.main = json_path;
  // tokenizer_config.json beside the file, when it exists, names BOS/EOS (BOS is the prefix
  // token of every scored sequence): the loader reads it from here (NewHfJsonTokenizer's
  // config_path), never by a path of its own.
  const std::string config = JoinPath(DirName(json_path), "tokenizer_config.json");
  if (PathExists(config)) {
    if (absl::Status a = Allowed(policy, config); !a.ok()) return a;
    t.config = config;
  }
  return t;
}

absl::StatusOr<TokenizerFiles> Gpt2(const std::string& vocab, const std::string& merges,
                                    const PathPolicy* policy) {
  for (const std::string& p : {vocab, merges}) {
    if (!PathExists(p)) {
      return absl::NotFoundError(absl::StrCat(
          "GPT-2 tokenizer needs vocab.json and merges.txt side by side: ", p, " not found"));
    }
    if (absl::Status a = Allowed(policy, p); !a.ok()) return a;
  }
  TokenizerFiles t;
  t.format = TokenizerFormat::kGpt2VocabMerges;
  t.main = vocab;
  t.merges = merges;
  return t;
}

TokenizerFiles Single(TokenizerFormat format, const std::string& path) {
  TokenizerFiles t;
  t.format = format;
  t.main = path;
  return t;
}

absl::StatusOr<TokenizerFiles> FromDirectory(const std::string& dir, const PathPolicy* policy) {
  const std::string tj = JoinPath(dir, "tokenizer.json");
  if (PathExists(tj)) {
    if (absl::Status a = Allowed(policy, tj); !a.ok()) return a;
    return HfJson(tj, policy);
  }
  const std::string vocab = JoinPath(dir, "vocab.json"), merges = JoinPath(dir, "merges.txt");
  if (PathExists(vocab) || PathExists(merges)) return Gpt2(vocab, merges, policy);
  for (const auto& [name, format] : {std::pair{"tokenizer.model", TokenizerFormat::kSentencePiece},
                                     std::pair{"tokenizer.bin", TokenizerFormat::kLlama2c}}) {
    const std::string p = JoinPath(dir, name);
    if (PathExists(p)) {
      if (absl::Status a = Allowed(policy, p); !a.ok()) return a;
      return Single(format, p);
    }
  }
  std::vector<std::string> tok_bins;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (absl::StartsWith(name, "tok") && absl::EndsWith(name, ".bin")) {
        tok_bins.push_back(JoinPath(dir, name));
      }
    }
    ::closedir(d);
  }
  std::sort(tok_bins.begin(), tok_bins.end());
  if (tok_bins.size() == 1) {
    if (absl::Status a = Allowed(policy, tok_bins[0]); !a.ok()) return a;
    return Single(TokenizerFormat::kLlama2c, tok_bins[0]);
  }
  if (tok_bins.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": several llama2.c tokenizers (",
                                                   absl::StrJoin(tok_bins, ", "), "); name one"));
  }
  return absl::NotFoundError(absl::StrCat(
      "no tokenizer in '", dir,
      "' (looked for tokenizer.json, vocab.json + merges.txt, tokenizer.model, tokenizer.bin, "
      "tok*.bin); pass --tokenizer"));
}

}  // namespace

std::vector<std::string> ModelFiles::All() const {
  // config.json, then the index and the weights sorted together by path: the order model
  // fingerprints have always used, so model_sha256 (and job ids) of existing checkpoints stay.
  std::vector<std::string> rest = weights;
  if (!weights_index.empty()) rest.push_back(weights_index);
  std::sort(rest.begin(), rest.end());
  std::vector<std::string> out;
  if (!config.empty()) out.push_back(config);
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

absl::StatusOr<ModelFiles> ResolveModelFiles(const std::string& model_path,
                                             const PathPolicy* policy) {
  if (absl::Status a = Allowed(policy, model_path); !a.ok()) return a;
  if (!PathExists(model_path)) {
    return absl::NotFoundError(absl::StrCat("model path '", model_path, "' does not exist"));
  }
  ModelFiles m;
  if (!IsDirectory(model_path)) {
    m.weights.push_back(model_path);  // llama2.c: header and weights in one file
    return m;
  }
  m.config = JoinPath(model_path, "config.json");
  if (!PathExists(m.config)) {
    return absl::NotFoundError(
        absl::StrCat("model directory '", model_path, "' has no config.json"));
  }
  if (absl::Status a = Allowed(policy, m.config); !a.ok()) return a;
  const std::string index = JoinPath(model_path, "model.safetensors.index.json");
  const std::string single = JoinPath(model_path, "model.safetensors");
  if (PathExists(index)) {
    if (absl::Status a = Allowed(policy, index); !a.ok()) return a;
    absl::StatusOr<std::vector<std::string>> shards = IndexShards(index);
    if (!shards.ok()) return shards.status();
    m.weights_index = index;
    for (const std::string& s : *shards) {
      const std::string p = JoinPath(model_path, s);
      if (!PathExists(p)) {
        return absl::NotFoundError(absl::StrCat(index, ": shard '", p, "' does not exist"));
      }
      if (absl::Status a = Allowed(policy, p); !a.ok()) return a;
      m.weights.push_back(p);
    }
  } else if (PathExists(single)) {
    if (absl::Status a = Allowed(policy, single); !a.ok()) return a;
    m.weights.push_back(single);
  } else if (PathExists(JoinPath(model_path, "pytorch_model.bin"))) {
    return absl::UnimplementedError(absl::StrCat(
        model_path,
        ": only safetensors weights are supported (found pytorch_model.bin); convert with "
        "transformers' save_pretrained(safe_serialization=True)"));
  } else {
    return absl::NotFoundError(
        absl::StrCat(model_path, ": no model.safetensors or model.safetensors.index.json"));
  }
  return m;
}

std::vector<std::string> TokenizerFiles::All() const {
  std::vector<std::string> out{main};
  if (!merges.empty()) out.push_back(merges);
  if (!config.empty()) out.push_back(config);
  return out;
}

absl::StatusOr<TokenizerFiles> ResolveTokenizerFiles(const std::string& path,
                                                     const PathPolicy* policy) {
  if (absl::Status a = Allowed(policy, path); !a.ok()) return a;
  if (!PathExists(path)) {
    return absl::NotFoundError(absl::StrCat("tokenizer path not found: ", path));
  }
  if (IsDirectory(path)) return FromDirectory(path, policy);

  const std::string name = BaseName(path), dir = DirName(path);
  if (name == "tokenizer.json") return HfJson(path, policy);
  if (absl::EndsWith(name, "vocab.json")) return Gpt2(path, JoinPath(dir, "merges.txt"), policy);
  if (absl::EndsWith(name, "merges.txt")) return Gpt2(JoinPath(dir, "vocab.json"), path, policy);
  if (absl::EndsWith(name, ".model")) return Single(TokenizerFormat::kSentencePiece, path);
  if (absl::EndsWith(name, ".bin")) return Single(TokenizerFormat::kLlama2c, path);

  // Unknown name: look at the content. A tokenizer.json has a "model" key near the top level;
  // anything else JSON is taken as a GPT-2 vocab.json.
  absl::StatusOr<std::string> head = ReadFile(path);
  if (!head.ok()) return head.status();
  if (head->empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
  const size_t first = head->find_first_not_of(" \t\r\n");
  if (first != std::string::npos && (*head)[first] == '{') {
    if (head->find("\"model\"") != std::string::npos) return HfJson(path, policy);
    return Gpt2(path, JoinPath(dir, "merges.txt"), policy);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      path,
      ": cannot tell the tokenizer format (expected tokenizer.json, vocab.json, merges.txt, "
      "*.model or tok*.bin)"));
}

}  // namespace kvsweep
