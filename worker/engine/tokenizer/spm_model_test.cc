// The SentencePiece .model reader (spm_model.h) and the .model -> HF pipeline conversion
// (sentencepiece_tokenizer.cc): hand-built ModelProto bytes for every rule and every bad input,
// and the Llama 2 tokenizer.model against models/ref-llama/tokenizer.json, which transformers
// 5.17 wrote from that file.
#include "worker/engine/tokenizer/spm_model.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/json_util.h"
#include "gtest/gtest.h"
#include "worker/engine/tokenizer/tokenizer.h"
#include "worker/engine/tokenizer/tokenizer_test_util.h"

namespace kvsweep::engine::tokenizer_internal {
namespace {

using ::kvsweep::engine::testing::Asset;

constexpr char kLlama2Model[] = "tokenizers/llama2/tokenizer.model";

// Protobuf wire-format writer for building test models.
class Proto {
 public:
  Proto& Varint(uint32_t field, uint64_t v) {
    Key(field, 0);
    PutVarint(v);
    return *this;
  }
  Proto& Bytes(uint32_t field, absl::string_view v) {
    Key(field, 2);
    PutVarint(v.size());
    out_.append(v.data(), v.size());
    return *this;
  }
  Proto& Message(uint32_t field, const Proto& m) { return Bytes(field, m.str()); }
  Proto& Float(uint32_t field, float f) {
    Key(field, 5);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
    return *this;
  }
  Proto& Raw(absl::string_view bytes) {
    out_.append(bytes.data(), bytes.size());
    return *this;
  }
  const std::string& str() const { return out_; }

 private:
  void Key(uint32_t field, int wire) { PutVarint((uint64_t{field} << 3) | wire); }
  void PutVarint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  std::string out_;
};

Proto Piece(absl::string_view piece, float score, SpmPieceType type = SpmPieceType::kNormal) {
  Proto p;
  p.Bytes(1, piece).Float(2, score);
  if (type != SpmPieceType::kNormal) p.Varint(3, static_cast<uint64_t>(type));
  return p;
}

Proto Trainer(SpmModelType type = SpmModelType::kBpe) {
  Proto t;
  t.Varint(3, static_cast<uint64_t>(type)).Varint(35, 1);
  return t;
}

Proto IdentityNormalizer() {
  Proto n;
  n.Bytes(1, "identity").Varint(3, 1).Varint(4, 0);
  return n;
}

// <unk> <s> </s>, then the pieces given (normal), then a trainer spec (default: BPE) and a
// normalizer spec (default: identity, like Llama 2's).
std::string Model(const std::vector<std::pair<std::string, float>>& pieces,
                  const Proto& trainer = Trainer(),
                  const Proto& normalizer = IdentityNormalizer()) {
  Proto m;
  m.Message(1, Piece("<unk>", 0, SpmPieceType::kUnknown))
      .Message(1, Piece("<s>", 0, SpmPieceType::kControl))
      .Message(1, Piece("</s>", 0, SpmPieceType::kControl));
  for (const auto& [p, s] : pieces) m.Message(1, Piece(p, s));
  m.Message(2, trainer);
  m.Message(3, normalizer);
  return m.str();
}

class SpmModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = JoinPath(
        ::testing::TempDir(),
        absl::StrCat("spm_", ::testing::UnitTest::GetInstance()->current_test_info()->name(), "_",
                     getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  absl::StatusOr<std::unique_ptr<Tokenizer>> LoadBytes(absl::string_view bytes) {
    const std::string p = JoinPath(dir_, "tokenizer.model");
    EXPECT_TRUE(WriteFileAtomic(p, bytes).ok());
    return LoadTokenizer(p);
  }
  // Exact code, a message fragment, the path, and one line.
  void ExpectError(absl::string_view bytes, absl::StatusCode code, absl::string_view fragment) {
    auto r = LoadBytes(bytes);
    ASSERT_FALSE(r.ok()) << "accepted; wanted \"" << fragment << "\"";
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), fragment))
        << "\"" << r.status().message() << "\" lacks \"" << fragment << "\"";
    EXPECT_TRUE(absl::StrContains(r.status().message(), "tokenizer.model")) << r.status();
    EXPECT_FALSE(absl::StrContains(r.status().message(), "\n")) << r.status();
  }
  std::string dir_;
};

std::vector<int32_t> Enc(const Tokenizer& t, absl::string_view s) {
  auto r = t.Encode(s);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : std::vector<int32_t>{};
}

// ---------------------------------------------------------------------------------------------

TEST(SpmModelParseTest, Llama2Fields) {
  auto bytes = ReadFile(Asset(kLlama2Model));
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto m = ParseSpmModel(*bytes, "llama2");
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->pieces.size(), 32000u);
  EXPECT_EQ(m->model_type, static_cast<int64_t>(SpmModelType::kBpe));
  EXPECT_TRUE(m->byte_fallback);
  EXPECT_FALSE(m->treat_whitespace_as_suffix);
  EXPECT_EQ(m->unk_id, 0);
  EXPECT_EQ(m->bos_id, 1);
  EXPECT_EQ(m->eos_id, 2);
  EXPECT_EQ(m->pad_id, -1);  // a 10-byte negative varint in the file
  EXPECT_EQ(m->normalizer_name, "identity");
  EXPECT_EQ(m->precompiled_charsmap_size, 0u);
  EXPECT_TRUE(m->add_dummy_prefix);
  EXPECT_FALSE(m->remove_extra_whitespaces);
  EXPECT_TRUE(m->escape_whitespaces);
  EXPECT_EQ(m->pieces[0].piece, "<unk>");
  EXPECT_EQ(m->pieces[0].type, SpmPieceType::kUnknown);
  EXPECT_EQ(m->pieces[1].type, SpmPieceType::kControl);
  EXPECT_EQ(m->pieces[3].piece, "<0x00>");
  EXPECT_EQ(m->pieces[3].type, SpmPieceType::kByte);
  EXPECT_EQ(m->pieces[259].piece, "\xE2\x96\x81\xE2\x96\x81");  // "▁▁"
  EXPECT_EQ(m->pieces[259].score, -1e9f);
  EXPECT_EQ(m->pieces[260].piece, "\xE2\x96\x81t");
  EXPECT_EQ(m->pieces[260].score, -1.0f);
  EXPECT_EQ(m->pieces[260].type, SpmPieceType::kNormal);
}

// The evidence that the .model converts to exactly ref-llama's BPE: transformers 5.17 wrote
// models/ref-llama/tokenizer.json from the Llama 2 tokenizer.model, and its vocabulary and its
// 61,249 merges, in order, are what HfMergesFromPieces derives (rank 0 is "▁ ▁": the merged piece
// "▁▁" has the lowest id of all multi-character pieces, though its score is -1e9).
TEST(SpmModelParseTest, Llama2ConvertsToRefLlamaVocabAndMerges) {
  auto bytes = ReadFile(Asset(kLlama2Model));
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto m = ParseSpmModel(*bytes, "llama2");
  ASSERT_TRUE(m.ok()) << m.status();
  auto json = ReadJsonFile(Asset("models/ref-llama/tokenizer.json"));
  ASSERT_TRUE(json.ok()) << json.status();
  const auto& model = (*json)["model"];

  std::vector<std::string> pieces;
  for (const SpmPiece& p : m->pieces) pieces.push_back(p.piece);
  ASSERT_EQ(model["vocab"].size(), pieces.size());
  for (size_t id = 0; id < pieces.size(); ++id) {
    ASSERT_EQ(model["vocab"].value(pieces[id], -1), static_cast<int>(id)) << pieces[id];
  }

  const auto merges = HfMergesFromPieces(pieces);
  const auto& want = model["merges"];
  ASSERT_EQ(merges.size(), want.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    ASSERT_EQ(merges[i].first, want[i][0].get<std::string>()) << "merge rank " << i;
    ASSERT_EQ(merges[i].second, want[i][1].get<std::string>()) << "merge rank " << i;
  }
  EXPECT_EQ(merges[0], std::make_pair(std::string("\xE2\x96\x81"), std::string("\xE2\x96\x81")));
}

// Rank = merged piece's id, then the left part's length in code points; scores play no part.
TEST(SpmModelParseTest, MergeOrderIsByMergedIdThenLeftLength) {
  // ids: a=0 b=1 c=2 abc=3 bc=4 ab=5 é=6 éx=7 x=8
  const std::vector<std::string> pieces = {"a",  "b",        "c",         "abc", "bc",
                                           "ab", "\xC3\xA9", "\xC3\xA9x", "x"};
  const std::vector<std::pair<std::string, std::string>> want = {
      {"a", "bc"},       {"ab", "c"},  // abc (id 3): left length 1, then 2
      {"b", "c"},                      // bc (4)
      {"a", "b"},                      // ab (5)
      {"\xC3\xA9", "x"},               // éx (7): split at code points, never inside "é"
  };
  EXPECT_EQ(HfMergesFromPieces(pieces), want);
}

TEST(SpmModelParseTest, ModelTypeNames) {
  EXPECT_EQ(SpmModelTypeName(1), "UNIGRAM");
  EXPECT_EQ(SpmModelTypeName(2), "BPE");
  EXPECT_EQ(SpmModelTypeName(3), "WORD");
  EXPECT_EQ(SpmModelTypeName(4), "CHAR");
  EXPECT_EQ(SpmModelTypeName(9), "unknown (9)");
}

// ---------------------------------------------------------------------------------------------
// The converted pipeline on a small hand-built model.

TEST_F(SpmModelTest, SmallModelTokenizesLikeTheHfConversion) {
  // By score SentencePiece merges "a b" before "▁ a"; the HF conversion ranks by id.
  const std::string meta = "\xE2\x96\x81";
  Proto m;
  m.Message(1, Piece("<unk>", 0, SpmPieceType::kUnknown))         // 0
      .Message(1, Piece("<s>", 0, SpmPieceType::kControl))        // 1
      .Message(1, Piece("</s>", 0, SpmPieceType::kControl))       // 2
      .Message(1, Piece("<sep>", 0, SpmPieceType::kUserDefined))  // 3
      .Message(1, Piece(meta + "a", -5))                          // 4
      .Message(1, Piece("ab", -1))                                // 5
      .Message(1, Piece(meta, -1e9))                              // 6
      .Message(1, Piece("a", -7))                                 // 7
      .Message(1, Piece("b", -8));                                // 8
  Proto t = Trainer();
  t.Varint(41, 1).Varint(42, uint64_t(-1));  // bos 1, eos none (-1 as a 10-byte varint)
  m.Message(2, t);
  auto tok = LoadBytes(m.str());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& k = **tok;
  EXPECT_EQ(k.kind(), "hf-sentencepiece-bpe");
  EXPECT_EQ(k.vocab_size(), 9);
  EXPECT_EQ(k.bos_id(), 1);
  EXPECT_EQ(k.eos_id(), std::nullopt);
  ASSERT_EQ(k.files().size(), 1u);
  EXPECT_TRUE(absl::EndsWith(k.files()[0], "tokenizer.model"));

  // "ab" -> "▁ab": "▁ a" (merged id 4) before "a b" (id 5): ▁a | b. SentencePiece: ▁ | ab.
  EXPECT_EQ(Enc(k, "ab"), (std::vector<int32_t>{4, 8}));
  // prepend_scheme "first": only the text's first segment gets "▁"; control and user-defined
  // pieces are split out of the raw text.
  EXPECT_EQ(Enc(k, "ab<sep>ab"), (std::vector<int32_t>{4, 8, 3, 5}));
  EXPECT_EQ(Enc(k, "<s>ab</s>"), (std::vector<int32_t>{1, 5, 2}));
  // Spaces become "▁"; a text that starts with one gets no second "▁".
  EXPECT_EQ(Enc(k, " ab"), (std::vector<int32_t>{4, 8}));
  // No <0xXX> pieces and no unk token (as in transformers' LlamaTokenizer): an unknown
  // character is dropped.
  EXPECT_EQ(Enc(k, "abz"), (std::vector<int32_t>{4, 8}));
  EXPECT_EQ(k.Decode({4, 8, 3, 5}), "ab<sep>ab");
}

// ---------------------------------------------------------------------------------------------
// Bad inputs: exact code, message fragment, path named, one line.

// What protobuf's parser refuses is one error naming the file and its size.
constexpr char kUnparsable[] = "not a valid SentencePiece model: protobuf cannot parse its";

TEST_F(SpmModelTest, Garbage) {
  ExpectError("this is not a protobuf \xff\xff\xff", absl::StatusCode::kInvalidArgument,
              kUnparsable);
  ExpectError(std::string(64, '\xff'), absl::StatusCode::kInvalidArgument, kUnparsable);
  ExpectError(std::string(16, '\0'), absl::StatusCode::kInvalidArgument, kUnparsable);
}

TEST_F(SpmModelTest, TruncatedLlama2) {
  auto full = ReadFile(Asset(kLlama2Model));
  ASSERT_TRUE(full.ok()) << full.status();
  // Mid-normalizer, mid-trainer spec, inside a piece (one starts at byte 100000: its key, its
  // length at 100001, its message to 100013), right after the last piece (no trainer spec), tiny.
  const std::vector<std::pair<size_t, std::string>> cuts = {
      {full->size() - 1, kUnparsable},
      {499500, kUnparsable},
      {100001, kUnparsable},
      {100010, kUnparsable},
      {499437, "no trainer_spec (field 2) after 32000 pieces"},
      {1, kUnparsable},
      {2, kUnparsable},
  };
  for (const auto& [cut, fragment] : cuts) {
    SCOPED_TRACE(cut);
    ExpectError(full->substr(0, cut), absl::StatusCode::kInvalidArgument, fragment);
  }
}

TEST_F(SpmModelTest, WireFormatErrors) {
  const std::string ok = Model({{"a", 0}});
  // Varints cut short; wire types 6 and 7 do not exist; fixed-width values cut short.
  ExpectError(ok + "\x0a\x85", absl::StatusCode::kInvalidArgument, kUnparsable);
  ExpectError(ok + "\x48" + std::string(12, '\x80') + "\x01", absl::StatusCode::kInvalidArgument,
              kUnparsable);
  ExpectError(ok + "\x0e", absl::StatusCode::kInvalidArgument, kUnparsable);
  ExpectError(ok + "\x49"
                   "1234",
              absl::StatusCode::kInvalidArgument, kUnparsable);
  ExpectError(ok + "\x4d"
                   "12",
              absl::StatusCode::kInvalidArgument, kUnparsable);
  // Protobuf keeps a known field sent with another wire type as an unknown field: a varint
  // field 1 before the pieces changes nothing; a model_type sent as bytes leaves the default
  // (UNIGRAM), which is then refused as a model type.
  auto varint_pieces = LoadBytes(Proto().Varint(1, 5).str() + ok);
  EXPECT_TRUE(varint_pieces.ok()) << varint_pieces.status();
  ExpectError(Model({{"a", 0}}, Proto().Bytes(3, "BPE")), absl::StatusCode::kUnimplemented,
              "model type UNIGRAM is not supported");
  // Unknown fields of every wire type are skipped, at every level.
  // Key 0xD9 0x0C = field 203, wire type 1 (fixed64), then its 8 bytes.
  const std::string fixed64_field = std::string("\xD9\x0C") + "12345678";
  Proto extra_piece = Piece("a", 0);
  extra_piece.Varint(200, 7).Bytes(201, "x").Float(202, 1.0f).Raw(fixed64_field);
  Proto extra;
  extra.Message(1, Piece("<unk>", 0, SpmPieceType::kUnknown))
      .Message(1, Piece("<s>", 0, SpmPieceType::kControl))
      .Message(1, Piece("</s>", 0, SpmPieceType::kControl))
      .Message(1, extra_piece)
      .Message(2, Trainer().Varint(999, 1).Bytes(30, "ctl"))
      .Bytes(4, "self test data")
      .Varint(77, 1);
  auto with_extras = LoadBytes(extra.str());
  EXPECT_TRUE(with_extras.ok()) << with_extras.status();
}

TEST_F(SpmModelTest, BadPieces) {
  ExpectError(Model({{"a\xff", 0}}), absl::StatusCode::kInvalidArgument,
              "pieces[3].piece is not valid UTF-8");
  ExpectError(Model({{"", 0}}), absl::StatusCode::kInvalidArgument,
              "pieces[3] has an empty piece string");
  ExpectError(Model({{"a", 0}, {"b", 0}, {"a", 0}}), absl::StatusCode::kInvalidArgument,
              "pieces[3] and pieces[5] are both \"a\"");
  Proto bad_type;
  bad_type.Message(1, Proto().Bytes(1, "a").Varint(3, 9)).Message(2, Trainer());
  ExpectError(bad_type.str(), absl::StatusCode::kInvalidArgument,
              "pieces[0].type is 9 (valid: 1..6)");
  Proto no_pieces;
  no_pieces.Message(2, Trainer());
  ExpectError(no_pieces.str(), absl::StatusCode::kInvalidArgument, "no pieces (field 1)");
}

TEST_F(SpmModelTest, BadSpecialIds) {
  ExpectError(Model({{"a", 0}}, Trainer().Varint(41, 4)), absl::StatusCode::kInvalidArgument,
              "trainer_spec.bos_id = 4 is not -1 or a piece id (4 pieces)");
  ExpectError(Model({{"a", 0}}, Trainer().Varint(42, uint64_t(-2))),
              absl::StatusCode::kInvalidArgument, "trainer_spec.eos_id = -2");
  ExpectError(Model({{"a", 0}}, Trainer().Varint(40, uint64_t{1} << 40)),
              absl::StatusCode::kInvalidArgument,
              "trainer_spec.unk_id is out of the int32 range: 1099511627776");
}

TEST_F(SpmModelTest, UnsupportedModels) {
  ExpectError(Model({{"a", 0}}, Trainer(SpmModelType::kUnigram)), absl::StatusCode::kUnimplemented,
              "model type UNIGRAM is not supported (only BPE)");
  ExpectError(Model({{"a", 0}}, Trainer(SpmModelType::kWord)), absl::StatusCode::kUnimplemented,
              "model type WORD is not supported");
  ExpectError(Model({{"a", 0}}, Trainer(SpmModelType::kChar)), absl::StatusCode::kUnimplemented,
              "model type CHAR is not supported");
  ExpectError(Model({{"a", 0}}, Proto().Varint(3, 7)), absl::StatusCode::kUnimplemented,
              "model type unknown (7) is not supported");
  // No model_type: the proto default, UNIGRAM.
  ExpectError(Model({{"a", 0}}, Proto().Varint(35, 1)), absl::StatusCode::kUnimplemented,
              "model type UNIGRAM");
  ExpectError(Model({{"a", 0}}, Trainer().Varint(24, 1)), absl::StatusCode::kUnimplemented,
              "treat_whitespace_as_suffix");
  ExpectError(
      Model({{"a", 0}}, Trainer(), Proto().Bytes(1, "nmt_nfkc").Bytes(2, std::string(100, '\x01'))),
      absl::StatusCode::kUnimplemented,
      "normalization rule \"nmt_nfkc\" (100-byte precompiled_charsmap)");
}

}  // namespace
}  // namespace kvsweep::engine::tokenizer_internal
