#include "coordinator/metrics.h"

#include <algorithm>
#include <chrono>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/mutex.h"
#include "rpc/http_listen.h"

#ifdef KVSWEEP_WITH_PROMETHEUS
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#endif

namespace kvsweep {

#if defined(KVSWEEP_WITH_PROMETHEUS) && defined(KVSWEEP_WITH_HTTPLIB)
namespace {

// Job states as the jobs table spells them, in JobState order.
constexpr const char* kStates[] = {"queued", "leased",      "done",
                                   "failed", "quarantined", "cancelled"};

// Upper bucket edges in seconds: a lease or a result is answered after its commit (an fsync),
// so most answers fall between 1 and 100 ms.
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return *b;
}

class PrometheusMetrics final : public MetricsServer {
 public:
  PrometheusMetrics(ResultStore* store, Scheduler* scheduler)
      : store_(store),
        scheduler_(scheduler),
        registry_(std::make_shared<prometheus::Registry>()),
        jobs_(prometheus::BuildGauge()
                  .Name("kvsweep_jobs")
                  .Help("Jobs in the database by state (refreshed at most once a second)")
                  .Register(*registry_)),
        lease_latency_(prometheus::BuildHistogram()
                           .Name("kvsweep_lease_latency_seconds")
                           .Help("Lease calls: handler start to answer, in the coordinator")
                           .Register(*registry_)
                           .Add({}, LatencyBuckets())),
        complete_latency_(prometheus::BuildHistogram()
                              .Name("kvsweep_complete_latency_seconds")
                              .Help("Complete calls: handler start to answer, in the coordinator")
                              .Register(*registry_)
                              .Add({}, LatencyBuckets())),
        commits_(prometheus::BuildCounter()
                     .Name("kvsweep_commits_total")
                     .Help("Scheduler transactions committed")
                     .Register(*registry_)
                     .Add({})),
        mutations_(prometheus::BuildCounter()
                       .Name("kvsweep_mutations_total")
                       .Help("Mutations in the committed transactions")
                       .Register(*registry_)
                       .Add({})),
        results_(prometheus::BuildCounter()
                     .Name("kvsweep_results_total")
                     .Help("Results recorded by this coordinator process (duplicates excluded)")
                     .Register(*registry_)
                     .Add({})) {
    for (int i = 0; i < 6; ++i) state_gauges_[i] = &jobs_.Add({{"state", kStates[i]}});
  }

  absl::Status Listen(const std::string& listen) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
        StartMetricsHttp("--metrics-listen", listen, registry_, [this] { MaybeRefresh(); });
    if (!server.ok()) return server.status();
    server_ = *std::move(server);
    return absl::OkStatus();
  }

  int port() const override { return server_->port(); }

  void LeaseAnswered(double ms) override { lease_latency_.Observe(ms / 1000.0); }
  void CompleteAnswered(double ms, bool recorded) override {
    complete_latency_.Observe(ms / 1000.0);
    if (recorded) results_.Increment();
  }

  // Scrape threads only; the worker paths never take refresh_mu_.
  void MaybeRefresh() {
    MutexLock lock(&refresh_mu_);
    const auto now = std::chrono::steady_clock::now();
    if (refreshed_ && now - last_refresh_ < std::chrono::seconds(1)) return;
    refreshed_ = true;
    last_refresh_ = now;
    absl::StatusOr<QueryResult> q = store_->Query("SELECT state, COUNT(*) FROM jobs GROUP BY state",
                                                  /*max_rows=*/16, /*timeout_ms=*/2000);
    if (q.ok()) {
      int64_t counts[6] = {0, 0, 0, 0, 0, 0};
      for (const std::vector<QueryResult::Value>& row : q->rows) {
        if (row.size() != 2) continue;
        const auto* state = std::get_if<std::string>(&row[0]);
        const auto* n = std::get_if<int64_t>(&row[1]);
        if (state == nullptr || n == nullptr) continue;
        for (int i = 0; i < 6; ++i) {
          if (*state == kStates[i]) counts[i] = *n;
        }
      }
      for (int i = 0; i < 6; ++i) state_gauges_[i]->Set(static_cast<double>(counts[i]));
    } else {
      KV_LOG(WARNING) << "metrics: counting jobs: " << q.status().ToString();
    }
    const SchedulerStats s = scheduler_->Stats();
    // Counters only go up: add what was committed since the last scrape.
    if (s.commits > last_commits_)
      commits_.Increment(static_cast<double>(s.commits - last_commits_));
    if (s.mutations > last_mutations_) {
      mutations_.Increment(static_cast<double>(s.mutations - last_mutations_));
    }
    last_commits_ = std::max(last_commits_, s.commits);
    last_mutations_ = std::max(last_mutations_, s.mutations);
  }

 private:
  ResultStore* store_;
  Scheduler* scheduler_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Gauge* state_gauges_[6] = {};
  prometheus::Histogram& lease_latency_;
  prometheus::Histogram& complete_latency_;
  prometheus::Counter& commits_;
  prometheus::Counter& mutations_;
  prometheus::Counter& results_;
  Mutex refresh_mu_;
  bool refreshed_ ABSL_GUARDED_BY(refresh_mu_) = false;
  std::chrono::steady_clock::time_point last_refresh_ ABSL_GUARDED_BY(refresh_mu_);
  int64_t last_commits_ ABSL_GUARDED_BY(refresh_mu_) = 0;
  int64_t last_mutations_ ABSL_GUARDED_BY(refresh_mu_) = 0;
  // Last: destroyed first, so no scrape runs while the rest goes away.
  std::unique_ptr<MetricsHttpServer> server_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetricsServer(const std::string& listen,
                                                                  ResultStore* store,
                                                                  Scheduler* scheduler) {
  auto m = std::make_unique<PrometheusMetrics>(store, scheduler);
  if (absl::Status s = m->Listen(listen); !s.ok()) return s;
  return m;
}

#else  // no prometheus-cpp or no cpp-httplib

absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetricsServer(const std::string& listen,
                                                                  ResultStore*, Scheduler*) {
  return MetricsUnavailable("--metrics-listen", "kvsweep-coordinator", listen);
}

#endif

}  // namespace kvsweep
