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
  absl::StatusOr<ModelFiles> files = ResolveModelFiles(dir);
  if (!files.ok()) return files.status();
  return Open(dir, *files);
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir,
                                                             const ModelFiles& files) {
  std::unique_ptr<Checkpoint> ck(new Checkpoint());
  ck->dir_ = dir;
  const std::string& index_path = files.weights_index;
  if (files.weights.empty()) {
    return absl::NotFoundError(
        absl::StrCat(dir, ": no model.safetensors or model.safetensors.index.json"));
  }
  // Shards by file name: the index names them relative to the directory.
  std::map<std::string, std::string> shard_paths;
  for (const std::string& w : files.weights) {
    shard_paths[BaseName(w)] = w;
  }
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;
  if (!index_path.empty()) {
    absl::StatusOr<nlohmann::json> idx = ReadJsonFile(index_path);
    if (!idx.ok()) return idx.status();
    if (!idx->is_object() || !idx->contains("weight_map") || !(*idx)["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": no \"weight_map\" object"));
    }
    for (auto it = (*idx)["weight_map"].begin(); it != (*idx)["weight_map"].end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": weight_map['", it.key(), "'] is not a file name"));
      }
      const std::string shard = it.value().get<std::string>();
      // Only the resolved list is opened: an index that changed since it was resolved (and
      // names another file) is refused, not followed.
      if (shard_paths.count(shard) == 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            index_path, ": shard '", shard, "' is not among the resolved model files"));
      }
      weight_map[it.key()] = shard;
    }
    for (const auto& [name, path] : shard_paths) shard_names.push_back(name);
  } else {
    if (files.weights.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, ": several weight files without an index"));
    }
    shard_names.push_back(shard_paths.begin()->first);
  }
  std::map<std::string, const SafetensorsFile*> by_name;
  for (const std::string& s : shard_names) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(shard_paths[s]);
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
    case StDtype::kF32:
      src = torch::kFloat32;
      break;
    case StDtype::kF16:
      src = torch::kFloat16;
      break;
    case StDtype::kBF16:
      src = torch::kBFloat16;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' has dtype ",
                                                     StDtypeName(t.dtype),
                                                     "; weights must be F32, F16 or BF16"));
  }
  return GuardTorch("loading " + t.name, [&]() -> absl::StatusOr<torch::Tensor> {
    torch::Tensor view =
        torch::from_blob(const_cast<uint8_t*>(t.data), t.shape, torch::TensorOptions().dtype(src));
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
    return absl::InvalidArgumentError(
        absl::StrCat(dir_, ": tensor '", name, "' has shape [", absl::StrJoin(t->shape, ","),
                     "] but the config implies [", absl::StrJoin(shape, ","), "]"));
  }
  return TensorFromBytes(*t, dtype, device);
}

}  // namespace kvsweep::engine
