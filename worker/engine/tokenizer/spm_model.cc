#include "worker/engine/tokenizer/spm_model.h"

#include <cstring>
#include <limits>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/tokenizer/text_util.h"

namespace kvsweep::engine::tokenizer_internal {
namespace {

// Protobuf wire types (encoding spec). 3 and 4 are the deprecated groups.
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kFixed32 = 5;
constexpr uint64_t kMaxFieldNumber = (uint64_t{1} << 29) - 1;

absl::Status Bad(absl::string_view reason) { return absl::InvalidArgumentError(reason); }

// Reads one message. Offsets in messages are absolute byte offsets in the file.
class WireReader {
 public:
  // `data` is a message that starts at byte `base` of the file.
  WireReader(absl::string_view data, size_t base) : data_(data), base_(base) {}

  bool done() const { return pos_ >= data_.size(); }
  size_t offset() const { return base_ + pos_; }

  absl::Status Varint(uint64_t* v) {
    const size_t start = offset();
    uint64_t r = 0;
    for (int i = 0;; ++i) {
      if (pos_ >= data_.size()) return Bad(absl::StrCat("truncated varint at byte ", start));
      const auto b = static_cast<uint8_t>(data_[pos_++]);
      // The 10th byte may hold bit 63 only, and must end the varint.
      if (i == 9 && b > 1) return Bad(absl::StrCat("varint over 64 bits at byte ", start));
      r |= static_cast<uint64_t>(b & 0x7F) << (7 * i);
      if ((b & 0x80) == 0) {
        *v = r;
        return absl::OkStatus();
      }
    }
  }

  // Reads a key; *start is where it began.
  absl::Status Tag(uint32_t* field, int* wire, size_t* start) {
    *start = offset();
    uint64_t key = 0;
    KV_RETURN_IF_ERROR(Varint(&key));
    const uint64_t f = key >> 3;
    *wire = static_cast<int>(key & 7);
    if (f == 0 || f > kMaxFieldNumber) {
      return Bad(absl::StrCat("invalid field number ", f, " at byte ", *start));
    }
    if (*wire == 3 || *wire == 4) {
      return Bad(absl::StrCat("field ", f, " at byte ", *start, " uses the group wire type ", *wire,
                              " (not supported)"));
    }
    if (*wire != kVarint && *wire != kFixed64 && *wire != kLengthDelimited && *wire != kFixed32) {
      return Bad(absl::StrCat("field ", f, " at byte ", *start, " has invalid wire type ", *wire));
    }
    *field = static_cast<uint32_t>(f);
    return absl::OkStatus();
  }

  absl::Status Fixed32(uint32_t* v) {
    if (data_.size() - pos_ < 4) {
      return Bad(absl::StrCat("truncated 4-byte value at byte ", offset()));
    }
    unsigned char b[4];
    std::memcpy(b, data_.data() + pos_, 4);
    *v = static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 |
         static_cast<uint32_t>(b[2]) << 16 | static_cast<uint32_t>(b[3]) << 24;
    pos_ += 4;
    return absl::OkStatus();
  }

  // A length-delimited value; *value_base = its offset in the file.
  absl::Status Bytes(absl::string_view* value, size_t* value_base) {
    const size_t start = offset();
    uint64_t n = 0;
    KV_RETURN_IF_ERROR(Varint(&n));
    const size_t left = data_.size() - pos_;
    if (n > left) {
      return Bad(absl::StrCat("length ", n, " at byte ", start, " runs past the end (", left,
                              " bytes left)"));
    }
    *value_base = offset();
    *value = data_.substr(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return absl::OkStatus();
  }

  absl::Status Skip(int wire) {
    switch (wire) {
      case kVarint: {
        uint64_t v = 0;
        return Varint(&v);
      }
      case kFixed64:
        if (data_.size() - pos_ < 8) {
          return Bad(absl::StrCat("truncated 8-byte value at byte ", offset()));
        }
        pos_ += 8;
        return absl::OkStatus();
      case kLengthDelimited: {
        absl::string_view v;
        size_t b = 0;
        return Bytes(&v, &b);
      }
      case kFixed32: {
        uint32_t v = 0;
        return Fixed32(&v);
      }
      default:
        return Bad(absl::StrCat("invalid wire type ", wire, " at byte ", offset()));
    }
  }

 private:
  absl::string_view data_;
  size_t base_;
  size_t pos_ = 0;
};

absl::Status ExpectWire(absl::string_view name, uint32_t field, int wire, int want, size_t at) {
  if (wire == want) return absl::OkStatus();
  return Bad(absl::StrCat(name, " (field ", field, ") at byte ", at, " has wire type ", wire,
                          ", expected ", want));
}

// An int32 field: varints carry negative values as 64-bit two's complement.
absl::Status ReadInt32(WireReader& r, absl::string_view name, size_t at, int32_t* out) {
  uint64_t v = 0;
  KV_RETURN_IF_ERROR(r.Varint(&v));
  const auto s = static_cast<int64_t>(v);
  if (s < std::numeric_limits<int32_t>::min() || s > std::numeric_limits<int32_t>::max()) {
    return Bad(absl::StrCat(name, " at byte ", at, " is out of the int32 range: ", s));
  }
  *out = static_cast<int32_t>(s);
  return absl::OkStatus();
}

absl::Status ReadBool(WireReader& r, bool* out) {
  uint64_t v = 0;
  KV_RETURN_IF_ERROR(r.Varint(&v));
  *out = v != 0;
  return absl::OkStatus();
}

absl::Status ParsePiece(absl::string_view msg, size_t base, size_t index, SpmPiece* piece) {
  const std::string name = absl::StrCat("pieces[", index, "]");
  WireReader r(msg, base);
  while (!r.done()) {
    uint32_t field = 0;
    int wire = 0;
    size_t at = 0;
    KV_RETURN_IF_ERROR(r.Tag(&field, &wire, &at));
    switch (field) {
      case 1: {  // piece
        KV_RETURN_IF_ERROR(
            ExpectWire(absl::StrCat(name, ".piece"), field, wire, kLengthDelimited, at));
        absl::string_view s;
        size_t b = 0;
        KV_RETURN_IF_ERROR(r.Bytes(&s, &b));
        if (!IsValidUtf8(s)) {
          return Bad(absl::StrCat(name, ".piece at byte ", b, " is not valid UTF-8"));
        }
        piece->piece = std::string(s);
        break;
      }
      case 2: {  // score
        KV_RETURN_IF_ERROR(ExpectWire(absl::StrCat(name, ".score"), field, wire, kFixed32, at));
        uint32_t bits = 0;
        KV_RETURN_IF_ERROR(r.Fixed32(&bits));
        std::memcpy(&piece->score, &bits, sizeof bits);
        break;
      }
      case 3: {  // type
        KV_RETURN_IF_ERROR(ExpectWire(absl::StrCat(name, ".type"), field, wire, kVarint, at));
        uint64_t t = 0;
        KV_RETURN_IF_ERROR(r.Varint(&t));
        if (t < 1 || t > 6) {
          return Bad(absl::StrCat(name, ".type at byte ", at, " is ", static_cast<int64_t>(t),
                                  " (valid: 1..6)"));
        }
        piece->type = static_cast<SpmPieceType>(t);
        break;
      }
      default:
        KV_RETURN_IF_ERROR(r.Skip(wire));
    }
  }
  if (piece->piece.empty()) {
    return Bad(absl::StrCat(name, " at byte ", base, " has an empty piece string"));
  }
  return absl::OkStatus();
}

absl::Status ParseTrainerSpec(absl::string_view msg, size_t base, SpmModel* m) {
  WireReader r(msg, base);
  while (!r.done()) {
    uint32_t field = 0;
    int wire = 0;
    size_t at = 0;
    KV_RETURN_IF_ERROR(r.Tag(&field, &wire, &at));
    auto expect_varint = [&](absl::string_view name) {
      return ExpectWire(absl::StrCat("trainer_spec.", name), field, wire, kVarint, at);
    };
    switch (field) {
      case 3: {
        KV_RETURN_IF_ERROR(expect_varint("model_type"));
        uint64_t v = 0;
        KV_RETURN_IF_ERROR(r.Varint(&v));
        m->model_type = static_cast<int64_t>(v);
        break;
      }
      case 24:
        KV_RETURN_IF_ERROR(expect_varint("treat_whitespace_as_suffix"));
        KV_RETURN_IF_ERROR(ReadBool(r, &m->treat_whitespace_as_suffix));
        break;
      case 35:
        KV_RETURN_IF_ERROR(expect_varint("byte_fallback"));
        KV_RETURN_IF_ERROR(ReadBool(r, &m->byte_fallback));
        break;
      case 40:
        KV_RETURN_IF_ERROR(expect_varint("unk_id"));
        KV_RETURN_IF_ERROR(ReadInt32(r, "trainer_spec.unk_id", at, &m->unk_id));
        break;
      case 41:
        KV_RETURN_IF_ERROR(expect_varint("bos_id"));
        KV_RETURN_IF_ERROR(ReadInt32(r, "trainer_spec.bos_id", at, &m->bos_id));
        break;
      case 42:
        KV_RETURN_IF_ERROR(expect_varint("eos_id"));
        KV_RETURN_IF_ERROR(ReadInt32(r, "trainer_spec.eos_id", at, &m->eos_id));
        break;
      case 43:
        KV_RETURN_IF_ERROR(expect_varint("pad_id"));
        KV_RETURN_IF_ERROR(ReadInt32(r, "trainer_spec.pad_id", at, &m->pad_id));
        break;
      default:
        KV_RETURN_IF_ERROR(r.Skip(wire));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseNormalizerSpec(absl::string_view msg, size_t base, SpmModel* m) {
  WireReader r(msg, base);
  while (!r.done()) {
    uint32_t field = 0;
    int wire = 0;
    size_t at = 0;
    KV_RETURN_IF_ERROR(r.Tag(&field, &wire, &at));
    auto expect = [&](absl::string_view name, int want) {
      return ExpectWire(absl::StrCat("normalizer_spec.", name), field, wire, want, at);
    };
    switch (field) {
      case 1: {
        KV_RETURN_IF_ERROR(expect("name", kLengthDelimited));
        absl::string_view s;
        size_t b = 0;
        KV_RETURN_IF_ERROR(r.Bytes(&s, &b));
        m->normalizer_name = std::string(s);
        break;
      }
      case 2: {
        KV_RETURN_IF_ERROR(expect("precompiled_charsmap", kLengthDelimited));
        absl::string_view s;
        size_t b = 0;
        KV_RETURN_IF_ERROR(r.Bytes(&s, &b));
        m->precompiled_charsmap_size = s.size();
        break;
      }
      case 3:
        KV_RETURN_IF_ERROR(expect("add_dummy_prefix", kVarint));
        KV_RETURN_IF_ERROR(ReadBool(r, &m->add_dummy_prefix));
        break;
      case 4:
        KV_RETURN_IF_ERROR(expect("remove_extra_whitespaces", kVarint));
        KV_RETURN_IF_ERROR(ReadBool(r, &m->remove_extra_whitespaces));
        break;
      case 5:
        KV_RETURN_IF_ERROR(expect("escape_whitespaces", kVarint));
        KV_RETURN_IF_ERROR(ReadBool(r, &m->escape_whitespaces));
        break;
      default:
        KV_RETURN_IF_ERROR(r.Skip(wire));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseModel(absl::string_view bytes, SpmModel* m) {
  WireReader r(bytes, 0);
  bool have_trainer_spec = false;
  while (!r.done()) {
    uint32_t field = 0;
    int wire = 0;
    size_t at = 0;
    KV_RETURN_IF_ERROR(r.Tag(&field, &wire, &at));
    if (field < 1 || field > 3) {
      KV_RETURN_IF_ERROR(r.Skip(wire));
      continue;
    }
    static constexpr const char* kNames[] = {"", "pieces", "trainer_spec", "normalizer_spec"};
    KV_RETURN_IF_ERROR(ExpectWire(kNames[field], field, wire, kLengthDelimited, at));
    absl::string_view msg;
    size_t base = 0;
    KV_RETURN_IF_ERROR(r.Bytes(&msg, &base));
    // A repeated embedded message merges into the earlier one (protobuf semantics); parsing
    // into the same struct does that for the scalar fields kept here.
    if (field == 1) {
      m->pieces.emplace_back();
      KV_RETURN_IF_ERROR(ParsePiece(msg, base, m->pieces.size() - 1, &m->pieces.back()));
    } else if (field == 2) {
      have_trainer_spec = true;
      KV_RETURN_IF_ERROR(ParseTrainerSpec(msg, base, m));
    } else {
      KV_RETURN_IF_ERROR(ParseNormalizerSpec(msg, base, m));
    }
  }
  if (m->pieces.empty()) return Bad("no pieces (field 1)");
  // spm_train always writes one (after the pieces). Without it the model type would default to
  // UNIGRAM; a file cut between pieces looks like that, so call it what it most likely is.
  if (!have_trainer_spec) {
    return Bad(absl::StrCat("no trainer_spec (field 2) after ", m->pieces.size(),
                            " pieces (truncated file?)"));
  }

  absl::flat_hash_map<absl::string_view, size_t> seen;
  seen.reserve(m->pieces.size());
  for (size_t i = 0; i < m->pieces.size(); ++i) {
    auto [it, inserted] = seen.emplace(m->pieces[i].piece, i);
    if (!inserted) {
      return Bad(absl::StrCat("pieces[", it->second, "] and pieces[", i, "] are both \"",
                              m->pieces[i].piece, "\""));
    }
  }
  const auto n = static_cast<int64_t>(m->pieces.size());
  for (const auto& [name, id] : {std::pair<const char*, int32_t>{"unk_id", m->unk_id},
                                 {"bos_id", m->bos_id},
                                 {"eos_id", m->eos_id},
                                 {"pad_id", m->pad_id}}) {
    if (id < -1 || id >= n) {
      return Bad(absl::StrCat("trainer_spec.", name, " = ", id, " is not -1 or a piece id (", n,
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
