// The codec registry: an explicit table from method family to factory (no static
// self-registration, which linkers can drop).
#include "absl/strings/str_cat.h"
#include "worker/engine/kv/codecs.h"

namespace kvsweep::engine {
namespace {

struct Entry {
  MethodFamily family;
  std::unique_ptr<KvCodec> (*make)(const MethodSpec&);
};

constexpr Entry kRegistry[] = {
    {MethodFamily::kNone, &NewNoneCodec},
    {MethodFamily::kQuant, &NewQuantCodec},
    {MethodFamily::kRank, &NewRankCodec},
    {MethodFamily::kHybrid, &NewHybridCodec},
};

}  // namespace

absl::StatusOr<std::unique_ptr<KvCodec>> NewKvCodec(const MethodSpec& spec) {
  if (!spec.resolved()) {
    return absl::InvalidArgumentError(
        absl::StrCat("codec needs a resolved method spec, got '", spec.ToString(), "'"));
  }
  for (const Entry& e : kRegistry) {
    if (e.family == spec.family) return e.make(spec);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("no codec registered for method family '", FamilyName(spec.family), "'"));
}

std::vector<MethodFamily> RegisteredFamilies() {
  std::vector<MethodFamily> out;
  for (const Entry& e : kRegistry) out.push_back(e.family);
  return out;
}

}  // namespace kvsweep::engine
