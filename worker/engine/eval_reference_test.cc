// End-to-end numbers against transformers (tests/fixtures/task_reference_ci.json, produced by
// tools/reference/make_reference.py on the accelerator, fp32, TF32 off): LAMBADA on the first
// 400 documents and WikiText on the first 200 lines of wiki.test.raw at W = max positions,
// W = 128 and W = 128 / C = 65, for ref-gpt2 and ref-llama, method none. Relative loglik_sum
// difference <= 1e-4; every count exact.
#include <cmath>
#include <fstream>

#include "common/file_util.h"
#include "common/json_util.h"
#include "common/utf8.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"
#include "worker/engine/eval.h"
#include "worker/engine/tasks/task.h"

namespace kvsweep::engine {
namespace {

const nlohmann::json& Reference() {
  static const nlohmann::json* ref = [] {
    auto j = ReadJsonFile(std::string(KVSWEEP_FIXTURES) + "/task_reference_ci.json");
    EXPECT_TRUE(j.ok()) << j.status();
    return new nlohmann::json(j.ok() ? *j : nlohmann::json::object());
  }();
  return *ref;
}

// The first `n` lines of wiki.test.raw, as `head -n` writes them.
std::string WikiHead(int n) {
  const std::string path = ::testing::TempDir() + "/wiki_head_" + std::to_string(n) + ".raw";
  if (!PathExists(path)) {
    std::string text = *ReadFile(AssetsDir() + "/data/wikitext-2/wiki.test.raw");
    size_t pos = 0;
    for (int i = 0; i < n && pos != std::string::npos; ++i) {
      pos = text.find('\n', pos);
      if (pos != std::string::npos) ++pos;
    }
    EXPECT_TRUE(WriteFileAtomic(path, text.substr(0, pos)).ok());
  }
  return path;
}

void ExpectClose(const nlohmann::json& got, const nlohmann::json& want, const std::string& what) {
  const double g = got["loglik_sum"].get<double>(), w = want["loglik_sum"].get<double>();
  const double rel = std::fabs(g - w) / std::fabs(w);
  EXPECT_LE(rel, 1e-4) << what << ": loglik_sum " << g << " vs transformers " << w;
  std::cout << what << ": rel |d loglik_sum| = " << rel << "\n";
  for (const char* count : {"n", "tokens", "words", "bytes", "windows"}) {
    if (want.contains(count)) {
      EXPECT_EQ(got[count], want[count]) << what << " " << count;
    }
  }
  if (want.contains("acc")) {
    EXPECT_DOUBLE_EQ(got["acc"].get<double>(), want["acc"].get<double>()) << what;
  }
}

class RefTaskTest : public ::testing::TestWithParam<std::string> {
 protected:
  nlohmann::json Run(const std::string& task, const std::string& data, int limit, int window,
                     int context) {
    JobRequest r;
    r.model_path = AssetsDir() + "/models/" + GetParam();
    r.task = task;
    r.data_path = data;
    r.limit = limit;
    r.window = window;
    r.context = context;
    auto spec = ResolveJob(r);
    EXPECT_TRUE(spec.ok()) << spec.status();
    auto out = engine_.Run(*spec, nullptr);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? (*out)["metrics"][task] : nlohmann::json();
  }
  const nlohmann::json& Ref(const std::string& key) {
    return Reference()["models"][GetParam()]["methods"]["none"]["ci"][key];
  }
  Engine engine_{EngineOptions{}};
};

TEST_P(RefTaskTest, LambadaFirst400MatchesTransformers) {
  ExpectClose(
      Run("lambada_openai", AssetsDir() + "/data/lambada_openai/lambada_test.jsonl", 400, 0, 1),
      Ref("lambada_openai"), GetParam() + " lambada");
}

TEST_P(RefTaskTest, WikitextRollingWindowsMatchTransformers) {
  const std::string data = WikiHead(200);
  // The stream convention: the reference fixture's "wikitext" entries score the lines as one
  // stream.
  ExpectClose(Run("wikitext_stream", data, 0, 0, 1), Ref("wikitext"),
              GetParam() + " wikitext_stream W=max");
  ExpectClose(Run("wikitext_stream", data, 0, 128, 1), Ref("wikitext_w128"),
              GetParam() + " wikitext_stream W=128");
  ExpectClose(Run("wikitext_stream", data, 0, 128, 65), Ref("wikitext_w128_c65"),
              GetParam() + " wikitext_stream W=128 C=65");
}

INSTANTIATE_TEST_SUITE_P(RefModels, RefTaskTest, ::testing::Values("ref-gpt2", "ref-llama"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST(TaskMathTest, RollingWindowsPredictEveryTokenOnce) {
  std::vector<int32_t> toks(1000);
  for (int i = 0; i < 1000; ++i) toks[i] = i + 10;
  for (auto [W, C] :
       std::vector<std::pair<int, int>>{{128, 1}, {128, 65}, {128, 128}, {2000, 1}, {7, 3}}) {
    auto ws = RollingWindows(toks, 1, W, C);
    std::vector<int32_t> predicted;
    for (const auto& w : ws) {
      ASSERT_LE(static_cast<int>(w.input.size()), W);
      ASSERT_LE(w.cont.size(), w.input.size());
      // The scored positions predict exactly `cont`: input[j+1] == cont[...] inside the window.
      const size_t n = w.cont.size(), L = w.input.size();
      for (size_t i = 0; i + 1 < n; ++i) EXPECT_EQ(w.input[L - n + i + 1], w.cont[i]);
      predicted.insert(predicted.end(), w.cont.begin(), w.cont.end());
    }
    EXPECT_EQ(predicted, toks) << "W=" << W << " C=" << C;
    // Later windows see at least C-1 tokens of context.
    for (size_t k = 1; k < ws.size(); ++k)
      EXPECT_GE(ws[k].input.size() - ws[k].cont.size() + 1, static_cast<size_t>(C));
  }
  EXPECT_EQ(RollingWindows(toks, 1, 128, 1).front().input.front(), 1);  // prefix token first
}

TEST(TaskMathTest, WordsAndUtf8) {
  EXPECT_EQ(CountWords(""), 0);
  EXPECT_EQ(CountWords("  a b\n\nc\t d  "), 4);
  EXPECT_EQ(CountWords("\xc2\xa0x"), 1);  // NBSP is not ASCII whitespace
  EXPECT_EQ(FirstInvalidUtf8Byte("ok \xe2\x82\xac"), -1);
  EXPECT_EQ(FirstInvalidUtf8Byte("ab\xff"), 2);
  EXPECT_EQ(FirstInvalidUtf8Byte("\xc0\xaf"), 0);      // overlong
  EXPECT_EQ(FirstInvalidUtf8Byte("\xed\xa0\x80"), 0);  // surrogate
  EXPECT_EQ(FirstInvalidUtf8Byte("x\xe2\x82"), 1);     // truncated
}

}  // namespace
}  // namespace kvsweep::engine
