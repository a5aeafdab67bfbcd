#include "rpc/rpc_util.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rpc/auth.h"
#include "rpc/http_listen.h"

namespace kvsweep {
namespace {

using ::testing::HasSubstr;

TEST(RpcUtilTest, LoopbackAddresses) {
  for (const char* a :
       {"127.0.0.1:50551", "127.1.2.3:0", "localhost:1", "[::1]:80", "unix:/tmp/x.sock"}) {
    auto r = IsLoopbackAddress(a);
    ASSERT_TRUE(r.ok()) << a;
    EXPECT_TRUE(*r) << a;
  }
  for (const char* a :
       {"0.0.0.0:50551", "10.0.0.1:1", "[::]:80", "example.com:443", "128.0.0.1:5"}) {
    auto r = IsLoopbackAddress(a);
    ASSERT_TRUE(r.ok()) << a;
    EXPECT_FALSE(*r) << a;
  }
  for (const char* a : {"nocolon", "127.0.0.1:port", "127.0.0.1:70000", "[::1"}) {
    EXPECT_EQ(IsLoopbackAddress(a).status().code(), absl::StatusCode::kInvalidArgument) << a;
  }
}

// One check for every binary: a port above 65535 is refused, not taken modulo 65536 as gRPC
// would (127.0.0.1:PORT+65536 reached the coordinator on PORT).
TEST(RpcUtilTest, AddressesWithABadPortAreRefusedEverywhere) {
  for (const char* a :
       {"127.0.0.1:0", "127.0.0.1:65535", "[::1]:50551", "example.com:443", "unix:/tmp/x.sock"}) {
    EXPECT_TRUE(ValidateAddress(a).ok()) << a;
  }
  for (const char* a : {"127.0.0.1:65536", "127.0.0.1:115087", "[::1]:99999", "127.0.0.1:-1",
                        "127.0.0.1:+80", "127.0.0.1: 80", "127.0.0.1:", "127.0.0.1:0x50"}) {
    EXPECT_EQ(ValidateAddress(a),
              absl::InvalidArgumentError(absl::StrCat("bad port in address '", a, "'")))
        << a;
  }
  EXPECT_EQ(ValidateAddress("nocolon").message(), "bad address 'nocolon' (expected host:port)");
  ClientConfig c;
  c.address = "127.0.0.1:115087";
  auto ch = MakeChannel(c);
  ASSERT_FALSE(ch.ok());
  EXPECT_EQ(ch.status(), absl::InvalidArgumentError("bad port in address '127.0.0.1:115087'"));
}

TEST(RpcUtilTest, Utf8IsCheckedWithTheOffendingByte) {
  EXPECT_TRUE(CheckUtf8("", "x").ok());
  EXPECT_TRUE(CheckUtf8("name: caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\n", "x").ok());
  EXPECT_EQ(CheckUtf8("\xff\xfe name: bad\n", "x.yaml"),
            absl::InvalidArgumentError("x.yaml: not valid UTF-8 at byte 0 (line 1)"));
  EXPECT_EQ(CheckUtf8("a: 1\nb: \xc3\n", "f").message(), "f: not valid UTF-8 at byte 8 (line 2)");
  for (const char* bad : {"\xc0\xaf",          // overlong '/'
                          "\xe0\x80\xaf",      // overlong
                          "\xed\xa0\x80",      // a surrogate
                          "\xf4\x90\x80\x80",  // above U+10FFFF
                          "\xe2\x82",          // cut short
                          "\x80"}) {           // a lone continuation byte
    EXPECT_EQ(CheckUtf8(bad, "s").code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(CheckUtf8("ab\xff", "sweep name").message(), "sweep name: not valid UTF-8 at byte 2");
}

TEST(RpcUtilTest, StatusRoundTrip) {
  absl::Status s = absl::FailedPreconditionError("stale fencing token 3");
  grpc::Status g = ToGrpc(s);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(g.error_message(), "stale fencing token 3");
  EXPECT_EQ(FromGrpc(g), s);
  EXPECT_TRUE(ToGrpc(absl::OkStatus()).ok());
}

TEST(RpcUtilTest, TokenFiles) {
  const std::string path = ::testing::TempDir() + "/kvsweep_token";
  ASSERT_TRUE(WriteFileAtomic(path, "s3cret-token\n").ok());
  EXPECT_EQ(*ReadTokenFile(path), "s3cret-token");
  ASSERT_TRUE(WriteFileAtomic(path, "  \n").ok());
  EXPECT_THAT(std::string(ReadTokenFile(path).status().message()), HasSubstr("is empty"));
  ASSERT_TRUE(WriteFileAtomic(path, "two words").ok());
  EXPECT_EQ(ReadTokenFile(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadTokenFile("/nonexistent/token").status().code(), absl::StatusCode::kNotFound);
  std::remove(path.c_str());
}

TEST(RpcUtilTest, TlsFilesMustBeCompleteAndPem) {
  TlsFiles only_cert;
  only_cert.cert = "/x.pem";
  EXPECT_THAT(std::string(MakeServerCredentials(only_cert).status().message()),
              HasSubstr("needs both --tls-cert and --tls-key"));
  const std::string path = ::testing::TempDir() + "/kvsweep_notpem";
  ASSERT_TRUE(WriteFileAtomic(path, "hello").ok());
  TlsFiles bad{path, path, ""};
  auto c = MakeServerCredentials(bad);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("is not PEM"));
  EXPECT_TRUE(MakeServerCredentials(TlsFiles()).ok());  // plaintext
  std::remove(path.c_str());
}

}  // namespace
// A bearer token is never sent in clear off loopback: the channel is refused before any
// connection is made.
TEST(RpcUtilTest, BearerTokenIsNotSentInClearOffLoopback) {
  ClientConfig c;
  c.address = "coordinator.example.invalid:50551";
  c.token = "secret";
  auto ch = MakeChannel(c);
  ASSERT_FALSE(ch.ok());
  EXPECT_EQ(ch.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ch.status().message(),
            "refusing to send the bearer token in clear to coordinator.example.invalid:50551 "
            "(use --tls, or a loopback address)");
  c.tls = true;
  EXPECT_TRUE(MakeChannel(c).ok());
  c.tls = false;
  c.address = "127.0.0.1:50551";
  EXPECT_TRUE(MakeChannel(c).ok());
  c.address = "coordinator.example.invalid:50551";
  c.token.clear();
  EXPECT_TRUE(MakeChannel(c).ok());  // nothing secret to send
}

TEST(AuthTest, RoleTokensMustDiffer) {
  BearerTokens t;
  t.worker = "same";
  t.client = "same";
  EXPECT_EQ(t.Validate().code(), absl::StatusCode::kInvalidArgument);
  t.client = "other";
  EXPECT_TRUE(t.Validate().ok());
}

TEST(HttpListenTest, ParsesListenAddresses) {
  absl::StatusOr<ListenAddress> a = ParseListenAddress("--metrics-listen", "9100");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 9100);
  EXPECT_EQ(a->host_port, "127.0.0.1:9100");
  a = ParseListenAddress("--http", "localhost:0");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host_port, "127.0.0.1:0");
  a = ParseListenAddress("--http", "[::1]:8443");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "::1");
  EXPECT_EQ(a->host_port, "[::1]:8443");
  for (const char* bad : {"", "x", "1:2:3", ":80", "host:65536", "host:-1", "host:8o"}) {
    absl::StatusOr<ListenAddress> b = ParseListenAddress("--metrics-listen", bad);
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(b.status().message()), ::testing::StartsWith("--metrics-listen: '"))
        << bad;
  }
}

}  // namespace kvsweep
