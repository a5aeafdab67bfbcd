// Every RPC handler of the coordinator, over real gRPC on loopback against a SQLite file: the
// first byte picks the call, the rest is its request message. Whatever arrives, the coordinator
// answers with a status (never crashes, hangs past the call's deadline or writes a bad row);
// the database passes its integrity check at the end.
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "coordinator/server.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "rpc/rpc_util.h"

namespace {

using namespace kvsweep;

struct Env {
  std::unique_ptr<CoordinatorServer> server;
  std::unique_ptr<v1::SweepService::Stub> sweeps;
  std::unique_ptr<v1::WorkerService::Stub> workers;
  std::unique_ptr<v1::FileService::Stub> files;
};

Env* GetEnv() {
  static Env* env = [] {
    InitRpcProcess();
    auto* e = new Env;
    char tmpl[] = "/tmp/kvsweep_fuzz_rpc_XXXXXX";
    const char* dir = ::mkdtemp(tmpl);
    if (dir == nullptr) std::abort();
    CoordinatorOptions o;
    o.db_path = std::string(dir) + "/fuzz.db";
    o.listen = "127.0.0.1:0";
    o.scheduler.lease_ttl_ms = 1000;
    o.service.query_timeout_ms = 200;
    auto s = CoordinatorServer::Start(o);
    if (!s.ok()) std::abort();
    e->server = std::move(*s);
    ClientConfig c;
    c.address = e->server->address();
    auto ch = MakeChannel(c);
    if (!ch.ok()) std::abort();
    e->sweeps = v1::SweepService::NewStub(*ch);
    e->workers = v1::WorkerService::NewStub(*ch);
    e->files = v1::FileService::NewStub(*ch);
    std::atexit([] {
      Env* e = GetEnv();
      if (!e->server->store()->IntegrityCheck().ok()) std::abort();
    });
    return e;
  }();
  return env;
}

template <typename Req>
bool Parse(const uint8_t* data, size_t size, Req* req) {
  return req->ParseFromArray(data, static_cast<int>(size));
}

void Deadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Env* env = GetEnv();
  const uint8_t which = data[0] % 13;
  ++data;
  --size;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  switch (which) {
    case 0: {
      v1::SubmitSweepRequest r;
      if (!Parse(data, size, &r)) return 0;
      r.set_base_dir("/nonexistent-kvsweep-fuzz");
      v1::SubmitSweepResponse resp;
      (void)env->sweeps->SubmitSweep(&ctx, r, &resp);
      break;
    }
    case 1: {
      v1::GetStatusRequest r;
      if (!Parse(data, size, &r)) return 0;
      v1::GetStatusResponse resp;
      (void)env->sweeps->GetStatus(&ctx, r, &resp);
      break;
    }
    case 2: {
      v1::WatchRequest r;
      if (!Parse(data, size, &r)) return 0;
      auto reader = env->sweeps->Watch(&ctx, r);
      v1::SweepStatus st;
      for (int i = 0; i < 3 && reader->Read(&st); ++i) {
      }
      ctx.TryCancel();
      (void)reader->Finish();
      break;
    }
    case 3: {
      v1::CancelRequest r;
      if (!Parse(data, size, &r)) return 0;
      v1::CancelResponse resp;
      (void)env->sweeps->Cancel(&ctx, r, &resp);
      break;
    }
    case 4: {
      v1::RetryRequest r;
      if (!Parse(data, size, &r)) return 0;
      v1::RetryResponse resp;
      (void)env->sweeps->Retry(&ctx, r, &resp);
      break;
    }
    case 5: {
      v1::QueryRequest r;
      if (!Parse(data, size, &r)) return 0;
      v1::QueryResponse resp;
      (void)env->sweeps->Query(&ctx, r, &resp);
      break;
    }
    case 6: {
      v1::ExportRequest r;
      if (!Parse(data, size, &r)) return 0;
      auto reader = env->sweeps->Export(&ctx, r);
      v1::ExportRecord rec;
      while (reader->Read(&rec)) {
      }
      (void)reader->Finish();
      break;
    }
    case 7: {
      v1::LeaseRequest r;
      if (!Parse(data, size, &r)) return 0;
      v1::LeaseResponse resp;
      (void)env->workers->Lease(&ctx, r, &resp);
      break;
    }
    case 8: {
      v1::HeartbeatRequest r;
      if (!Parse(data, size, &r)) return 0;
      v1::HeartbeatResponse resp;
      (void)env->workers->Heartbeat(&ctx, r, &resp);
      break;
    }
    case 9: {
      v1::CompleteRequest r;
      if (!Parse(data, size, &r)) return 0;
      v1::CompleteResponse resp;
      (void)env->workers->Complete(&ctx, r, &resp);
      break;
    }
    case 10: {
      v1::FailRequest r;
      if (!Parse(data, size, &r)) return 0;
      v1::FailResponse resp;
      (void)env->workers->Fail(&ctx, r, &resp);
      break;
    }
    case 12: {
      v1::FetchFileRequest r;
      if (!Parse(data, size, &r)) return 0;
      auto reader = env->files->FetchFile(&ctx, r);
      v1::FileChunk c;
      while (reader->Read(&c)) {
      }
      (void)reader->Finish();
      break;
    }
    default: {
      v1::GetSubmissionRequest r;
      if (!Parse(data, size, &r)) return 0;
      v1::SubmitSweepResponse resp;
      (void)env->sweeps->GetSubmission(&ctx, r, &resp);
      break;
    }
  }
  return 0;
}
