#include "worker/engine/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_util.h"

namespace kvsweep::engine {
namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // the format's own limit is 100 MB

struct DtypeInfo {
  const char* name;
  StDtype dtype;
  size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {"F32", StDtype::kF32, 4},   {"F16", StDtype::kF16, 2}, {"BF16", StDtype::kBF16, 2},
    {"F64", StDtype::kF64, 8},   {"I64", StDtype::kI64, 8}, {"I32", StDtype::kI32, 4},
    {"I16", StDtype::kI16, 2},   {"I8", StDtype::kI8, 1},   {"U8", StDtype::kU8, 1},
    {"BOOL", StDtype::kBool, 1},
};

absl::Status Bad(const std::string& path, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": invalid safetensors: ", why));
}

}  // namespace

const char* StDtypeName(StDtype d) {
  for (const auto& i : kDtypes) {
    if (i.dtype == d) return i.name;
  }
  return "?";
}
size_t StDtypeSize(StDtype d) {
  for (const auto& i : kDtypes) {
    if (i.dtype == d) return i.size;
  }
  return 0;
}

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

const StTensor* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  absl::StatusOr<std::unique_ptr<MappedFile>> mf = MappedFile::Open(path);
  if (!mf.ok()) return mf.status();
  std::unique_ptr<SafetensorsFile> st(new SafetensorsFile(std::move(*mf)));
  const MappedFile& f = *st->file_;
  if (f.size() < 8)
    return Bad(path,
               absl::StrCat("file is ", f.size(), " bytes, shorter than the 8-byte header length"));
  uint64_t n = 0;
  std::memcpy(&n, f.data(), 8);  // little-endian on every platform we build for
  if (n > kMaxHeader) return Bad(path, absl::StrCat("header length ", n, " exceeds 100 MB"));
  if (n > f.size() - 8) {
    return Bad(path, absl::StrCat("header length ", n, " runs past the end of the file (", f.size(),
                                  " bytes)"));
  }
  absl::string_view text(reinterpret_cast<const char*>(f.data() + 8), n);
  absl::StatusOr<nlohmann::json> j = ParseJson(text, absl::StrCat(path, " header"));
  if (!j.ok()) return j.status();
  if (!j->is_object()) return Bad(path, "header is not a JSON object");
  const uint8_t* base = f.data() + 8 + n;
  const uint64_t data_size = f.size() - 8 - n;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = j->begin(); it != j->end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    const nlohmann::json& t = it.value();
    if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") ||
        !t.contains("data_offsets")) {
      return Bad(path, absl::StrCat("tensor '", name, "' lacks dtype/shape/data_offsets"));
    }
    StTensor out;
    out.name = name;
    const nlohmann::json& dt = t["dtype"];
    bool known = false;
    size_t esize = 0;
    if (dt.is_string()) {
      for (const auto& i : kDtypes) {
        if (dt.get<std::string>() == i.name) {
          out.dtype = i.dtype;
          esize = i.size;
          known = true;
        }
      }
    }
    if (!known) return Bad(path, absl::StrCat("tensor '", name, "' has unknown dtype ", dt.dump()));
    const nlohmann::json& sh = t["shape"];
    if (!sh.is_array()) return Bad(path, absl::StrCat("tensor '", name, "' shape is not a list"));
    // Byte size with overflow checks.
    uint64_t bytes = esize;
    for (const auto& d : sh) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return Bad(path, absl::StrCat("tensor '", name, "' has a bad dimension ", d.dump()));
      }
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && bytes > std::numeric_limits<uint64_t>::max() / dim) {
        return Bad(path, absl::StrCat("tensor '", name, "' shape overflows"));
      }
      bytes *= dim;
      out.shape.push_back(static_cast<int64_t>(dim));
    }
    const nlohmann::json& off = t["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned()) {
      return Bad(
          path, absl::StrCat("tensor '", name, "' data_offsets must be two non-negative integers"));
    }
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e || e > data_size) {
      return Bad(path, absl::StrCat("tensor '", name, "' data_offsets [", b, ", ", e,
                                    "] fall outside the data block of ", data_size, " bytes"));
    }
    if (e - b != bytes) {
      return Bad(path, absl::StrCat("tensor '", name, "' has ", e - b, " bytes but dtype ",
                                    StDtypeName(out.dtype), " and shape [",
                                    absl::StrJoin(out.shape, ","), "] need ", bytes));
    }
    out.data = base + b;
    out.nbytes = bytes;
    ranges.emplace_back(b, e);
    st->tensors_.emplace(name, std::move(out));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second)
      return Bad(path, "tensors overlap in the data block");
  }
  return st;
}

}  // namespace kvsweep::engine
