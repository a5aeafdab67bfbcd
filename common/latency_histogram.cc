#include "common/latency_histogram.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace kvsweep {
namespace {

double UpperEdge(int bucket) {
  return LatencyHistogram::kFirstMs * std::pow(LatencyHistogram::kGrowth, bucket);
}

}  // namespace

void LatencyHistogram::Record(double ms) {
  int b = 0;
  if (ms > kFirstMs) {
    b = static_cast<int>(std::ceil(std::log(ms / kFirstMs) / std::log(kGrowth) - 1e-9));
    if (b >= kBuckets) b = kBuckets - 1;
  }
  buckets_[b].fetch_add(1, std::memory_order_relaxed);
}

int64_t LatencyHistogram::Count() const {
  int64_t n = 0;
  for (const auto& b : buckets_) n += b.load(std::memory_order_relaxed);
  return n;
}

double LatencyHistogram::Percentile(double p) const {
  const int64_t n = Count();
  if (n == 0) return 0;
  // The smallest bucket whose cumulative count reaches ceil(p * n) (at least one sample).
  const int64_t rank = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(p * n)));
  int64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += buckets_[b].load(std::memory_order_relaxed);
    if (seen >= rank) return UpperEdge(b);
  }
  return UpperEdge(kBuckets - 1);
}

std::string LatencyHistogram::Summary() const {
  return absl::StrFormat("n %d, p50 %.3f ms, p99 %.3f ms, max<= %.3f ms", Count(), Percentile(0.5),
                         Percentile(0.99), Percentile(1.0));
}

}  // namespace kvsweep
