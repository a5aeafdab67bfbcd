#include "worker/worker_metrics.h"

#include <fstream>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/mutex.h"
#include "rpc/http_listen.h"

#ifdef KVSWEEP_WITH_PROMETHEUS
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#endif

namespace kvsweep {

ResidentMemory ReadResidentMemory() {
  ResidentMemory m;
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    // "VmRSS:     123456 kB"
    int64_t* out = absl::StartsWith(line, "VmRSS:")   ? &m.current
                   : absl::StartsWith(line, "VmHWM:") ? &m.peak
                                                      : nullptr;
    if (out == nullptr) continue;
    absl::string_view v = absl::StripAsciiWhitespace(absl::string_view(line).substr(6));
    if (!absl::ConsumeSuffix(&v, " kB")) continue;
    int64_t kb = 0;
    if (absl::SimpleAtoi(v, &kb)) *out = kb * 1024;
  }
  return m;
}

#if defined(KVSWEEP_WITH_PROMETHEUS) && defined(KVSWEEP_WITH_HTTPLIB)
namespace {

// Upper bucket edges in seconds: a job takes from well under a second (a fake, a tiny limit)
// to hours (a long document set on a large model).
const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400};
  return *b;
}

int64_t TimingInt(const nlohmann::json& timing, const char* key) {
  if (!timing.is_object() || !timing.contains(key) || !timing[key].is_number()) return -1;
  return timing[key].get<int64_t>();
}

class PrometheusWorkerMetrics final : public WorkerMetrics {
 public:
  explicit PrometheusWorkerMetrics(const Evaluator* evaluator)
      : evaluator_(evaluator),
        registry_(std::make_shared<prometheus::Registry>()),
        jobs_(prometheus::BuildCounter()
                  .Name("kvsweep_worker_jobs_total")
                  .Help("Jobs ended, by task and outcome (recorded, duplicate, rejected, failed, "
                        "abandoned, handed_back)")
                  .Register(*registry_)),
        leased_(prometheus::BuildCounter()
                    .Name("kvsweep_worker_jobs_started_total")
                    .Help("Jobs leased and started")
                    .Register(*registry_)
                    .Add({})),
        duration_(prometheus::BuildHistogram()
                      .Name("kvsweep_worker_job_duration_seconds")
                      .Help("Jobs from their start to their end (reported or not), by task")
                      .Register(*registry_)),
        forward_tokens_(prometheus::BuildCounter()
                            .Name("kvsweep_worker_forward_tokens_total")
                            .Help("Tokens the engine ran through the model (timing.forward_tokens "
                                  "of each evaluated job), by task")
                            .Register(*registry_)),
        scored_tokens_(prometheus::BuildCounter()
                           .Name("kvsweep_worker_scored_tokens_total")
                           .Help("Tokens whose log-likelihood the engine scored "
                                 "(timing.scored_tokens of each evaluated job), by task")
                           .Register(*registry_)),
        tokens_per_s_(prometheus::BuildGauge()
                          .Name("kvsweep_worker_tokens_per_second")
                          .Help("Forward tokens per second of the scoring phase of the last "
                                "evaluated job (timing.tokens_per_s)")
                          .Register(*registry_)
                          .Add({})),
        running_(prometheus::BuildGauge()
                     .Name("kvsweep_worker_job_running")
                     .Help("1 while a job runs, else 0")
                     .Register(*registry_)
                     .Add({})),
        progress_(prometheus::BuildGauge()
                      .Name("kvsweep_worker_job_progress")
                      .Help("Fraction done of the current job (of the last one between jobs)")
                      .Register(*registry_)
                      .Add({})),
        rpcs_(prometheus::BuildCounter()
                  .Name("kvsweep_worker_rpcs_total")
                  .Help("Calls to the coordinator by method and gRPC status code (each retry "
                        "counts)")
                  .Register(*registry_)),
        rss_(prometheus::BuildGauge()
                 .Name("kvsweep_worker_resident_memory_bytes")
                 .Help("The worker process's resident set size (VmRSS)")
                 .Register(*registry_)
                 .Add({})),
        rss_peak_(prometheus::BuildGauge()
                      .Name("kvsweep_worker_resident_memory_peak_bytes")
                      .Help("The worker process's peak resident set size (VmHWM)")
                      .Register(*registry_)
                      .Add({})),
        device_(prometheus::BuildGauge()
                    .Name("kvsweep_worker_device_allocated_bytes")
                    .Help("Bytes allocated by libtorch's CUDA caching allocator (GPU workers "
                          "only)")
                    .Register(*registry_)),
        device_peak_(prometheus::BuildGauge()
                         .Name("kvsweep_worker_device_allocated_peak_bytes")
                         .Help("The most bytes allocated by libtorch's CUDA caching allocator "
                               "since the current or last job started (GPU workers only)")
                         .Register(*registry_)) {}

  absl::Status Listen(const std::string& listen) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
        StartMetricsHttp("--metrics-listen", listen, registry_, [this] { Refresh(); });
    if (!server.ok()) return server.status();
    server_ = *std::move(server);
    return absl::OkStatus();
  }

  int port() const override { return server_->port(); }

  void RpcDone(const char* rpc, grpc::StatusCode code) override {
    rpcs_.Add({{"rpc", rpc}, {"code", CodeName(code)}}).Increment();
  }
  void JobStarted() override {
    leased_.Increment();
    progress_.Set(0);
    running_.Set(1);
  }
  void JobProgress(double fraction) override {
    if (fraction >= 0 && fraction <= 1) progress_.Set(fraction);
  }
  void JobEnded(const std::string& task, const char* outcome, double seconds,
                const nlohmann::json& timing) override {
    const std::string t = task.empty() ? "unread" : task;
    running_.Set(0);
    jobs_.Add({{"task", t}, {"outcome", outcome}}).Increment();
    duration_.Add({{"task", t}}, DurationBuckets()).Observe(seconds);
    if (timing.is_null()) return;
    if (const int64_t n = TimingInt(timing, "forward_tokens"); n >= 0) {
      forward_tokens_.Add({{"task", t}}).Increment(static_cast<double>(n));
    }
    if (const int64_t n = TimingInt(timing, "scored_tokens"); n >= 0) {
      scored_tokens_.Add({{"task", t}}).Increment(static_cast<double>(n));
    }
    if (timing.contains("tokens_per_s") && timing["tokens_per_s"].is_number()) {
      tokens_per_s_.Set(timing["tokens_per_s"].get<double>());
    }
  }

 private:
  static std::string CodeName(grpc::StatusCode code) {
    static const char* const kNames[] = {"OK",
                                         "CANCELLED",
                                         "UNKNOWN",
                                         "INVALID_ARGUMENT",
                                         "DEADLINE_EXCEEDED",
                                         "NOT_FOUND",
                                         "ALREADY_EXISTS",
                                         "PERMISSION_DENIED",
                                         "RESOURCE_EXHAUSTED",
                                         "FAILED_PRECONDITION",
                                         "ABORTED",
                                         "OUT_OF_RANGE",
                                         "UNIMPLEMENTED",
                                         "INTERNAL",
                                         "UNAVAILABLE",
                                         "DATA_LOSS",
                                         "UNAUTHENTICATED"};
    const int i = static_cast<int>(code);
    return i >= 0 && i < 17 ? kNames[i] : "OTHER";
  }

  // Scrape thread.
  void Refresh() {
    const ResidentMemory m = ReadResidentMemory();
    if (m.current >= 0) rss_.Set(static_cast<double>(m.current));
    if (m.peak >= 0) rss_peak_.Set(static_cast<double>(m.peak));
    if (std::optional<DeviceMemory> d = evaluator_->DeviceMemoryInUse(); d.has_value()) {
      device_.Add({{"device", d->device}}).Set(static_cast<double>(d->allocated));
      device_peak_.Add({{"device", d->device}}).Set(static_cast<double>(d->peak));
    }
  }

  const Evaluator* evaluator_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& jobs_;
  prometheus::Counter& leased_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Family<prometheus::Counter>& forward_tokens_;
  prometheus::Family<prometheus::Counter>& scored_tokens_;
  prometheus::Gauge& tokens_per_s_;
  prometheus::Gauge& running_;
  prometheus::Gauge& progress_;
  prometheus::Family<prometheus::Counter>& rpcs_;
  prometheus::Gauge& rss_;
  prometheus::Gauge& rss_peak_;
  prometheus::Family<prometheus::Gauge>& device_;
  prometheus::Family<prometheus::Gauge>& device_peak_;
  // Last: destroyed first, so no scrape runs while the rest goes away.
  std::unique_ptr<MetricsHttpServer> server_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerMetrics>> StartWorkerMetrics(const std::string& listen,
                                                                  const Evaluator* evaluator) {
  auto m = std::make_unique<PrometheusWorkerMetrics>(evaluator);
  if (absl::Status s = m->Listen(listen); !s.ok()) return s;
  return m;
}

#else  // no prometheus-cpp or no cpp-httplib

absl::StatusOr<std::unique_ptr<WorkerMetrics>> StartWorkerMetrics(const std::string& listen,
                                                                  const Evaluator*) {
  return MetricsUnavailable("--metrics-listen", "kvsweep-worker", listen);
}

#endif

}  // namespace kvsweep
