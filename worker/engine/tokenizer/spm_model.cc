#include "worker/engine/tokenizer/spm_model.h"

#include <limits>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "sentencepiece/sentencepiece_model.pb.h"
#include "worker/engine/tokenizer/text_util.h"

namespace kvsweep::engine::tokenizer_internal {
namespace {

absl::Status Bad(absl::string_view reason) { return absl::InvalidArgumentError(reason); }

// A model's int32 id, declared int64 in the .proto so that an out-of-range value is seen.
absl::Status Int32Id(const char* name, int64_t v, int32_t* out) {
  if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
    return Bad(absl::StrCat("trainer_spec.", name, " is out of the int32 range: ", v));
  }
  *out = static_cast<int32_t>(v);
  return absl::OkStatus();
}

absl::Status ParseModel(absl::string_view bytes, SpmModel* m) {
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return Bad(absl::StrCat("the file is ", bytes.size(), " bytes, over protobuf's 2 GiB"));
  }
  kvsweep::spm::ModelProto proto;
  if (!proto.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return Bad(absl::StrCat("protobuf cannot parse its ", bytes.size(),
                            " bytes as a ModelProto (truncated, or not a .model file)"));
  }
  if (proto.pieces_size() == 0) return Bad("no pieces (field 1)");
  // spm_train always writes one (after the pieces). Without it the model type would default to
  // UNIGRAM; a file cut between pieces looks like that, so call it what it most likely is.
  if (!proto.has_trainer_spec()) {
    return Bad(absl::StrCat("no trainer_spec (field 2) after ", proto.pieces_size(),
                            " pieces (truncated file?)"));
  }
  m->pieces.reserve(proto.pieces_size());
  for (int i = 0; i < proto.pieces_size(); ++i) {
    const kvsweep::spm::ModelProto::SentencePiece& p = proto.pieces(i);
    const std::string name = absl::StrCat("pieces[", i, "]");
    if (p.piece().empty()) return Bad(absl::StrCat(name, " has an empty piece string"));
    if (!IsValidUtf8(p.piece())) return Bad(absl::StrCat(name, ".piece is not valid UTF-8"));
    if (p.type() < 1 || p.type() > 6) {
      return Bad(absl::StrCat(name, ".type is ", p.type(), " (valid: 1..6)"));
    }
    m->pieces.push_back({p.piece(), p.score(), static_cast<SpmPieceType>(p.type())});
  }
  const kvsweep::spm::TrainerSpec& t = proto.trainer_spec();
  m->model_type = t.model_type();
  m->byte_fallback = t.byte_fallback();
  m->treat_whitespace_as_suffix = t.treat_whitespace_as_suffix();
  KV_RETURN_IF_ERROR(Int32Id("unk_id", t.unk_id(), &m->unk_id));
  KV_RETURN_IF_ERROR(Int32Id("bos_id", t.bos_id(), &m->bos_id));
  KV_RETURN_IF_ERROR(Int32Id("eos_id", t.eos_id(), &m->eos_id));
  KV_RETURN_IF_ERROR(Int32Id("pad_id", t.pad_id(), &m->pad_id));
  const kvsweep::spm::NormalizerSpec& n = proto.normalizer_spec();
  m->normalizer_name = n.name();
  m->precompiled_charsmap_size = n.precompiled_charsmap().size();
  m->add_dummy_prefix = n.add_dummy_prefix();
  m->remove_extra_whitespaces = n.remove_extra_whitespaces();
  m->escape_whitespaces = n.escape_whitespaces();

  absl::flat_hash_map<absl::string_view, size_t> seen;
  seen.reserve(m->pieces.size());
  for (size_t i = 0; i < m->pieces.size(); ++i) {
    auto [it, inserted] = seen.emplace(m->pieces[i].piece, i);
    if (!inserted) {
      return Bad(absl::StrCat("pieces[", it->second, "] and pieces[", i, "] are both \"",
                              m->pieces[i].piece, "\""));
    }
  }
  const auto count = static_cast<int64_t>(m->pieces.size());
  for (const auto& [name, id] : {std::pair<const char*, int32_t>{"unk_id", m->unk_id},
                                 {"bos_id", m->bos_id},
                                 {"eos_id", m->eos_id},
                                 {"pad_id", m->pad_id}}) {
    if (id < -1 || id >= count) {
      return Bad(absl::StrCat("trainer_spec.", name, " = ", id, " is not -1 or a piece id (", count,
                              " pieces)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string SpmModelTypeName(int64_t model_type) {
  switch (model_type) {
    case static_cast<int64_t>(SpmModelType::kUnigram):
      return "UNIGRAM";
    case static_cast<int64_t>(SpmModelType::kBpe):
      return "BPE";
    case static_cast<int64_t>(SpmModelType::kWord):
      return "WORD";
    case static_cast<int64_t>(SpmModelType::kChar):
      return "CHAR";
    default:
      return absl::StrCat("unknown (", model_type, ")");
  }
}

absl::StatusOr<SpmModel> ParseSpmModel(absl::string_view bytes, absl::string_view what) {
  SpmModel m;
  if (absl::Status st = ParseModel(bytes, &m); !st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not a valid SentencePiece model: ", st.message()));
  }
  return m;
}

std::vector<std::pair<std::string, std::string>> HfMergesFromPieces(
    const std::vector<std::string>& pieces) {
  absl::flat_hash_map<absl::string_view, int32_t> ids;
  ids.reserve(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) ids.emplace(pieces[i], static_cast<int32_t>(i));

  // transformers' generate_merges sorts all candidate (left, right, id of left+right) by
  // (id, len(left), len(right)). Ids are distinct and, within one piece, len(left) fixes the
  // split, so walking pieces in id order and split points left to right gives that order.
  std::vector<std::pair<std::string, std::string>> merges;
  for (const std::string& p : pieces) {
    if (p.empty()) continue;
    const absl::string_view v = p;
    for (size_t k = Utf8SeqLen(static_cast<unsigned char>(p[0])); k < p.size();
         k += Utf8SeqLen(static_cast<unsigned char>(p[k]))) {
      const absl::string_view left = v.substr(0, k), right = v.substr(k);
      if (ids.contains(left) && ids.contains(right)) {
        merges.emplace_back(std::string(left), std::string(right));
      }
    }
  }
  return merges;
}

}  // namespace kvsweep::engine::tokenizer_internal
