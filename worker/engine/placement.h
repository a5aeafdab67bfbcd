// Layer-wise placement of one model across the devices of a pipeline group (--device
// cuda:0,cuda:1): which device holds each decoder layer's weights, for a model whose weights do
// not fit one device. Pure arithmetic on byte counts; the model (worker/engine/model.cc) loads
// each tensor straight to its device and moves the hidden state at range boundaries.
//
// Rules:
// - Each device gets one contiguous range of layers, in device order, at least one layer each.
// - The token (and GPT-2 position) embeddings go on the first device with the first range; the
//   final norm and an untied LM head on the last device with the last range. A tied LM head is
//   the embedding matrix: it stays on the first device, and so do the logits.
// - Each device keeps `reserve_bytes` free for activations and the KV cache; the weights it can
//   hold are its free bytes less that reserve.
// - Among the placements that satisfy these, the one whose fullest device is least full
//   (weights / capacity) is chosen; ties go to the placement with more layers on earlier devices.
//   When the free memory of the devices is unknown (CPU), capacities count as equal and
//   unlimited: the layers are balanced by bytes.
// - A model that does not fit is an error (kResourceExhausted) that says what it needs and what
//   the devices have; so is a device with less free memory than the reserve, and a group with
//   more devices than the model has layers (kInvalidArgument).
#ifndef KVSWEEP_WORKER_ENGINE_PLACEMENT_H_
#define KVSWEEP_WORKER_ENGINE_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

// The bytes a model's weights take, by where they must go.
struct ModelBytes {
  int64_t first = 0;            // embeddings (and a tied LM head): the first device
  std::vector<int64_t> layers;  // one per decoder layer
  int64_t last = 0;             // final norm and an untied LM head: the last device
  int64_t total() const;
};

// The weights of `config` in a dtype of `element_bytes` per value, with `kv_heads` KV heads
// (0 = the model's own), as the engine holds them.
ModelBytes ModelBytesOf(const ModelConfig& config, int element_bytes, int kv_heads = 0);

struct PlacementRequest {
  ModelBytes model;
  std::vector<std::string> device_names;  // for messages ("cuda:0")
  std::vector<int64_t> free_bytes;        // per device; -1 = unknown (CPU)
  int64_t reserve_bytes = 0;              // kept free on each device (known free memory only)
};

struct Placement {
  std::vector<int> layer_device;      // device index of each layer
  std::vector<int> first_layer;       // per device: its range is [first_layer[d], first_layer[d+1])
  std::vector<int64_t> device_bytes;  // weights per device
  // "cuda:0 layers 0-39 (70.5 GB), cuda:1 layers 40-79 (70.5 GB)".
  std::string Describe(const std::vector<std::string>& device_names) const;
};

absl::StatusOr<Placement> PlanPlacement(const PlacementRequest& request);

// The reserve the engine keeps on each device of a pipeline: a tenth of its free memory, at
// least 1 GiB.
int64_t DefaultReserveBytes(int64_t free_bytes);

// --- The engine's side -----------------------------------------------------------------------

// A --device value: one device (cpu, cuda, cuda:N) or a pipeline group, comma-separated
// ("cuda:0,cuda:1"; "cpu,cpu" splits a model across two CPU "devices", for tests). A group is all
// CUDA or all CPU, and names no CUDA device twice. kInvalidArgument / kFailedPrecondition (no
// such device) with a one-line message.
absl::StatusOr<std::vector<torch::Device>> ParsePipelineDevices(const std::string& s);
std::vector<std::string> DeviceNames(const std::vector<torch::Device>& devices);

// PlanPlacement for `config` in `dtype` (with `kv_heads`, 0 = native) across `devices`, with
// their free memory as the engine sees it now and DefaultReserveBytes of the smallest.
absl::StatusOr<Placement> PlanModelPlacement(const ModelConfig& config, torch::ScalarType dtype,
                                             int kv_heads,
                                             const std::vector<torch::Device>& devices);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_PLACEMENT_H_
