// The coordinator's web dashboard (--http): a real kvsweep-coordinator with sweeps run by fake
// workers, its pages and JSON fetched over HTTP (content, escaping of a label holding a
// <script> tag, bounded parameters, no lease key anywhere), the token rules, the loopback rule,
// and headless Chromium on the pages: they load with JavaScript off and on, a screenshot is a
// PNG of the window's size, and a running sweep's progress advances between two loads. The
// Chromium part is skipped with a message where there is no Chromium (a failure under CI=true).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <regex>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/plot.h"
#include "common/file_util.h"
#include "common/subprocess.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/harness.h"

namespace kvsweep {
namespace testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

Harness::WorkerFlags Fake(int sleep_ms = 150) {
  Harness::WorkerFlags f;
  f.force_fake = true;
  f.fake_sleep_ms = sleep_ms;
  return f;
}

// Starts the harness's coordinator with the dashboard on an ephemeral port; returns the port.
int StartWithDashboard(Harness& h, std::vector<std::string> extra = {}) {
  const std::string port_file = JoinPath(h.dir(), "http_port");
  Harness::CoordinatorFlags flags;
  flags.extra = {"--http", "127.0.0.1:0", "--http-port-file", port_file};
  flags.extra.insert(flags.extra.end(), extra.begin(), extra.end());
  h.StartCoordinator(flags);
  int port = 0;
  WaitUntil(
      [&] {
        return absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFile(port_file).value_or("")),
                                &port) &&
               port > 0;
      },
      std::chrono::seconds(10));
  return port;
}

// The sweep the page tests read: `none` and two quantized methods, one of them labelled with
// markup (labels come from the user's YAML).
constexpr char kEvilLabel[] = "<script>alert(\"x&y\")</script>";

std::string EscapingSweepYaml(const Harness& h) {
  const char* assets = std::getenv("KVSWEEP_ASSETS");
  const std::string a = assets != nullptr ? assets : "../shared/assets";
  return absl::StrCat("name: dash\nmodels:\n  - name: ref-llama\n    path: ", a,
                      "/models/ref-llama\ntasks:\n  - name: lambada\n    task: lambada_openai\n"
                      "    data: ",
                      a,
                      "/data/lambada_openai/lambada_test.jsonl\n    limit: 3\n"
                      "methods:\n  - none\n  - {spec: \"quant:bits=4\", label: '",
                      kEvilLabel, "'}\n  - quant:bits=2\n");
}

bool ChromiumRequired() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

// Headless Chromium on `url`, in a fresh profile: its stdout with `--dump-dom` in `args`, or ""
// after a screenshot (`--screenshot=FILE`); nullopt if it fails. `js_off`: the profile blocks
// JavaScript for every page (the content setting; --blink-settings=scriptEnabled=false would
// also stop --dump-dom and --screenshot, which run script in the page).
std::optional<std::string> Chromium(const std::string& chromium, const std::string& dir,
                                    const std::string& url, std::vector<std::string> args,
                                    bool js_off = false) {
  static int n = 0;
  const int k = n++;
  const std::string profile = JoinPath(dir, absl::StrCat("chromium-profile-", k));
  if (js_off) {
    std::filesystem::create_directories(JoinPath(profile, "Default"));
    EXPECT_TRUE(
        WriteFileAtomic(JoinPath(profile, "Default/Preferences"),
                        R"({"profile":{"default_content_setting_values":{"javascript":2}}})")
            .ok());
  }
  const std::string out = JoinPath(dir, absl::StrCat("chromium-", k, ".out"));
  const std::string err = JoinPath(dir, absl::StrCat("chromium-", k, ".err"));
  std::vector<std::string> argv = {chromium,
                                   "--headless",
                                   "--disable-gpu",
                                   "--no-sandbox",
                                   "--disable-dev-shm-usage",
                                   "--hide-scrollbars",
                                   absl::StrCat("--user-data-dir=", profile)};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back(url);
  Subprocess::Options o;
  o.stdout_path = out;
  o.stderr_path = err;
  o.env["HOME"] = dir;
  auto p = Subprocess::Spawn(argv, o);
  if (!p.ok()) {
    ADD_FAILURE() << p.status();
    return std::nullopt;
  }
  std::optional<int> st = (*p)->Wait(std::chrono::seconds(120));
  if (!st || !WIFEXITED(*st) || WEXITSTATUS(*st) != 0) {
    ADD_FAILURE() << "chromium " << url << ": " << (st ? DescribeWaitStatus(*st) : "timed out")
                  << "\n"
                  << ReadFile(err).value_or("");
    return std::nullopt;
  }
  return ReadFile(out).value_or("");
}

// data-done of the sweep's row on the index page; -1 if absent.
int DoneOnIndex(const std::string& html, const std::string& sweep) {
  std::smatch m;
  if (!std::regex_search(
          html, m, std::regex(absl::StrCat("data-sweep=\"", sweep, "\" data-done=\"(\\d+)\"")))) {
    return -1;
  }
  return std::stoi(m[1]);
}

TEST(DashboardTest, PagesJsonEscapingAndBounds) {
  Harness h("dashboard");
  const int port = StartWithDashboard(h);
  ASSERT_GT(port, 0);
  h.Submit(h.WriteFile("dash.yaml", EscapingSweepYaml(h)));
  h.StartWorker(Fake());
  h.StartWorker(Fake());
  ASSERT_TRUE(h.WaitFinished("dash", std::chrono::seconds(120)));
  h.CheckInvariants("dash");

  HttpResponse index = Http(port, "/");
  ASSERT_EQ(index.status, 200) << index.body;
  EXPECT_THAT(index.headers, HasSubstr("Content-Type: text/html"));
  EXPECT_THAT(index.headers, HasSubstr("Content-Security-Policy: default-src 'none'"));
  EXPECT_EQ(DoneOnIndex(index.body, "dash"), 3) << index.body;
  EXPECT_THAT(index.body, HasSubstr("href=\"/sweep/dash\""));
  EXPECT_THAT(index.body, Not(HasSubstr("http-equiv=\"refresh\"")));  // nothing runs

  HttpResponse page = Http(port, "/sweep/dash");
  ASSERT_EQ(page.status, 200) << page.body;
  EXPECT_THAT(page.body, HasSubstr("<table class=\"comparison\">"));
  EXPECT_THAT(page.body, HasSubstr("difference from none"));
  EXPECT_THAT(page.body, HasSubstr("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  EXPECT_THAT(page.body, HasSubstr("<table class=\"jobs\">"));
  EXPECT_THAT(page.body, HasSubstr("1 lease"));
  // The label, escaped wherever it appears (table header, jobs, plot legend), never as markup.
  EXPECT_THAT(page.body, HasSubstr("&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;"));
  EXPECT_THAT(absl::AsciiStrToLower(page.body), Not(HasSubstr("<script")));

  HttpResponse plot = Http(port, "/sweep/dash/plot.svg");
  ASSERT_EQ(plot.status, 200);
  EXPECT_THAT(plot.headers, HasSubstr("Content-Type: image/svg+xml"));
  EXPECT_TRUE(absl::StartsWith(plot.body, "<?xml")) << plot.body.substr(0, 100);
  EXPECT_THAT(absl::AsciiStrToLower(plot.body), Not(HasSubstr("<script")));

  HttpResponse sweeps = Http(port, "/api/sweeps");
  ASSERT_EQ(sweeps.status, 200);
  EXPECT_THAT(sweeps.headers, HasSubstr("Content-Type: application/json"));
  nlohmann::json js = nlohmann::json::parse(sweeps.body);
  ASSERT_EQ(js["sweeps"].size(), 1u);
  EXPECT_EQ(js["sweeps"][0]["name"], "dash");
  EXPECT_EQ(js["sweeps"][0]["counts"]["done"], 3);
  EXPECT_EQ(js["sweeps"][0]["total"], 3);
  EXPECT_EQ(js["sweeps"][0]["finished"], true);

  HttpResponse api = Http(port, "/api/sweep/dash");
  ASSERT_EQ(api.status, 200);
  nlohmann::json j = nlohmann::json::parse(api.body);
  ASSERT_EQ(j["jobs"].size(), 3u);
  bool evil = false;
  for (const nlohmann::json& job : j["jobs"]) {
    EXPECT_EQ(job["state"], "done");
    EXPECT_EQ(job["attempts"], 1);
    ASSERT_EQ(job["attempt_history"].size(), 1u);
    EXPECT_EQ(job["attempt_history"][0]["outcome"], "done");
    EXPECT_TRUE(job["value"].is_number());
    evil = evil || job["labels"]["method"] == kEvilLabel;  // JSON keeps the text as it is
  }
  EXPECT_TRUE(evil);
  EXPECT_EQ(j["table"]["delta"], "none");
  EXPECT_EQ(j["table"]["cols"].size(), 3u);
  EXPECT_EQ(j["plot"], "/sweep/dash/plot.svg");

  // No lease key (what the store keeps of a lease's secret) on any page.
  for (const std::vector<std::string>& row : h.SqlRows("SELECT lease_id FROM attempts")) {
    ASSERT_FALSE(row.empty());
    ASSERT_FALSE(row[0].empty());
    for (const HttpResponse* r : {&index, &page, &sweeps, &api}) {
      EXPECT_THAT(r->body, Not(HasSubstr(row[0])));
    }
  }

  // Bounded parameters, unknown sweeps, writes.
  EXPECT_THAT(Http(port, "/sweep/dash?jobs=1").body, HasSubstr("The first 1 of 3 jobs"));
  EXPECT_EQ(Http(port, "/sweep/dash?jobs=0").status, 400);
  EXPECT_EQ(Http(port, "/sweep/dash?jobs=2001").status, 400);
  EXPECT_EQ(Http(port, "/sweep/dash?jobs=99999999999999").status, 400);
  EXPECT_EQ(Http(port, "/sweep/dash?refresh=1").status, 400);
  EXPECT_EQ(Http(port, "/sweep/dash?log_y=2").status, 400);
  EXPECT_EQ(Http(port, "/sweep/dash?metric=ppl%3Bdrop").status, 400);
  EXPECT_EQ(Http(port, absl::StrCat("/sweep/dash?metric=", std::string(65, 'a'))).status, 400);
  HttpResponse bad_metric = Http(port, "/sweep/dash?metric=no_such_metric");
  EXPECT_EQ(bad_metric.status, 200);  // said on the page
  EXPECT_THAT(bad_metric.body, HasSubstr("no table:"));
  EXPECT_EQ(Http(port, "/api/sweep/dash?jobs=abc").status, 400);
  EXPECT_EQ(Http(port, "/sweep/nope").status, 404);
  EXPECT_EQ(Http(port, "/api/sweep/nope").status, 404);
  EXPECT_EQ(Http(port, "/sweep/%3Cb%3E").status, 404);
  EXPECT_EQ(Http(port, "/", "", "POST").status, 405);
  EXPECT_EQ(Http(port, "/nowhere").status, 404);

  // Headless Chromium: the pages load with JavaScript off and on, and a screenshot is taken.
  const std::string chromium = FindChromium();
  if (chromium.empty()) {
    if (ChromiumRequired()) FAIL() << "CI=true but no chromium: deploy/setup-debian.sh installs it";
    GTEST_SKIP() << "no headless Chromium (chromium on PATH or KVSWEEP_CHROMIUM): the browser "
                    "checks are skipped";
  }
  // The JavaScript-off profile does block scripts: a page whose script marks its body.
  const std::string marker =
      h.WriteFile("js.html",
                  "<html><body><script>document.body.setAttribute('data-js', 'ran')</script>"
                  "</body></html>");
  EXPECT_THAT(Chromium(chromium, h.dir(), "file://" + marker, {"--dump-dom"}).value_or(""),
              HasSubstr("data-js=\"ran\""));
  EXPECT_THAT(Chromium(chromium, h.dir(), "file://" + marker, {"--dump-dom"}, true).value_or("?"),
              Not(HasSubstr("data-js=")));
  const std::string url = absl::StrCat("http://127.0.0.1:", port, "/sweep/dash");
  for (bool js_off : {true, false}) {
    std::optional<std::string> dom = Chromium(chromium, h.dir(), url, {"--dump-dom"}, js_off);
    ASSERT_TRUE(dom.has_value());
    EXPECT_THAT(*dom, HasSubstr("<table class=\"comparison\">")) << "js_off " << js_off;
    EXPECT_THAT(*dom, HasSubstr("<svg ")) << "js_off " << js_off;
    EXPECT_THAT(*dom, HasSubstr("class=\"job state-done\"")) << "js_off " << js_off;
    EXPECT_THAT(absl::AsciiStrToLower(*dom), Not(HasSubstr("<script"))) << "js_off " << js_off;
  }
  const std::string png = JoinPath(h.dir(), "sweep.png");
  ASSERT_TRUE(Chromium(chromium, h.dir(), url,
                       {absl::StrCat("--screenshot=", png), "--window-size=1200,1000"},
                       /*js_off=*/true)
                  .has_value());
  absl::StatusOr<std::string> bytes = ReadFile(png);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ASSERT_GT(bytes->size(), 24u);
  EXPECT_EQ(bytes->substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  auto be32 = [&](size_t at) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes->data() + at);
    return (p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
  };
  // IHDR: the window, or a whole multiple of it on a scaled display.
  EXPECT_EQ(be32(16) % 1200, 0);
  EXPECT_EQ(be32(20) % 1000, 0);
  // A page of tables, text and a plot compresses far less than a blank one.
  EXPECT_GT(bytes->size(), 20000u);
}

TEST(DashboardTest, RunningSweepProgressAdvancesBetweenLoads) {
  Harness h("dashboard_progress");
  const int port = StartWithDashboard(h);
  ASSERT_GT(port, 0);
  constexpr int kJobs = 6;
  h.Submit(h.WriteFile("s.yaml", h.DistinctJobsYaml("prog", kJobs)));
  const std::string chromium = FindChromium();
  const std::string url = absl::StrCat("http://127.0.0.1:", port, "/");
  // Through Chromium where there is one (JavaScript off: the page needs none), else raw HTTP.
  auto load = [&]() -> std::string {
    if (chromium.empty()) return Http(port, "/").body;
    return Chromium(chromium, h.dir(), url, {"--dump-dom"}, /*js_off=*/true).value_or("");
  };
  // Nothing runs yet: 0 done, and the page reloads itself while the sweep is unfinished.
  const std::string first = load();
  EXPECT_EQ(DoneOnIndex(first, "prog"), 0) << first;
  EXPECT_THAT(first, HasSubstr("http-equiv=\"refresh\" content=\"5\""));
  EXPECT_THAT(Http(port, "/sweep/prog").body, HasSubstr("http-equiv=\"refresh\""));
  // Jobs with a value in the JSON (a sweep's table, plot and values are cached until its count
  // of finished jobs changes).
  auto valued = [&] {
    const nlohmann::json sweep = nlohmann::json::parse(Http(port, "/api/sweep/prog").body);
    int n = 0;
    for (const nlohmann::json& job : sweep["jobs"]) {
      n += job.contains("value") && job["value"].is_number();
    }
    return n;
  };
  EXPECT_EQ(valued(), 0);

  h.StartWorker(Fake(/*sleep_ms=*/300));
  ASSERT_TRUE(WaitUntil([&] { return h.Sweep("prog").count(JobState::kDone) >= 1; },
                        std::chrono::seconds(120)));
  const std::string second = load();
  const int done = DoneOnIndex(second, "prog");
  EXPECT_GE(done, 1) << second;
  EXPECT_LE(done, kJobs);
  EXPECT_GE(valued(), 1);

  ASSERT_TRUE(h.WaitFinished("prog", std::chrono::seconds(120)));
  const std::string last = load();
  EXPECT_EQ(DoneOnIndex(last, "prog"), kJobs) << last;
  EXPECT_THAT(last, Not(HasSubstr("http-equiv=\"refresh\"")));
  EXPECT_EQ(valued(), kJobs);
  h.CheckInvariants("prog");
  if (chromium.empty()) {
    if (ChromiumRequired()) FAIL() << "CI=true but no chromium: deploy/setup-debian.sh installs it";
    GTEST_SKIP() << "no headless Chromium: the loads above were raw HTTP";
  }
}

TEST(DashboardTest, TokensAndRoles) {
  Harness h("dashboard_auth");
  const std::string reader = h.WriteFile("reader.token", "reader-secret-1\n");
  const std::string worker = h.WriteFile("worker.token", "worker-secret-2\n");
  const std::string client = h.WriteFile("client.token", "client-secret-3\n");
  const int port = StartWithDashboard(h, {"--reader-token-file", reader, "--worker-token-file",
                                          worker, "--client-token-file", client});
  ASSERT_GT(port, 0);
  HttpResponse none = Http(port, "/");
  EXPECT_EQ(none.status, 401);
  EXPECT_THAT(none.headers, HasSubstr("WWW-Authenticate: Basic realm=\"kvsweep\""));
  EXPECT_THAT(none.body, HasSubstr("missing bearer token"));
  EXPECT_EQ(Http(port, "/", "Bearer wrong").status, 401);
  EXPECT_EQ(Http(port, "/", "Bearer reader-secret-").status, 401);
  HttpResponse api = Http(port, "/api/sweeps", "Bearer nope");
  EXPECT_EQ(api.status, 401);
  EXPECT_EQ(nlohmann::json::parse(api.body)["error"], "wrong bearer token");
  HttpResponse as_worker = Http(port, "/", "Bearer worker-secret-2");
  EXPECT_EQ(as_worker.status, 403);
  EXPECT_THAT(as_worker.body, HasSubstr("a worker token may not read the dashboard"));
  EXPECT_EQ(Http(port, "/sweep/x", "Bearer worker-secret-2").status, 403);  // before routing
  EXPECT_EQ(Http(port, "/", "Bearer reader-secret-1").status, 200);
  EXPECT_EQ(Http(port, "/api/sweeps", "Bearer client-secret-3").status, 200);
  // HTTP Basic, the token as the password (what a browser sends once asked).
  EXPECT_EQ(
      Http(port, "/", absl::StrCat("Basic ", absl::Base64Escape("me:reader-secret-1"))).status,
      200);
  EXPECT_EQ(Http(port, "/", absl::StrCat("Basic ", absl::Base64Escape("me:wrong"))).status, 401);
  EXPECT_EQ(Http(port, "/", "Basic !!!").status, 401);
  EXPECT_EQ(Http(port, "/", absl::StrCat("Basic ", absl::Base64Escape("worker-secret-2"))).status,
            401);  // no colon: no password
  h.StopCoordinator();
}

// With the gRPC listener's TLS (deploy/tls/make-certs.sh's certificates, client CA): HTTPS only,
// a client certificate from the CA required, then the token.
TEST(DashboardTest, TlsAndClientCertificatesAsTheGrpcListener) {
  if (std::system("openssl version > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "no openssl CLI (Debian: openssl)";
  }
  // A TLS client writing to a connection the server refused must not end the test.
  ::signal(SIGPIPE, SIG_IGN);
  Harness h("dashboard_tls");
  const std::string tls = h.dir() + "/tls";
  const std::string other = h.dir() + "/other-ca";
  for (const std::string& d : {tls, other}) {
    const std::string cmd = absl::StrCat("bash ", KVSWEEP_SOURCE_DIR, "/deploy/tls/make-certs.sh ",
                                         d, " --coordinator-name 127.0.0.1 > ", d, ".log 2>&1");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << ReadFile(d + ".log").value_or("");
  }
  const std::string reader = h.WriteFile("reader.token", "tls-reader-1\n");
  const int port = StartWithDashboard(
      h, {"--tls-cert", tls + "/coordinator.crt", "--tls-key", tls + "/coordinator.key",
          "--tls-client-ca", tls + "/ca.crt", "--reader-token-file", reader});
  ASSERT_GT(port, 0);
  auto get = [&](const std::string& cert_dir, const std::string& token) {
    httplib::SSLClient c("127.0.0.1", port, cert_dir + "/client.crt", cert_dir + "/client.key");
    c.set_ca_cert_path((tls + "/ca.crt").c_str());
    c.enable_server_certificate_verification(true);
    c.set_connection_timeout(10, 0);
    c.set_read_timeout(30, 0);
    httplib::Headers headers;
    if (!token.empty()) headers.emplace("Authorization", "Bearer " + token);
    httplib::Result r = c.Get("/api/sweeps", headers);
    return r ? r->status : 0;
  };
  EXPECT_EQ(get(tls, "tls-reader-1"), 200);
  EXPECT_EQ(get(tls, ""), 401);
  EXPECT_EQ(get(other, "tls-reader-1"), 0);  // a certificate from another CA: no handshake
  EXPECT_EQ(Http(port, "/").status, 0);      // plaintext: no HTTP answer
  {
    httplib::SSLClient c("127.0.0.1", port);  // no client certificate
    c.set_ca_cert_path((tls + "/ca.crt").c_str());
    c.enable_server_certificate_verification(true);
    httplib::Result r = c.Get("/");
    EXPECT_FALSE(r) << r->status;
  }
  h.StopCoordinator();
}

// Off loopback the dashboard needs TLS and tokens, like the gRPC listener.
TEST(DashboardTest, RefusesPlaintextOffLoopback) {
  const std::string dir = MakeTempDir("dashboard_loopback");
  Subprocess::Options o;
  o.stdout_path = JoinPath(dir, "out");
  o.stderr_path = JoinPath(dir, "err");
  auto p = Subprocess::Spawn({CoordinatorBin(), "--db", JoinPath(dir, "db"), "--listen",
                              "127.0.0.1:0", "--http", "0.0.0.0:0"},
                             o);
  ASSERT_TRUE(p.ok()) << p.status();
  std::optional<int> st = (*p)->Wait(std::chrono::seconds(60));
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 2) << DescribeWaitStatus(*st);
  EXPECT_THAT(ReadFile(o.stderr_path).value_or(""),
              HasSubstr("--http: refusing to serve the dashboard on non-loopback address "
                        "0.0.0.0:0 without TLS and a bearer token"));
  auto bad = Subprocess::Spawn({CoordinatorBin(), "--db", JoinPath(dir, "db2"), "--listen",
                                "127.0.0.1:0", "--http", "127.0.0.1:notaport"},
                               o);
  ASSERT_TRUE(bad.ok());
  st = (*bad)->Wait(std::chrono::seconds(60));
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 2);
  EXPECT_THAT(ReadFile(o.stderr_path).value_or(""), HasSubstr("has no valid port"));
}

}  // namespace
}  // namespace testing
}  // namespace kvsweep
