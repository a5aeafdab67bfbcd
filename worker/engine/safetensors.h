// A validated, memory-mapped safetensors file.
//
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:
// [begin, end]}, "__metadata__": {...}}, then the data block. Open() checks everything a lying
// or truncated file could get wrong before any tensor is touched: header length within the file,
// valid JSON, known dtypes, non-negative shapes whose byte size equals end - begin, offsets
// inside the data block, no overlapping tensors. Errors are kInvalidArgument naming the file and
// the tensor (kNotFound / kPermissionDenied for unreadable files).
#ifndef KVSWEEP_WORKER_ENGINE_SAFETENSORS_H_
#define KVSWEEP_WORKER_ENGINE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/file_util.h"

namespace kvsweep::engine {

enum class StDtype { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };
const char* StDtypeName(StDtype d);
size_t StDtypeSize(StDtype d);

struct StTensor {
  std::string name;
  StDtype dtype;
  std::vector<int64_t> shape;
  const uint8_t* data;  // into the mapping; valid while the SafetensorsFile lives
  size_t nbytes;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, StTensor>& tensors() const { return tensors_; }
  const StTensor* Find(const std::string& name) const;
  const std::string& path() const { return file_->path(); }

 private:
  explicit SafetensorsFile(std::unique_ptr<MappedFile> f) : file_(std::move(f)) {}
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, StTensor> tensors_;
};

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_SAFETENSORS_H_
