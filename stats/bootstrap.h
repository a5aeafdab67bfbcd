// Standard errors and bootstrap intervals, reproducible bit for bit.
//
// Resampling draws unit indices from SplitMix64 (Steele, Lea & Flood 2014: state += 0x9E37...,
// then three xor-shift-multiply steps) as next() % n, resample after resample, so that an
// independent implementation (tools/stats/paired_bootstrap.py, numpy) draws the same indices from
// the same seed. Intervals are percentile intervals with numpy's default (linear) quantile.
#ifndef KVSWEEP_STATS_BOOTSTRAP_H_
#define KVSWEEP_STATS_BOOTSTRAP_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "stats/eval_units.h"

namespace kvsweep {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next();

 private:
  uint64_t state_;
};

// Sample standard deviation (n - 1) / sqrt(n): lm-eval's mean_stderr (acc_stderr).
double MeanStderr(const std::vector<double>& x);
// Sample standard deviation (n - 1).
double SampleStddev(const std::vector<double>& x);
// numpy.quantile(x, q) with the default linear method. `x` non-empty.
double Quantile(std::vector<double> x, double q);

struct Interval {
  double lo = 0, hi = 0;
};

inline constexpr int kDefaultResamples = 1000;
inline constexpr uint64_t kDefaultSeed = 20240601;

// `stat` on `resamples` bootstrap resamples of n units (each a vector of n indices).
std::vector<double> Bootstrap(size_t n, int resamples, uint64_t seed,
                              const std::function<double(const std::vector<uint32_t>&)>& stat);

// lm-eval's bootstrap_stderr: the sample standard deviation of the metric over resamples.
std::optional<double> BootstrapStderr(const EvalUnits& u, const std::string& metric,
                                      int resamples = kDefaultResamples,
                                      uint64_t seed = kDefaultSeed);

// A against a baseline on the same units (paired: every resample takes the same documents for
// both): the difference A - B and the ratio A / B with their percentile intervals.
struct PairedComparison {
  double a = 0, base = 0, diff = 0, ratio = 0;
  Interval diff_ci, ratio_ci;
  double level = 0.95;
  int resamples = 0;
  uint64_t seed = 0;
  bool significant = false;  // the difference's interval excludes zero
};
// kInvalidArgument when the units are not the same documents/windows (kind, count or tokens per
// unit differ) or the metric cannot be computed from units.
absl::StatusOr<PairedComparison> PairedBootstrap(const EvalUnits& a, const EvalUnits& base,
                                                 const std::string& metric,
                                                 int resamples = kDefaultResamples,
                                                 uint64_t seed = kDefaultSeed, double level = 0.95);

}  // namespace kvsweep

#endif  // KVSWEEP_STATS_BOOTSTRAP_H_
