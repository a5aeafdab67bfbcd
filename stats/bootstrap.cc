#include "stats/bootstrap.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace kvsweep {

uint64_t SplitMix64::Next() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double SampleStddev(const std::vector<double>& x) {
  if (x.size() < 2) return 0;
  const double mean = std::accumulate(x.begin(), x.end(), 0.0) / x.size();
  double ss = 0;
  for (double v : x) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / (x.size() - 1));
}

double MeanStderr(const std::vector<double>& x) {
  if (x.empty()) return 0;
  return SampleStddev(x) / std::sqrt(static_cast<double>(x.size()));
}

double Quantile(std::vector<double> x, double q) {
  std::sort(x.begin(), x.end());
  const double pos = q * (x.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, x.size() - 1);
  const double frac = pos - lo;
  return x[lo] + (x[hi] - x[lo]) * frac;
}

std::vector<double> Bootstrap(size_t n, int resamples, uint64_t seed,
                              const std::function<double(const std::vector<uint32_t>&)>& stat) {
  SplitMix64 rng(seed);
  std::vector<uint32_t> idx(n);
  std::vector<double> out;
  out.reserve(resamples);
  for (int b = 0; b < resamples; ++b) {
    for (size_t i = 0; i < n; ++i) idx[i] = static_cast<uint32_t>(rng.Next() % n);
    out.push_back(stat(idx));
  }
  return out;
}

std::optional<double> BootstrapStderr(const EvalUnits& u, const std::string& metric, int resamples,
                                      uint64_t seed) {
  if (u.size() < 2 || !UnitMetric(u, metric, nullptr)) return std::nullopt;
  std::vector<double> values = Bootstrap(u.size(), resamples, seed, [&](const auto& idx) {
    return UnitMetric(u, metric, &idx).value_or(NAN);
  });
  return SampleStddev(values);
}

absl::StatusOr<PairedComparison> PairedBootstrap(const EvalUnits& a, const EvalUnits& base,
                                                 const std::string& metric, int resamples,
                                                 uint64_t seed, double level) {
  if (a.kind != base.kind || a.size() != base.size() || a.tokens != base.tokens ||
      a.words != base.words || a.bytes != base.bytes || a.total_words != base.total_words ||
      a.total_bytes != base.total_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not the same ", a.kind.empty() ? "units" : a.kind + "s", " (", a.size(), " vs ",
        base.size(), "): a paired comparison needs the same data, limit and window"));
  }
  std::optional<double> va = UnitMetric(a, metric, nullptr);
  std::optional<double> vb = UnitMetric(base, metric, nullptr);
  if (!va || !vb) {
    return absl::InvalidArgumentError(
        absl::StrCat("metric '", metric, "' cannot be computed from these units"));
  }
  PairedComparison c;
  c.a = *va;
  c.base = *vb;
  c.diff = *va - *vb;
  c.ratio = *vb != 0 ? *va / *vb : NAN;
  c.level = level;
  c.resamples = resamples;
  c.seed = seed;
  std::vector<double> diffs, ratios;
  diffs.reserve(resamples);
  ratios.reserve(resamples);
  Bootstrap(a.size(), resamples, seed, [&](const std::vector<uint32_t>& idx) {
    const double x = UnitMetric(a, metric, &idx).value_or(NAN);
    const double y = UnitMetric(base, metric, &idx).value_or(NAN);
    diffs.push_back(x - y);
    ratios.push_back(y != 0 ? x / y : NAN);
    return 0.0;
  });
  const double tail = (1 - level) / 2;
  c.diff_ci = {Quantile(diffs, tail), Quantile(diffs, 1 - tail)};
  c.ratio_ci = {Quantile(ratios, tail), Quantile(ratios, 1 - tail)};
  c.significant = c.diff_ci.lo > 0 || c.diff_ci.hi < 0;
  return c;
}

}  // namespace kvsweep
