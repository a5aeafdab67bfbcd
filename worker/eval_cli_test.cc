// `kvsweep-worker eval` refuses bad method specs and impossible combinations with exit status 2
// and one line on stderr, before any model loads: the CLI resolves the job from
// config.json alone first. Runs the real binary.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace {

struct Outcome {
  int status = -1;
  std::string out, err;
};

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Assets() {
  const char* a = std::getenv("KVSWEEP_ASSETS");
  return a != nullptr && *a ? a : "../shared/assets";
}

Outcome RunWorker(const std::string& args, const std::string& env = "") {
  const std::string dir = ::testing::TempDir();
  const std::string out = dir + "/cli_out_" + std::to_string(getpid());
  const std::string err = dir + "/cli_err_" + std::to_string(getpid());
  const std::string cmd =
      env + " " + KVSWEEP_WORKER_BIN + " eval " + args + " --format json >" + out + " 2>" + err;
  Outcome o;
  const int rc = std::system(cmd.c_str());
  o.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  o.out = Slurp(out);
  o.err = Slurp(err);
  std::remove(out.c_str());
  std::remove(err.c_str());
  return o;
}

void ExpectRefused(const std::string& args, const std::string& fragment,
                   const std::string& env = "") {
  Outcome o = RunWorker(args, env);
  EXPECT_EQ(o.status, 2) << args << "\nstderr: " << o.err;
  EXPECT_EQ(o.out, "") << args;
  EXPECT_EQ(o.err.rfind("error: ", 0), 0u) << args << "\nstderr: " << o.err;
  EXPECT_EQ(o.err.find('\n'), o.err.size() - 1) << "not one line: " << o.err;
  EXPECT_NE(o.err.find(fragment), std::string::npos)
      << args << "\nwanted: " << fragment << "\ngot: " << o.err;
  // Nothing was loaded: the engine logs every model load on stderr.
  EXPECT_EQ(o.err.find("loaded"), std::string::npos) << o.err;
}

std::string Job(const std::string& model, const std::string& method) {
  return "--model " + Assets() + "/models/" + model + " --task lambada_openai --data " + Assets() +
         "/data/lambada_openai/lambada_test.jsonl --limit 5 --method '" + method + "'";
}

TEST(EvalCliTest, BadMethodSpecsAreOneLineErrorsBeforeAnyModelLoads) {
  ExpectRefused(Job("ref-llama", "quant:bits=4,group=48"), "group=48 does not divide head_dim=64");
  ExpectRefused(Job("ref-gpt2", "rank:r=65"), "r=65 exceeds head_dim=64");
  ExpectRefused(Job("ref-gpt2", "hybrid:r=80,bits=4"), "r=80 exceeds head_dim=64");
  ExpectRefused(Job("ref-gpt2", "hybrid:r=30,bits=4,group=8"), "group=8 does not divide r=30");
  ExpectRefused(Job("ref-llama", "quant:bits=4,colour=red"), "unknown key 'colour' for quant");
  ExpectRefused(Job("ref-llama", "zip:bits=4"), "unknown family 'zip'");
  ExpectRefused(Job("ref-llama", "quant:bits=9"), "bits=9 out of range [1, 8]");
  ExpectRefused(Job("ref-llama", "quant:bits=1,sym=1"), "sym=1 needs bits >= 2");
  ExpectRefused(Job("ref-llama", "quant:bits=4,axis=channel,packed=1"),
                "packed=1 supports axis=token");
  ExpectRefused(Job("ref-llama", "quant:bits=4,residual=16,packed=1"),
                "packed=1 supports residual=0 only");
  ExpectRefused(Job("ref-llama", "quant:bits=4,target=v,rope=pre"), "rope=pre applies to keys");
  ExpectRefused(Job("ref-llama", "rank:r=16,basis=svd,rope=post"), "implies rope=pre");
  ExpectRefused(Job("ref-llama", "quant:bits=2,axis=channel,basis=hadamard"),
                "basis rotation is defined for axis=token only");
  ExpectRefused(Job("ref-llama", "rank"), "missing required key 'r'");
}

TEST(EvalCliTest, ImpossibleCombinationsAreOneLineErrors) {
  ExpectRefused(Job("ref-llama", "quant:bits=4") + " --kv-heads 3",
                "kv_heads: 3 does not divide the model's 2 KV heads");
  ExpectRefused(Job("ref-gpt2", "none") + " --kv-heads 3",
                "kv_heads: 3 does not divide the model's 4 KV heads");
  // A PCA basis needs a calibration text: an explicit path that does not exist...
  ExpectRefused(Job("ref-llama", "rank:r=16") + " --calibration /nonexistent/calib.txt",
                "needs a calibration text and '/nonexistent/calib.txt' does not exist");
  // ...or no --calibration and no default under $KVSWEEP_ASSETS.
  const std::string empty = ::testing::TempDir();
  const std::string model = Assets() + "/models/ref-gpt2";
  ExpectRefused("--model " + model + " --task lambada_openai --data " + Assets() +
                    "/data/lambada_openai/lambada_test.jsonl --method 'quant:bits=4,basis=pca'",
                "needs a calibration text and '" + empty, "KVSWEEP_ASSETS=" + empty);
  ExpectRefused(Job("ref-gpt2", "rank:r=16") + " --calibration-windows 0", "windows must be >= 1");
  ExpectRefused(Job("ref-gpt2", "none") + " --window 4096",
                "window: 4096 exceeds the model's max positions 1024");
}

}  // namespace
