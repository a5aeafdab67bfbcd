// A lock-free latency histogram: log-spaced buckets (5% wide, 10 µs to ~5 min), so a busy
// server can record every call and report percentiles without keeping the samples.
// Percentile() returns the upper edge of the bucket holding the requested rank: an upper bound
// at most 5% above the exact sample.
#ifndef KVSWEEP_COMMON_LATENCY_HISTOGRAM_H_
#define KVSWEEP_COMMON_LATENCY_HISTOGRAM_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace kvsweep {

class LatencyHistogram {
 public:
  static constexpr int kBuckets = 360;
  static constexpr double kFirstMs = 0.01;  // upper edge of bucket 0
  static constexpr double kGrowth = 1.05;

  void Record(double ms);
  int64_t Count() const;
  // p in [0, 1]; 0 when nothing was recorded.
  double Percentile(double p) const;
  // "n N, p50 X ms, p99 Y ms, max<= Z ms"
  std::string Summary() const;

 private:
  std::array<std::atomic<int64_t>, kBuckets> buckets_{};
};

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_LATENCY_HISTOGRAM_H_
