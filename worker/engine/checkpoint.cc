#include "worker/engine/checkpoint.h"

#include <dirent.h>

#include <algorithm>
#include <cstdint>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/json_util.h"

namespace kvsweep::engine {

const StTensor* Checkpoint::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> out;
  for (const auto& [n, t] : index_) out.push_back(n);
  return out;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  std::unique_ptr<Checkpoint> ck(new Checkpoint());
  ck->dir_ = dir;
  const std::string index_path = JoinPath(dir, "model.safetensors.index.json");
  const std::string single = JoinPath(dir, "model.safetensors");
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;
  if (PathExists(index_path)) {
    absl::StatusOr<nlohmann::json> idx = ReadJsonFile(index_path);
    if (!idx.ok()) return idx.status();
    if (!idx->is_object() || !idx->contains("weight_map") || !(*idx)["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": no \"weight_map\" object"));
    }
    std::set<std::string> shards;
    for (auto it = (*idx)["weight_map"].begin(); it != (*idx)["weight_map"].end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map['", it.key(), "'] is not a file name"));
      }
      const std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": shard name '", shard, "' is not a plain file name"));
      }
      weight_map[it.key()] = shard;
      shards.insert(shard);
    }
    shard_names.assign(shards.begin(), shards.end());
  } else if (PathExists(single)) {
    shard_names.push_back("model.safetensors");
  } else if (PathExists(JoinPath(dir, "pytorch_model.bin"))) {
    return absl::UnimplementedError(absl::StrCat(
        dir, ": only safetensors weights are supported (found pytorch_model.bin); convert with "
             "transformers' save_pretrained(safe_serialization=True)"));
  } else {
    return absl::NotFoundError(absl::StrCat(
        dir, ": no model.safetensors or model.safetensors.index.json"));
  }
  std::map<std::string, const SafetensorsFile*> by_name;
  for (const std::string& s : shard_names) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(JoinPath(dir, s));
    if (!f.ok()) return f.status();
    by_name[s] = f->get();
    ck->files_.push_back(std::move(*f));
  }
  if (weight_map.empty()) {
    for (const auto& [n, t] : ck->files_[0]->tensors()) ck->index_[n] = &t;
  } else {
    for (const auto& [n, shard] : weight_map) {
      const StTensor* t = by_name[shard]->Find(n);
      if (t == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": tensor '", n, "' is mapped to ", shard, " which does not contain it"));
      }
      ck->index_[n] = t;
    }
  }
  return ck;
}

absl::StatusOr<torch::Tensor> TensorFromBytes(const StTensor& t, torch::ScalarType dtype,
                                              torch::Device device) {
  torch::ScalarType src;
  switch (t.dtype) {
    case StDtype::kF32: src = torch::kFloat32; break;
    case StDtype::kF16: src = torch::kFloat16; break;
    case StDtype::kBF16: src = torch::kBFloat16; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' has dtype ",
                                                     StDtypeName(t.dtype), "; weights must be F32, F16 or BF16"));
  }
  return GuardTorch("loading " + t.name, [&]() -> absl::StatusOr<torch::Tensor> {
    torch::Tensor view = torch::from_blob(const_cast<uint8_t*>(t.data), t.shape,
                                          torch::TensorOptions().dtype(src));
    const bool aligned = reinterpret_cast<uintptr_t>(t.data) % StDtypeSize(t.dtype) == 0;
    if (!aligned) view = view.clone();  // element reads must be aligned for vectorized kernels
    if (device.is_cpu() && src == dtype && aligned) return view;  // zero-copy from the mapping
    // Move first, convert on the device: cheaper than converting multi-GiB weights on the CPU.
    return view.to(device).to(dtype);
  });
}

absl::StatusOr<torch::Tensor> Checkpoint::Load(const std::string& name,
                                               const std::vector<int64_t>& shape,
                                               torch::ScalarType dtype,
                                               torch::Device device) const {
  const StTensor* t = Find(name);
  if (t == nullptr) {
    return absl::NotFoundError(absl::StrCat(dir_, ": tensor '", name, "' is missing"));
  }
  if (t->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir_, ": tensor '", name, "' has shape [", absl::StrJoin(t->shape, ","),
        "] but the config implies [", absl::StrJoin(shape, ","), "]"));
  }
  return TensorFromBytes(*t, dtype, device);
}

}  // namespace kvsweep::engine
