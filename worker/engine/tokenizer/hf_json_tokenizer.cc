// Hugging Face tokenizer.json (BPE model only) -> the HF pipeline of hf_pipeline.h.
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/engine/tokenizer/bpe.h"
#include "worker/engine/tokenizer/hf_pipeline.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace kvsweep::engine {
namespace {

using json = nlohmann::json;
using tokenizer_internal::AddedToken;
using tokenizer_internal::BpeModel;
using tokenizer_internal::BpeOptions;
using tokenizer_internal::Decoder;
using tokenizer_internal::Normalizer;
using tokenizer_internal::PipelineSpec;
using tokenizer_internal::PrependScheme;
using tokenizer_internal::PreTokenizer;
using tokenizer_internal::SplitBehavior;
using tokenizer_internal::UnicodeForm;

// Reads ctx.what-prefixed errors: every message names the file.
struct Ctx {
  std::string what;
  absl::Status Invalid(absl::string_view msg) const {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", msg));
  }
  absl::Status Unimplemented(absl::string_view msg) const {
    return absl::UnimplementedError(absl::StrCat(what, ": ", msg));
  }
};

std::string TypeOf(const json& j) {
  if (j.is_object() && j.contains("type") && j["type"].is_string()) return j["type"];
  return "";
}

bool GetBool(const json& j, const char* key, bool def) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return def;
  return j[key].is_boolean() ? j[key].get<bool>() : def;
}

absl::StatusOr<std::string> GetString(const Ctx& ctx, const json& j, const char* key,
                                      absl::string_view where) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_string()) {
    return ctx.Invalid(absl::StrCat(where, ": missing string \"", key, "\""));
  }
  return j[key].get<std::string>();
}

// {"String": "x"} or {"Regex": "x"} -> (pattern, is_regex).
absl::StatusOr<std::pair<std::string, bool>> GetPattern(const Ctx& ctx, const json& j,
                                                        absl::string_view where) {
  if (j.is_object() && j.contains("pattern") && j["pattern"].is_object()) {
    const json& p = j["pattern"];
    if (p.contains("String") && p["String"].is_string()) {
      return std::make_pair(p["String"].get<std::string>(), false);
    }
    if (p.contains("Regex") && p["Regex"].is_string()) {
      return std::make_pair(p["Regex"].get<std::string>(), true);
    }
  }
  return ctx.Invalid(absl::StrCat(where, ": missing pattern {\"String\"|\"Regex\": ...}"));
}

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Ctx& ctx, const json& j) {
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array()) {
      return ctx.Invalid("normalizer Sequence without \"normalizers\" array");
    }
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const json& s : j["normalizers"]) {
      KV_ASSIGN_OR_RETURN(auto n, ParseNormalizer(ctx, s));
      steps.push_back(std::move(n));
    }
    return tokenizer_internal::NewSequenceNormalizer(std::move(steps));
  }
  if (type == "Prepend") {
    KV_ASSIGN_OR_RETURN(std::string p, GetString(ctx, j, "prepend", "normalizer Prepend"));
    return tokenizer_internal::NewPrependNormalizer(std::move(p));
  }
  if (type == "Replace") {
    KV_ASSIGN_OR_RETURN(auto pat, GetPattern(ctx, j, "normalizer Replace"));
    KV_ASSIGN_OR_RETURN(std::string content, GetString(ctx, j, "content", "normalizer Replace"));
    return tokenizer_internal::NewReplaceNormalizer(pat.first, pat.second, std::move(content));
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    const UnicodeForm f = type == "NFC"    ? UnicodeForm::kNfc
                          : type == "NFD"  ? UnicodeForm::kNfd
                          : type == "NFKC" ? UnicodeForm::kNfkc
                                           : UnicodeForm::kNfkd;
    auto n = tokenizer_internal::NewUnicodeNormalizer(f);
    if (!n.ok())
      return absl::Status(n.status().code(), absl::StrCat(ctx.what, ": ", n.status().message()));
    return n;
  }
  if (type == "Lowercase") return tokenizer_internal::NewLowercaseNormalizer();
  if (type == "Strip") {
    return tokenizer_internal::NewStripNormalizer(GetBool(j, "strip_left", true),
                                                  GetBool(j, "strip_right", true));
  }
  return ctx.Unimplemented(absl::StrCat("normalizer \"", type.empty() ? j.dump() : type,
                                        "\" is not supported (supported: Sequence, Prepend, "
                                        "Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip)"));
}

absl::StatusOr<SplitBehavior> ParseBehavior(const Ctx& ctx, const json& j) {
  const std::string b =
      j.contains("behavior") && j["behavior"].is_string() ? j["behavior"].get<std::string>() : "";
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return ctx.Invalid(absl::StrCat("pre_tokenizer Split: unknown behavior \"", b, "\""));
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Ctx& ctx, const json& j) {
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array()) {
      return ctx.Invalid("pre_tokenizer Sequence without \"pretokenizers\" array");
    }
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const json& s : j["pretokenizers"]) {
      KV_ASSIGN_OR_RETURN(auto p, ParsePreTokenizer(ctx, s));
      steps.push_back(std::move(p));
    }
    return tokenizer_internal::NewSequencePreTokenizer(std::move(steps));
  }
  if (type == "ByteLevel") {
    return tokenizer_internal::NewByteLevelPreTokenizer(GetBool(j, "add_prefix_space", true),
                                                        GetBool(j, "use_regex", true));
  }
  if (type == "Metaspace") {
    KV_ASSIGN_OR_RETURN(std::string rep,
                        GetString(ctx, j, "replacement", "pre_tokenizer Metaspace"));
    PrependScheme scheme =
        GetBool(j, "add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      const std::string s = j["prepend_scheme"];
      if (s == "always") {
        scheme = PrependScheme::kAlways;
      } else if (s == "first") {
        scheme = PrependScheme::kFirst;
      } else if (s == "never") {
        scheme = PrependScheme::kNever;
      } else {
        return ctx.Invalid(
            absl::StrCat("pre_tokenizer Metaspace: unknown prepend_scheme \"", s, "\""));
      }
    }
    return tokenizer_internal::NewMetaspacePreTokenizer(std::move(rep), scheme,
                                                        GetBool(j, "split", true));
  }
  if (type == "Split") {
    KV_ASSIGN_OR_RETURN(auto pat, GetPattern(ctx, j, "pre_tokenizer Split"));
    KV_ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(ctx, j));
    auto p = tokenizer_internal::NewSplitPreTokenizer(pat.first, pat.second, behavior,
                                                      GetBool(j, "invert", false));
    if (!p.ok()) return ctx.Invalid(p.status().message());
    return p;
  }
  if (type == "Digits") {
    return tokenizer_internal::NewDigitsPreTokenizer(GetBool(j, "individual_digits", false));
  }
  if (type == "WhitespaceSplit") return tokenizer_internal::NewWhitespaceSplitPreTokenizer();
  if (type == "Whitespace") return tokenizer_internal::NewWhitespacePreTokenizer();
  return ctx.Unimplemented(
      absl::StrCat("pre_tokenizer \"", type.empty() ? j.dump() : type,
                   "\" is not supported (supported: Sequence, ByteLevel, Metaspace, Split, Digits, "
                   "WhitespaceSplit, Whitespace)"));
}

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Ctx& ctx, const json& j) {
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    if (!j.contains("decoders") || !j["decoders"].is_array()) {
      return ctx.Invalid("decoder Sequence without \"decoders\" array");
    }
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const json& s : j["decoders"]) {
      KV_ASSIGN_OR_RETURN(auto d, ParseDecoder(ctx, s));
      steps.push_back(std::move(d));
    }
    return tokenizer_internal::NewSequenceDecoder(std::move(steps));
  }
  if (type == "ByteLevel") return tokenizer_internal::NewByteLevelDecoder();
  if (type == "Metaspace") {
    KV_ASSIGN_OR_RETURN(std::string rep, GetString(ctx, j, "replacement", "decoder Metaspace"));
    bool strip_first = GetBool(j, "add_prefix_space", true);
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      strip_first = j["prepend_scheme"].get<std::string>() != "never";
    }
    return tokenizer_internal::NewMetaspaceDecoder(std::move(rep), strip_first);
  }
  if (type == "Replace") {
    KV_ASSIGN_OR_RETURN(auto pat, GetPattern(ctx, j, "decoder Replace"));
    if (pat.second) return ctx.Unimplemented("decoder Replace with a Regex pattern");
    KV_ASSIGN_OR_RETURN(std::string content, GetString(ctx, j, "content", "decoder Replace"));
    return tokenizer_internal::NewReplaceDecoder(pat.first, std::move(content));
  }
  if (type == "ByteFallback") return tokenizer_internal::NewByteFallbackDecoder();
  if (type == "Fuse") return tokenizer_internal::NewFuseDecoder();
  if (type == "Strip") {
    KV_ASSIGN_OR_RETURN(std::string content, GetString(ctx, j, "content", "decoder Strip"));
    const int start = j.value("start", 0), stop = j.value("stop", 0);
    return tokenizer_internal::NewStripDecoder(std::move(content), start, stop);
  }
  return ctx.Unimplemented(absl::StrCat(
      "decoder \"", type.empty() ? j.dump() : type,
      "\" is not supported (supported: Sequence, ByteLevel, Metaspace, Replace, ByteFallback, "
      "Fuse, Strip)"));
}

bool UsesByteLevel(const json& j) {
  if (!j.is_object()) return false;
  if (TypeOf(j) == "ByteLevel") return true;
  for (const char* key : {"pretokenizers", "decoders"}) {
    if (j.contains(key) && j[key].is_array()) {
      for (const json& s : j[key]) {
        if (UsesByteLevel(s)) return true;
      }
    }
  }
  return false;
}

// Token string of a tokenizer_config.json entry: "x" or {"content": "x", ...}.
std::optional<std::string> ConfigToken(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key)) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> NewHfJsonTokenizer(const std::string& json_path,
                                                              const std::string& config_path) {
  const Ctx ctx{json_path};
  KV_ASSIGN_OR_RETURN(std::string text, ReadFile(json_path));
  if (text.empty()) return ctx.Invalid("empty file");
  KV_ASSIGN_OR_RETURN(json root, ParseJson(text, json_path));
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object()) {
    return ctx.Invalid("not a tokenizer.json (no \"model\" object)");
  }
  const json& model = root["model"];
  std::string model_type = TypeOf(model);
  if (model_type.empty() && model.contains("merges")) model_type = "BPE";  // pre-0.9 files
  if (model_type != "BPE") {
    return ctx.Unimplemented(
        absl::StrCat("model type \"", model_type, "\" is not supported (only BPE is)"));
  }
  if (model.contains("dropout") && model["dropout"].is_number() &&
      model["dropout"].get<double>() > 0.0) {
    return ctx.Unimplemented("BPE dropout (randomized encoding) is not supported");
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return ctx.Invalid("model has no \"vocab\" object");
  }
  std::vector<std::pair<std::string, int32_t>> vocab;
  vocab.reserve(model["vocab"].size());
  for (const auto& [token, id] : model["vocab"].items()) {
    if (!id.is_number_integer()) {
      return ctx.Invalid(absl::StrCat("model.vocab entry ", vocab.size() + 1,
                                      " (in key order) has no integer id"));
    }
    vocab.emplace_back(token, id.get<int32_t>());
  }
  std::vector<std::pair<std::string, std::string>> merges;
  if (model.contains("merges") && !model["merges"].is_null()) {
    if (!model["merges"].is_array()) return ctx.Invalid("\"merges\" is not an array");
    merges.reserve(model["merges"].size());
    size_t n = 0;
    for (const json& m : model["merges"]) {
      ++n;
      if (m.is_string()) {
        // Legacy form "a b": exactly one space (HF rejects anything else).
        const std::string s = m;
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          return ctx.Invalid(absl::StrCat("merge #", n, " \"", s, "\" is not \"a b\""));
        }
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        return ctx.Invalid(absl::StrCat("merge #", n, " is neither \"a b\" nor [\"a\", \"b\"]"));
      }
    }
  }
  BpeOptions opts;
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    opts.unk_token = model["unk_token"].get<std::string>();
  }
  opts.fuse_unk = GetBool(model, "fuse_unk", false);
  opts.byte_fallback = GetBool(model, "byte_fallback", false);
  opts.ignore_merges = GetBool(model, "ignore_merges", false);
  if (model.contains("continuing_subword_prefix") &&
      model["continuing_subword_prefix"].is_string()) {
    opts.continuing_subword_prefix = model["continuing_subword_prefix"];
  }
  if (model.contains("end_of_word_suffix") && model["end_of_word_suffix"].is_string()) {
    opts.end_of_word_suffix = model["end_of_word_suffix"];
  }

  PipelineSpec spec;
  spec.files.push_back(json_path);
  KV_ASSIGN_OR_RETURN(spec.model,
                      BpeModel::Create(std::move(vocab), merges, std::move(opts), json_path));
  if (root.contains("normalizer") && !root["normalizer"].is_null()) {
    KV_ASSIGN_OR_RETURN(spec.normalizer, ParseNormalizer(ctx, root["normalizer"]));
  }
  if (root.contains("pre_tokenizer") && !root["pre_tokenizer"].is_null()) {
    KV_ASSIGN_OR_RETURN(spec.pre_tokenizer, ParsePreTokenizer(ctx, root["pre_tokenizer"]));
  }
  if (root.contains("decoder") && !root["decoder"].is_null()) {
    KV_ASSIGN_OR_RETURN(spec.decoder, ParseDecoder(ctx, root["decoder"]));
  }
  spec.kind = (UsesByteLevel(root.value("pre_tokenizer", json())) ||
               UsesByteLevel(root.value("decoder", json())))
                  ? "hf-json-bytelevel-bpe"
                  : "hf-json-sp-bpe";

  if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
    for (const json& a : root["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string()) {
        return ctx.Invalid(absl::StrCat("added token without id/content: ", a.dump()));
      }
      AddedToken t;
      t.id = a["id"].get<int32_t>();
      t.content = a["content"].get<std::string>();
      t.special = GetBool(a, "special", false);
      t.single_word = GetBool(a, "single_word", false);
      t.lstrip = GetBool(a, "lstrip", false);
      t.rstrip = GetBool(a, "rstrip", false);
      t.normalized = GetBool(a, "normalized", !t.special);
      spec.added_tokens.push_back(std::move(t));
    }
  }
  auto id_of = [&spec](const std::string& token) -> std::optional<int32_t> {
    for (const AddedToken& t : spec.added_tokens) {
      if (t.content == token) return t.id;
    }
    return spec.model->TokenToId(token);
  };

  // BOS/EOS: the resolver's tokenizer_config.json, else guessed from well-known tokens.
  bool from_config = false;
  if (!config_path.empty()) {
    KV_ASSIGN_OR_RETURN(json cfg, ReadJsonFile(config_path));
    spec.files.push_back(config_path);
    from_config = true;
    if (auto b = ConfigToken(cfg, "bos_token")) spec.bos_id = id_of(*b);
    if (auto e = ConfigToken(cfg, "eos_token")) spec.eos_id = id_of(*e);
  }
  if (!from_config) {
    for (const char* b : {"<s>", "<|begin_of_text|>", "<|endoftext|>"}) {
      if (!spec.bos_id) spec.bos_id = id_of(b);
    }
    for (const char* e : {"</s>", "<|end_of_text|>", "<|endoftext|>"}) {
      if (!spec.eos_id) spec.eos_id = id_of(e);
    }
  }
  return tokenizer_internal::NewPipelineTokenizer(std::move(spec));
}

}  // namespace kvsweep::engine
