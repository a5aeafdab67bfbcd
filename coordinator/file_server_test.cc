// FileService.FetchFile over real gRPC against an in-process coordinator with role tokens and a
// real sweep (ref-gpt2 from KVSWEEP_ASSETS, a data file of the test's own): only the worker
// role, only under the current lease, only the job's input files by their recorded hash, in
// bounded chunks, from an offset; a file changed since it was hashed is refused, whether its
// mtime changed or not.
#include "coordinator/file_server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/hash.h"
#include "common/json_util.h"
#include "common/path_policy.h"
#include "coordinator/server.h"
#include "gtest/gtest.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "rpc/rpc_util.h"
#include "spec/job_spec.h"

namespace kvsweep {
namespace {

class FileServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = JoinPath(AssetsDir(), "models/ref-gpt2");
    if (!PathExists(JoinPath(model_, "config.json"))) {
      GTEST_SKIP() << "ref-gpt2 not found under KVSWEEP_ASSETS=" << AssetsDir();
    }
    char tmpl[] = "/tmp/kvsweep_file_server_XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    data_ = JoinPath(dir_, "data.txt");
    std::string text;
    for (int i = 0; i < 3000; ++i) absl::StrAppend(&text, "line ", i, " of the test's data.\n");
    ASSERT_TRUE(WriteFileAtomic(data_, text).ok());
    CoordinatorOptions o;
    o.db_path = JoinPath(dir_, "kvsweep.db");
    o.listen = "127.0.0.1:0";
    o.tokens.worker = "tok-worker";
    o.tokens.client = "tok-client";
    o.tokens.reader = "tok-reader";
    absl::StatusOr<std::unique_ptr<CoordinatorServer>> s = CoordinatorServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    ClientConfig c;
    c.address = server_->address();
    channel_ = *MakeChannel(c);
    files_ = v1::FileService::NewStub(channel_);

    // Submit a one-job sweep and lease it as a worker.
    v1::SubmitSweepRequest sub;
    sub.set_sweep_yaml(absl::StrCat("name: files\nmodels:\n  - path: ", model_,
                                    "\ntasks:\n  - task: text\n    data: ", data_,
                                    "\n    window: 64\nmethods: [none]\n"));
    sub.set_base_dir(dir_);
    v1::SubmitSweepResponse sr;
    grpc::ClientContext sctx;
    Prepare(&sctx, "tok-client", 60000);
    ASSERT_TRUE(v1::SweepService::NewStub(channel_)->SubmitSweep(&sctx, sub, &sr).ok());
    for (int i = 0; sr.pending() && i < 60; ++i) {
      v1::GetSubmissionRequest g;
      g.set_submission(sr.submission());
      g.set_wait_ms(1000);
      grpc::ClientContext gctx;
      Prepare(&gctx, "tok-client", 10000);
      ASSERT_TRUE(v1::SweepService::NewStub(channel_)->GetSubmission(&gctx, g, &sr).ok());
    }
    ASSERT_EQ(sr.jobs_enqueued(), 1);
    v1::LeaseRequest lr;
    lr.mutable_worker()->set_worker_id("w1");
    lr.mutable_worker()->set_session("s1");
    grpc::ClientContext lctx;
    Prepare(&lctx, "tok-worker", 10000);
    ASSERT_TRUE(v1::WorkerService::NewStub(channel_)->Lease(&lctx, lr, &lease_).ok());
    ASSERT_TRUE(lease_.has_job());
    spec_ = *JobSpec::FromJson(*ParseJson(lease_.spec_json(), "spec"));
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  static void Prepare(grpc::ClientContext* ctx, const std::string& token, int ms) {
    ctx->AddMetadata("authorization", "Bearer " + token);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
  }

  v1::FetchFileRequest Req(const std::string& sha, int64_t offset = 0, int chunk = 0) const {
    v1::FetchFileRequest r;
    r.set_worker_id("w1");
    r.set_job_id(lease_.job_id());
    r.set_lease_id(lease_.lease_id());
    r.set_fencing_token(lease_.fencing_token());
    r.set_sha256(sha);
    r.set_offset(offset);
    r.set_chunk_bytes(chunk);
    return r;
  }

  struct Fetched {
    grpc::Status status;
    std::string bytes;
    int chunks = 0;
    size_t largest = 0;
    int64_t size = -1;
    int64_t first_offset = -1;
  };
  Fetched Fetch(const v1::FetchFileRequest& r, const std::string& token = "tok-worker") {
    Fetched f;
    grpc::ClientContext ctx;
    Prepare(&ctx, token, 30000);
    auto reader = files_->FetchFile(&ctx, r);
    v1::FileChunk c;
    while (reader->Read(&c)) {
      if (f.first_offset < 0) f.first_offset = c.offset();
      EXPECT_EQ(c.offset(), f.first_offset + static_cast<int64_t>(f.bytes.size()));
      f.bytes += c.data();
      f.size = c.size();
      f.largest = std::max(f.largest, c.data().size());
      ++f.chunks;
    }
    f.status = reader->Finish();
    return f;
  }

  // The hash the spec records for the input named `name` (the coordinator's spelling of the
  // path may differ from the test's: KVSWEEP_ASSETS may hold "..").
  std::string Sha(const std::string& path) const {
    for (const auto& [p, sha] : spec_.input_sha256) {
      if (BaseName(p) == BaseName(path)) return sha;
    }
    ADD_FAILURE() << "no input named " << BaseName(path);
    return "";
  }

  std::string dir_, model_, data_;
  std::unique_ptr<CoordinatorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::FileService::Stub> files_;
  v1::LeaseResponse lease_;
  JobSpec spec_;
};

TEST_F(FileServerTest, ServesTheLeasedJobsInputsInBoundedChunksFromAnOffset) {
  const std::string config = JoinPath(model_, "config.json");
  Fetched f = Fetch(Req(Sha(config)));
  ASSERT_TRUE(f.status.ok()) << f.status.error_message();
  EXPECT_EQ(f.bytes, *ReadFile(config));
  EXPECT_EQ(f.size, static_cast<int64_t>(f.bytes.size()));

  const std::string weights = JoinPath(model_, "model-00001-of-00002.safetensors");
  f = Fetch(Req(Sha(weights)));
  ASSERT_TRUE(f.status.ok()) << f.status.error_message();
  EXPECT_EQ(Sha256Hex(f.bytes), Sha(weights));
  EXPECT_LE(f.largest, static_cast<size_t>(kMaxFileChunkBytes));
  EXPECT_GT(f.chunks, 1);

  f = Fetch(Req(Sha(data_), /*offset=*/0, /*chunk=*/4096));
  ASSERT_TRUE(f.status.ok()) << f.status.error_message();
  EXPECT_EQ(f.bytes, *ReadFile(data_));
  EXPECT_LE(f.largest, 4096u);
  const int64_t size = f.size;
  f = Fetch(Req(Sha(data_), size - 100, 4096));  // resume
  ASSERT_TRUE(f.status.ok()) << f.status.error_message();
  EXPECT_EQ(f.first_offset, size - 100);
  EXPECT_EQ(f.bytes, ReadFile(data_)->substr(size - 100));
  f = Fetch(Req(Sha(data_), size));  // at the end: the size alone
  ASSERT_TRUE(f.status.ok()) << f.status.error_message();
  EXPECT_EQ(f.bytes, "");
  EXPECT_EQ(f.size, size);
  EXPECT_EQ(Fetch(Req(Sha(data_), size + 1)).status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
}

TEST_F(FileServerTest, OnlyTheWorkerRoleUnderTheCurrentLeaseGetsOnlyInputFiles) {
  const v1::FetchFileRequest ok = Req(Sha(data_));
  EXPECT_EQ(Fetch(ok, "tok-reader").status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Fetch(ok, "tok-client").status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Fetch(ok, "no-such-token").status.error_code(), grpc::StatusCode::UNAUTHENTICATED);

  // A hash that is no input of the job: the sweep file's own, a file beside the model, junk.
  Fetched f = Fetch(Req(Sha256Hex("not a file of this job")));
  EXPECT_EQ(f.status.error_code(), grpc::StatusCode::NOT_FOUND) << f.status.error_message();
  EXPECT_TRUE(f.bytes.empty());
  for (const char* bad : {"../../etc/passwd", "", "ABCDEF"}) {
    EXPECT_EQ(Fetch(Req(bad)).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
  }

  v1::FetchFileRequest r = ok;
  r.set_fencing_token(lease_.fencing_token() + 1);
  EXPECT_NE(Fetch(r).status.error_code(), grpc::StatusCode::OK);
  r = ok;
  r.set_worker_id("w2");
  EXPECT_NE(Fetch(r).status.error_code(), grpc::StatusCode::OK);
  r = ok;
  r.set_lease_id("not-the-lease");
  EXPECT_NE(Fetch(r).status.error_code(), grpc::StatusCode::OK);
  r = ok;
  r.set_chunk_bytes(kMaxFileChunkBytes + 1);
  EXPECT_EQ(Fetch(r).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  r = ok;
  r.set_offset(-1);
  EXPECT_EQ(Fetch(r).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Fetch(ok).status.ok());
}

TEST_F(FileServerTest, AFileChangedSinceItWasHashedIsNeverServedUnderTheOldHash) {
  const std::string sha = Sha(data_);
  std::string text = *ReadFile(data_);
  struct stat before;
  ASSERT_EQ(::stat(data_.c_str(), &before), 0);
  // Same size, same mtime, other bytes: only the hash of what is streamed can tell.
  text[text.size() / 2] ^= 1;
  ASSERT_TRUE(WriteFileAtomic(data_, text).ok());
  const struct timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, data_.c_str(), times, 0), 0);
  Fetched f = Fetch(Req(sha));
  EXPECT_EQ(f.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(f.status.error_message().find("input changed since submit: " + data_),
            std::string::npos)
      << f.status.error_message();

  // A new mtime: refused before the first byte.
  text += "one more line\n";
  ASSERT_TRUE(WriteFileAtomic(data_, text).ok());
  f = Fetch(Req(sha));
  EXPECT_EQ(f.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(f.bytes.empty());

  ASSERT_EQ(::unlink(data_.c_str()), 0);
  EXPECT_EQ(Fetch(Req(sha)).status.error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace kvsweep
