#include "worker/engine/placement.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace kvsweep::engine {

namespace {

std::string Bytes(int64_t b) {
  if (b >= 1000000000) return absl::StrFormat("%.1f GB", b / 1e9);
  if (b >= 1000000) return absl::StrFormat("%.1f MB", b / 1e6);
  return absl::StrCat(b, " bytes");
}

}  // namespace

int64_t ModelBytes::total() const {
  int64_t t = first + last;
  for (int64_t l : layers) t += l;
  return t;
}

ModelBytes ModelBytesOf(const ModelConfig& c, int element_bytes, int kv_heads) {
  const int64_t V = c.vocab_size, Hd = c.hidden_size, H = c.num_heads, D = c.head_dim,
                I = c.intermediate_size, P = c.max_positions;
  const int64_t Hkv = kv_heads > 0 ? kv_heads : c.num_kv_heads;
  const bool gpt2 = c.arch == Arch::kGpt2;
  // GPT-2 has every bias and LayerNorm biases; the llama family what its config says.
  const bool qkv_bias = gpt2 || c.qkv_bias, o_bias = gpt2 || c.o_bias,
             mlp_bias = gpt2 || c.mlp_bias;
  const int64_t norm = gpt2 ? 2 * Hd : Hd;
  int64_t layer = 2 * norm;
  layer += H * D * Hd + 2 * Hkv * D * Hd + Hd * H * D;  // q, k, v, o
  if (qkv_bias) layer += H * D + 2 * Hkv * D;
  if (o_bias) layer += Hd;
  layer += (gpt2 ? 2 : 3) * I * Hd;  // (gate,) up, down
  if (mlp_bias) layer += I + Hd;
  ModelBytes b;
  b.first = (V * Hd + (gpt2 ? P * Hd : 0)) * element_bytes;
  b.layers.assign(std::max(0, c.num_layers), layer * element_bytes);
  b.last = (norm + (c.tie_word_embeddings ? 0 : V * Hd)) * element_bytes;
  return b;
}

int64_t DefaultReserveBytes(int64_t free_bytes) {
  return std::max<int64_t>(free_bytes / 10, int64_t{1} << 30);
}

std::string Placement::Describe(const std::vector<std::string>& names) const {
  std::vector<std::string> parts;
  const int D = static_cast<int>(device_bytes.size());
  const int L = static_cast<int>(layer_device.size());
  for (int d = 0; d < D; ++d) {
    const int end = d + 1 < D ? first_layer[d + 1] : L;
    parts.push_back(absl::StrCat(d < static_cast<int>(names.size()) ? names[d] : absl::StrCat(d),
                                 " layers ", first_layer[d], "-", end - 1, " (",
                                 Bytes(device_bytes[d]), ")"));
  }
  return absl::StrJoin(parts, ", ");
}

absl::StatusOr<Placement> PlanPlacement(const PlacementRequest& r) {
  const int D = static_cast<int>(r.free_bytes.size());
  const int L = static_cast<int>(r.model.layers.size());
  auto name = [&](int d) {
    return d < static_cast<int>(r.device_names.size()) ? r.device_names[d] : absl::StrCat(d);
  };
  if (D == 0) return absl::InvalidArgumentError("placement: no devices");
  if (L < D) {
    return absl::InvalidArgumentError(absl::StrCat("placement: a model of ", L,
                                                   " layers cannot be split over ", D,
                                                   " devices (one layer each at least)"));
  }
  // Capacity per device; unknown free memory on every device = equal, unlimited capacities.
  const bool known =
      std::all_of(r.free_bytes.begin(), r.free_bytes.end(), [](int64_t f) { return f >= 0; });
  std::vector<double> capacity(D, 1.0);
  if (known) {
    for (int d = 0; d < D; ++d) {
      const int64_t c = r.free_bytes[d] - r.reserve_bytes;
      if (c <= 0) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "placement: ", name(d), " has ", Bytes(r.free_bytes[d]), " free, not more than the ",
            Bytes(r.reserve_bytes), " kept for activations and the KV cache"));
      }
      capacity[d] = static_cast<double>(c);
    }
  }
  std::vector<int64_t> prefix(L + 1, 0);
  for (int l = 0; l < L; ++l) prefix[l + 1] = prefix[l] + r.model.layers[l];
  auto bytes = [&](int d, int begin, int end) {
    int64_t b = prefix[end] - prefix[begin];
    if (d == 0) b += r.model.first;
    if (d == D - 1) b += r.model.last;
    return b;
  };
  auto cost = [&](int d, int begin, int end) {
    return static_cast<double>(bytes(d, begin, end)) / capacity[d];
  };
  // best[d][l]: the least "fullest device" placing layers [0, l) on devices 0..d, each with at
  // least one layer; start[d][l]: where device d's range begins in it.
  const double kInf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(D, std::vector<double>(L + 1, kInf));
  std::vector<std::vector<int>> start(D, std::vector<int>(L + 1, -1));
  for (int l = 1; l <= L; ++l) {
    best[0][l] = cost(0, 0, l);
    start[0][l] = 0;
  }
  for (int d = 1; d < D; ++d) {
    for (int l = d + 1; l <= L; ++l) {
      for (int k = d; k < l; ++k) {
        const double v = std::max(best[d - 1][k], cost(d, k, l));
        // <=: among equals, the later start (more layers on earlier devices).
        if (v <= best[d][l]) {
          best[d][l] = v;
          start[d][l] = k;
        }
      }
    }
  }
  Placement p;
  p.first_layer.assign(D, 0);
  p.device_bytes.assign(D, 0);
  p.layer_device.assign(L, 0);
  for (int d = D - 1, end = L; d >= 0; --d) {
    const int begin = start[d][end];
    p.first_layer[d] = begin;
    p.device_bytes[d] = bytes(d, begin, end);
    for (int l = begin; l < end; ++l) p.layer_device[l] = d;
    end = begin;
  }
  if (known && best[D - 1][L] > 1.0) {
    int64_t usable = 0;
    for (int d = 0; d < D; ++d) usable += r.free_bytes[d] - r.reserve_bytes;
    return absl::ResourceExhaustedError(absl::StrCat(
        "placement: the model's weights (", Bytes(r.model.total()), ": embeddings ",
        Bytes(r.model.first), ", ", L, " layers ", Bytes(prefix[L]), ", final norm and head ",
        Bytes(r.model.last), ") do not fit ", D, " device(s) with ", Bytes(usable),
        " usable (free less ", Bytes(r.reserve_bytes),
        " each for activations and the KV cache); the best split (", p.Describe(r.device_names),
        ") fills its fullest device to ", static_cast<int>(std::ceil(best[D - 1][L] * 100)), "%"));
  }
  return p;
}

absl::StatusOr<std::vector<torch::Device>> ParsePipelineDevices(const std::string& s) {
  std::vector<torch::Device> out;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    absl::StatusOr<torch::Device> d = ParseDevice(std::string(part));
    if (!d.ok()) return d.status();
    for (const torch::Device& o : out) {
      if (o.type() != d->type()) {
        return absl::InvalidArgumentError(
            absl::StrCat("device '", s, "': a pipeline is all CUDA or all CPU"));
      }
      if (d->is_cuda() && o.index() == d->index()) {
        return absl::InvalidArgumentError(
            absl::StrCat("device '", s, "': ", d->str(), " named twice"));
      }
    }
    out.push_back(*d);
  }
  return out;
}

std::vector<std::string> DeviceNames(const std::vector<torch::Device>& devices) {
  std::vector<std::string> out;
  for (const torch::Device& d : devices) out.push_back(d.str());
  return out;
}

absl::StatusOr<Placement> PlanModelPlacement(const ModelConfig& config, torch::ScalarType dtype,
                                             int kv_heads,
                                             const std::vector<torch::Device>& devices) {
  PlacementRequest r;
  r.model = ModelBytesOf(config, static_cast<int>(c10::elementSize(dtype)), kv_heads);
  r.device_names = DeviceNames(devices);
  int64_t smallest = -1;
  for (const torch::Device& d : devices) {
    const int64_t f = FreeDeviceBytes(d);
    r.free_bytes.push_back(f);
    if (f >= 0 && (smallest < 0 || f < smallest)) smallest = f;
  }
  r.reserve_bytes = smallest < 0 ? 0 : DefaultReserveBytes(smallest);
  return PlanPlacement(r);
}

}  // namespace kvsweep::engine
