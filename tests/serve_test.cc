// `embstore serve` end to end, against a server process on an ephemeral
// loopback port: results equal to the library's from concurrent clients,
// error codes and messages, deadlines, admission (RESOURCE_EXHAUSTED),
// message-size limits, a version switch under load, SIGTERM drain, SIGKILL
// and restart, the metrics endpoint parsed, health (Check and Watch), busy
// polling threads sharing one connection, TLS and mutual TLS.
// (The torch goldens through the server: cli_query_test; from Python:
// python/tests/test_serve.py.)
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "embstore/fm.h"
#include "embstore/query.h"
#include "embstore/store.h"
#include "embstore/v1/embstore.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "serve/client.h"
#include "serve/convert.h"
#include "serve_test_util.h"
#include "test_util.h"

namespace embstore {
namespace {

using testing::RunCli;
using testing::ServeProcess;
using testing::TempDir;

constexpr int64_t kRows = 1000, kDim = 64;

// A table "t" of rows x dim random floats (seed) imported through the CLI.
struct Fixture {
  TempDir dir;
  std::string db = dir / "db";
  std::vector<float> values;
  void Import(uint32_t seed, bool replace = false, int64_t rows = kRows) {
    values = testing::RandomFloats(static_cast<size_t>(rows * kDim), seed);
    testing::WriteF32Npy(dir / "t.npy", {rows, kDim}, values);
    std::vector<std::string> args = {"import", "--db", db, "--table", "t", "--from", dir / "t.npy"};
    if (replace) args.push_back("--replace");
    const auto r = RunCli(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  TableView View(const std::vector<float>& v, int64_t rows = kRows) const {
    TableView t;
    t.data = reinterpret_cast<const uint8_t*>(v.data());
    t.rows = rows;
    t.dim = kDim;
    t.row_stride = kDim * sizeof(float);
    return t;
  }
};

struct Request {
  std::vector<int64_t> ids, offsets;
  std::vector<float> weights;
  BagRequest Bag() const {
    BagRequest b;
    b.indices = std::span<const int64_t>(ids);
    b.offsets = IndexArray(std::span<const int64_t>(offsets));
    if (!weights.empty()) b.weights = std::span<const float>(weights);
    return b;
  }
};

Request RandomRequest(std::mt19937_64& rng, int64_t bags, int64_t per_bag, bool weighted,
                      int64_t rows = kRows) {
  Request r;
  for (int64_t b = 0; b < bags; ++b) {
    r.offsets.push_back(static_cast<int64_t>(r.ids.size()));
    const int64_t n = static_cast<int64_t>(rng() % static_cast<uint64_t>(2 * per_bag + 1));
    for (int64_t i = 0; i < n; ++i) r.ids.push_back(static_cast<int64_t>(rng() % rows));
  }
  if (weighted) {
    for (size_t i = 0; i < r.ids.size(); ++i)
      r.weights.push_back(static_cast<float>(rng() % 2000) / 1000.0f - 1.0f);
  }
  return r;
}

std::unique_ptr<serve::Client> Connect(const std::string& address,
                                       std::optional<std::chrono::milliseconds> deadline = {}) {
  serve::ClientOptions o;
  o.target = address;
  o.deadline = deadline;
  auto c = serve::Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c).value() : nullptr;
}

std::unique_ptr<v1::Embstore::Stub> Stub(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return v1::Embstore::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

// GET `path` from 127.0.0.1:port; the whole HTTP reply ("" on failure).
std::string HttpGet(int port, const std::string& path, const std::string& method = "GET") {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string reply;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string req = method + " " + path + " HTTP/1.1\r\nHost: x\r\n\r\n";
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[8192];
      for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) reply.append(buf, n);
    }
  }
  ::close(fd);
  return reply;
}

// The Prometheus text format, parsed strictly: every sample line is
// NAME{LABELS} VALUE under a # TYPE of its family; returns samples keyed by
// "name{labels}" (labels as written), and fails the test on any bad line.
std::map<std::string, double> ParseMetrics(const std::string& body) {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;
  const std::regex sample(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*")(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*")*\})? ([-+0-9.eE]+|\+Inf|NaN)$)");
  const std::regex type(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$)");
  const std::regex help(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+$)");
  std::istringstream lines(body);
  int n = 0;
  for (std::string line; std::getline(lines, line);) {
    ++n;
    std::smatch m;
    if (std::regex_match(line, m, type)) {
      EXPECT_EQ(types.count(m[1]), 0u) << "TYPE twice: " << line;
      types[m[1]] = m[2];
      continue;
    }
    if (std::regex_match(line, help)) continue;
    if (!std::regex_match(line, m, sample)) {
      ADD_FAILURE() << "line " << n << ": '" << line << "'";
      continue;
    }
    std::string family = m[1];
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s = suffix;
      if (family.size() > s.size() && family.ends_with(s) &&
          types.count(family.substr(0, family.size() - s.size())) &&
          types[family.substr(0, family.size() - s.size())] == "histogram") {
        family = family.substr(0, family.size() - s.size());
      }
    }
    EXPECT_EQ(types.count(family), 1u) << "no TYPE before " << line;
    const std::string key = std::string(m[1]) + std::string(m[2]);
    EXPECT_EQ(samples.count(key), 0u) << "sample twice: " << line;
    samples[key] = std::stod(m[7]);
  }
  EXPECT_GT(n, 10);
  return samples;
}

std::map<std::string, double> Scrape(int port) {
  const std::string reply = HttpGet(port, "/metrics");
  EXPECT_EQ(reply.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << reply.substr(0, 200);
  EXPECT_NE(reply.find("Content-Type: text/plain; version=0.0.4"), std::string::npos);
  const size_t body = reply.find("\r\n\r\n");
  if (body == std::string::npos) return {};
  return ParseMetrics(reply.substr(body + 4));
}

// Many clients on threads: every result equals the library's on the same
// table; ListTables, health.
// 4 client threads x 40 random requests, each equal to the library's
// result. shared_channel: the threads share one connection (its calls then
// all arrive on one serving thread's queue, which the others take from).
void ExpectConcurrentClientsGetTheLibrarysResults(const std::vector<std::string>& server_args,
                                                  bool shared_channel) {
  Fixture f;
  f.Import(1);
  ServeProcess server;
  ASSERT_TRUE(server.Start(f.db, server_args)) << server.err();
  auto client = Connect(server.address());
  ASSERT_NE(client, nullptr);
  auto healthy = client->Healthy("");
  ASSERT_TRUE(healthy.ok()) << healthy.status().ToString();
  EXPECT_TRUE(*healthy);
  auto healthy_service = client->Healthy("embstore.v1.Embstore");
  ASSERT_TRUE(healthy_service.ok());
  EXPECT_TRUE(*healthy_service);
  auto tables = client->ListTables();
  ASSERT_TRUE(tables.ok()) << tables.status().ToString();
  ASSERT_EQ(tables->size(), 1u);
  EXPECT_EQ((*tables)[0].name, "t");
  EXPECT_EQ((*tables)[0].rows, kRows);
  EXPECT_EQ((*tables)[0].dim, kDim);

  const TableView view = f.View(f.values);
  std::atomic<int> checked{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      std::unique_ptr<serve::Client> own = shared_channel ? nullptr : Connect(server.address());
      serve::Client* c = shared_channel ? client.get() : own.get();
      for (int i = 0; i < 40 && c; ++i) {
        const Request r = RandomRequest(rng, 1 + static_cast<int64_t>(rng() % 64), 20, i % 2);
        QueryOptions qo;
        qo.mode = static_cast<PoolingMode>(i % 3);
        if (i % 5 == 0) qo.max_norm = 1.5;
        if (i % 7 == 0) qo.padding_idx = 3;
        auto want = EmbeddingBag(view, r.Bag(), qo);
        auto got = c->EmbeddingBag("t", r.Bag(), qo, 0);
        if (!want.ok() || !got.ok() || got->output.values != want->values ||
            got->output.shape != want->shape || got->version != 1) {
          ++failed;
        } else {
          ++checked;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(checked.load(), 160);
  EXPECT_EQ(WEXITSTATUS(server.Stop()), 0) << server.err();
}

TEST(ServeTest, ConcurrentClientsGetTheLibrarysResults) {
  ExpectConcurrentClientsGetTheLibrarysResults({"--threads", "2"}, /*shared_channel=*/false);
}

// One connection, 3 serving threads that spin before they sleep: the same.
TEST(ServeTest, BusyPollingThreadsSharingOneConnectionGetTheLibrarysResults) {
  ExpectConcurrentClientsGetTheLibrarysResults({"--threads", "3", "--busy-poll-us", "2000"},
                                               /*shared_channel=*/true);
}

// grpc.health.v1: Check and Watch. Watch streams SERVING, then NOT_SERVING
// when SIGTERM arrives, and then the stream ends; unknown services are
// NOT_FOUND (Check) and SERVICE_UNKNOWN (Watch).
TEST(ServeTest, HealthCheckAndWatchFollowTheServer) {
  using grpc::health::v1::HealthCheckRequest;
  using grpc::health::v1::HealthCheckResponse;
  Fixture f;
  f.Import(2);
  ServeProcess server;
  ASSERT_TRUE(server.Start(f.db, {"--threads", "2"})) << server.err();
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  auto deadline = [] { return std::chrono::system_clock::now() + std::chrono::seconds(20); };
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    HealthCheckRequest req;
    req.set_service("no.such.Service");
    HealthCheckResponse rep;
    EXPECT_EQ(health->Check(&ctx, req, &rep).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    HealthCheckRequest req;
    req.set_service("no.such.Service");
    auto stream = health->Watch(&ctx, req);
    HealthCheckResponse rep;
    ASSERT_TRUE(stream->Read(&rep));
    EXPECT_EQ(rep.status(), HealthCheckResponse::SERVICE_UNKNOWN);
    ctx.TryCancel();
    while (stream->Read(&rep)) {
    }
    stream->Finish();
  }
  // Two watchers, of the server and of the embstore service.
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<HealthCheckResponse>>> streams;
  for (const char* service : {"", "embstore.v1.Embstore"}) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    ctxs.back()->set_deadline(deadline());
    HealthCheckRequest req;
    req.set_service(service);
    streams.push_back(health->Watch(ctxs.back().get(), req));
    HealthCheckResponse rep;
    ASSERT_TRUE(streams.back()->Read(&rep)) << service;
    EXPECT_EQ(rep.status(), HealthCheckResponse::SERVING) << service;
  }
  ::kill(server.pid(), SIGTERM);
  for (auto& stream : streams) {
    HealthCheckResponse rep;
    ASSERT_TRUE(stream->Read(&rep));
    EXPECT_EQ(rep.status(), HealthCheckResponse::NOT_SERVING);
    int more = 0;
    while (stream->Read(&rep) && more < 100) ++more;
    EXPECT_EQ(more, 0);
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  const int status = server.Stop(0);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << server.err();
}

// Each error has its gRPC code and the library's message.
TEST(ServeTest, BadRequestsGetTheirCodesAndTheLibrarysMessages) {
  Fixture f;
  f.Import(2);
  ServeProcess server;
  ASSERT_TRUE(server.Start(f.db, {"--max-request-bytes", "100000", "--max-reply-bytes", "100000"}))
      << server.err();
  auto stub = Stub(server.address());
  auto call = [&](const v1::EmbeddingBagRequest& req) {
    grpc::ClientContext ctx;
    v1::PooledReply reply;
    return stub->EmbeddingBag(&ctx, req, &reply);
  };
  v1::EmbeddingBagRequest good;
  good.set_table("t");
  for (int64_t id : {1, 2, 3}) good.add_indices(id);
  good.mutable_offsets()->add_values(0);
  EXPECT_TRUE(call(good).ok());

  // A bad id: the library's message, word for word.
  v1::EmbeddingBagRequest bad = good;
  bad.set_indices(1, kRows);
  BagRequest lib;
  QueryOptions qo;
  ASSERT_TRUE(serve::ReadBagRequest(bad, &lib, &qo).ok());
  const TableView view = f.View(f.values);
  TableView named = view;
  named.name = "t";
  const Status local = CountBags(named, lib, qo).status();
  ASSERT_FALSE(local.ok());
  grpc::Status st = call(bad);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), local.message());

  // Offsets that decrease; a bad mode value.
  bad = good;
  bad.mutable_offsets()->add_values(2);
  bad.mutable_offsets()->add_values(1);
  st = call(bad);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("non-decreasing"), std::string::npos) << st.error_message();
  bad = good;
  bad.mutable_options()->set_mode(static_cast<v1::PoolingMode>(7));
  st = call(bad);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("mode"), std::string::npos);

  // No such table; a version the server does not hold.
  bad = good;
  bad.set_table("nope");
  st = call(bad);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(st.error_message().find("nope"), std::string::npos);
  bad = good;
  bad.set_version(99);
  st = call(bad);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(st.error_message().find("version 99 of table 't' is not held"), std::string::npos)
      << st.error_message();
  bad.set_version(1);
  EXPECT_TRUE(call(bad).ok());

  // Over --max-request-bytes (80,000 ids of 2-byte varints: ~160 KB).
  bad = good;
  bad.clear_indices();
  for (int i = 0; i < 80000; ++i) bad.add_indices(500 + i % 500);
  ASSERT_GT(bad.ByteSizeLong(), 100000u);
  st = call(bad);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  // A reply over --max-reply-bytes: 1000 bags of dim 64 (256 KB), refused
  // before it is pooled, naming the flag.
  bad = good;
  bad.clear_indices();
  bad.mutable_offsets()->clear_values();
  for (int i = 0; i < 1000; ++i) {
    bad.mutable_offsets()->add_values(i);
    bad.add_indices(i);
  }
  st = call(bad);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("--max-reply-bytes"), std::string::npos) << st.error_message();

  // TableInfo of a missing table; the CLI client keeps the message and exit code.
  {
    grpc::ClientContext ctx;
    v1::TableInfoRequest req;
    req.set_table("nope");
    v1::TableMeta meta;
    EXPECT_EQ(stub->TableInfo(&ctx, req, &meta).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  const auto r = RunCli({"query", "--server", server.address(), "--table", "nope", "--indices", "1",
                         "--offsets", "0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;
  EXPECT_EQ(WEXITSTATUS(server.Stop()), 0) << server.err();
}

// A deadline shorter than the work: DEADLINE_EXCEEDED, for the library
// client and the CLI (exit 2, naming the code).
TEST(ServeTest, DeadlinesAreHonoured) {
  Fixture f;
  f.Import(3);
  ServeProcess server;
  ASSERT_TRUE(server.Start(f.db, {"--threads", "1"})) << server.err();
  std::mt19937_64 rng(5);
  const Request big = RandomRequest(rng, 20000, 150, false);  // ~3M lookups
  auto client = Connect(server.address(), std::chrono::milliseconds(2));
  QueryOptions qo;
  qo.mode = PoolingMode::kSum;
  auto got = client->EmbeddingBag("t", big.Bag(), qo, 0);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("DEADLINE_EXCEEDED"), std::string::npos)
      << got.status().ToString();
  // With time enough the same request succeeds.
  auto patient = Connect(server.address(), std::chrono::milliseconds(120000));
  auto ok = patient->EmbeddingBag("t", big.Bag(), qo, 0);
  EXPECT_TRUE(ok.ok()) << ok.status().ToString();
  const auto r = RunCli({"query", "--server", server.address(), "--table", "t", "--indices", "1,2",
                         "--offsets", "0", "--deadline-ms", "1"});
  // 1 ms may be enough for a tiny request on a fast machine: either it
  // succeeded or it failed with the code.
  if (r.exit_code != 0) {
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("DEADLINE_EXCEEDED"), std::string::npos) << r.err;
  }
  EXPECT_EQ(WEXITSTATUS(server.Stop()), 0) << server.err();
}

// Past --max-inflight, requests are refused at once with RESOURCE_EXHAUSTED
// (and counted so in the metrics); those admitted succeed.
TEST(ServeTest, PastMaxInflightIsResourceExhausted) {
  Fixture f;
  f.Import(4);
  ServeProcess server;
  ASSERT_TRUE(
      server.Start(f.db, {"--threads", "1", "--max-inflight", "1", "--metrics", "127.0.0.1:0"}))
      << server.err();
  std::mt19937_64 rng(6);
  const Request big = RandomRequest(rng, 4000, 100, false);  // ~400k lookups per request
  std::atomic<int> ok{0}, exhausted{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&] {
      auto stub = Stub(server.address());
      v1::EmbeddingBagRequest req;
      req.set_table("t");
      serve::WriteBagRequest(big.Bag(), QueryOptions(), &req);
      for (int i = 0; i < 5; ++i) {
        grpc::ClientContext ctx;
        v1::PooledReply reply;
        const grpc::Status st = stub->EmbeddingBag(&ctx, req, &reply);
        if (st.ok()) {
          ++ok;
        } else if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
                   st.error_message().find("--max-inflight") != std::string::npos) {
          ++exhausted;
        } else {
          ++other;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_GE(ok.load(), 1);
  EXPECT_GE(exhausted.load(), 1);
  EXPECT_EQ(ok.load() + exhausted.load(), 30);
  auto m = Scrape(server.metrics_port());
  EXPECT_EQ(m["embstore_requests_total{method=\"EmbeddingBag\",code=\"RESOURCE_EXHAUSTED\"}"],
            exhausted.load());
  EXPECT_EQ(m["embstore_requests_total{method=\"EmbeddingBag\",code=\"OK\"}"], ok.load());
  EXPECT_EQ(WEXITSTATUS(server.Stop()), 0) << server.err();
}

// `embstore import --replace` by another process while clients query: every
// reply is exactly the values of the version it names, and the new versions
// are served.
TEST(ServeTest, VersionSwitchUnderLoad) {
  Fixture f;
  f.Import(10);
  std::map<uint64_t, std::vector<float>> versions = {{1, f.values}};
  ServeProcess server;
  ASSERT_TRUE(server.Start(f.db, {"--threads", "2"})) << server.err();
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, failed{0};
  std::mutex mu;
  std::vector<std::pair<uint64_t, std::pair<Request, std::vector<float>>>> seen;  // under mu
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(200 + t);
      auto c = Connect(server.address());
      QueryOptions qo;
      qo.mode = PoolingMode::kSum;
      // Until the main thread is done (bounded: 60 s); at most 300 replies
      // per version and thread kept for checking.
      std::map<uint64_t, int> kept;
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (!stop.load() && std::chrono::steady_clock::now() < give_up) {
        Request r = RandomRequest(rng, 16, 10, false);
        auto got = c->EmbeddingBag("t", r.Bag(), qo, 0);
        if (!got.ok()) {
          ++failed;
          continue;
        }
        if (kept[got->version]++ >= 300) continue;
        std::lock_guard<std::mutex> lock(mu);
        seen.push_back({got->version, {std::move(r), std::move(got->output.values)}});
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (uint32_t v = 2; v <= 3; ++v) {
    f.Import(10 + v, /*replace=*/true);
    versions[v] = f.values;
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
  }
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_EQ(failed.load(), 0);
  std::set<uint64_t> served;
  for (const auto& [version, rv] : seen) {
    served.insert(version);
    ASSERT_EQ(versions.count(version), 1u) << version;
    QueryOptions qo;
    qo.mode = PoolingMode::kSum;
    auto want = EmbeddingBag(f.View(versions[version]), rv.first.Bag(), qo);
    ASSERT_TRUE(want.ok());
    if (want->values != rv.second) ++wrong;
  }
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(served, (std::set<uint64_t>{1, 2, 3}));
  EXPECT_GT(seen.size(), 30u);
  EXPECT_EQ(WEXITSTATUS(server.Stop()), 0) << server.err();
}

// SIGTERM while a long request runs: it completes, the server exits 0.
TEST(ServeTest, SigtermDrainsRequestsInFlight) {
  Fixture f;
  f.Import(5);
  ServeProcess server;
  ASSERT_TRUE(server.Start(f.db, {"--threads", "1", "--metrics", "127.0.0.1:0"})) << server.err();
  std::mt19937_64 rng(7);
  const Request big = RandomRequest(rng, 40000, 200, false);  // ~8M lookups
  QueryOptions qo;
  qo.mode = PoolingMode::kSum;
  Result<serve::RemoteResult> got = Status::Internal("not run");
  std::thread caller([&] {
    auto c = Connect(server.address());
    got = c->EmbeddingBag("t", big.Bag(), qo, 0);
  });
  // Wait (bounded) until the request is in flight.
  bool inflight = false;
  for (int i = 0; i < 1000 && !inflight; ++i) {
    auto m = Scrape(server.metrics_port());
    inflight = m["embstore_inflight_requests"] >= 1;
    if (!inflight) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(server.pid(), SIGTERM);
  // While it drains, a new request is refused (UNAVAILABLE), not queued.
  bool refused = false;
  for (int i = 0; i < 200 && !refused && inflight; ++i) {
    auto late = Connect(server.address(), std::chrono::milliseconds(5000));
    auto r = late->EmbeddingBag("t", Request{{1}, {0}, {}}.Bag(), qo, 0);
    refused = !r.ok() && r.status().message().find("UNAVAILABLE") != std::string::npos;
    if (!refused) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const int status = server.Stop(0);  // already signalled: wait for the exit
  caller.join();
  ASSERT_TRUE(inflight);
  EXPECT_TRUE(refused);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << server.err();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  auto want = EmbeddingBag(f.View(f.values), big.Bag(), qo);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(got->output.values, want->values);
  EXPECT_NE(server.err().find("draining"), std::string::npos) << server.err();
}

// SIGKILL, then a restart on the same port serves at once (the store is on disk).
TEST(ServeTest, SigkillThenRestartServesAtOnce) {
  Fixture f;
  f.Import(6);
  ServeProcess first;
  ASSERT_TRUE(first.Start(f.db, {})) << first.err();
  const std::string address = first.address();
  const Request r = {{1, 2, 3}, {0, 1}, {}};
  QueryOptions qo;
  auto want = EmbeddingBag(f.View(f.values), r.Bag(), qo);
  ASSERT_TRUE(want.ok());
  {
    auto c = Connect(address);
    auto got = c->EmbeddingBag("t", r.Bag(), qo, 0);
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(got->output.values, want->values);
  }
  const int status = first.Stop(SIGKILL);
  ASSERT_TRUE(WIFSIGNALED(status));
  ServeProcess second;
  bool started = false;
  for (int i = 0; i < 50 && !started; ++i) {  // the port may take a moment to be free
    started = second.Start(f.db, {}, address);
    if (!started) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(started) << second.err();
  auto c = Connect(address);
  auto got = c->EmbeddingBag("t", r.Bag(), qo, 0);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->output.values, want->values);
  EXPECT_EQ(WEXITSTATUS(second.Stop()), 0);
}

// GET /metrics parses as the text format and counts what was done.
TEST(ServeTest, MetricsEndpointParsesAndCounts) {
  Fixture f;
  f.Import(7);
  ServeProcess server;
  ASSERT_TRUE(server.Start(f.db, {"--metrics", "127.0.0.1:0"})) << server.err();
  auto c = Connect(server.address());
  const Request r = {{1, 2, 3, 4, 5}, {0, 2}, {}};
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(c->EmbeddingBag("t", r.Bag(), QueryOptions(), 0).ok());
  const Request bad = {{1, kRows}, {0}, {}};
  for (int i = 0; i < 2; ++i) EXPECT_FALSE(c->EmbeddingBag("t", bad.Bag(), QueryOptions(), 0).ok());
  ASSERT_TRUE(c->ListTables().ok());
  auto m = Scrape(server.metrics_port());
  EXPECT_EQ(m["embstore_requests_total{method=\"EmbeddingBag\",code=\"OK\"}"], 7);
  EXPECT_EQ(m["embstore_requests_total{method=\"EmbeddingBag\",code=\"INVALID_ARGUMENT\"}"], 2);
  EXPECT_EQ(m["embstore_requests_total{method=\"ListTables\",code=\"OK\"}"], 1);
  EXPECT_EQ(m["embstore_lookups_total"], 35);
  EXPECT_EQ(m["embstore_pooled_bytes_total"], 35 * kDim * 4);
  EXPECT_EQ(m["embstore_table_version{table=\"t\"}"], 1);
  EXPECT_EQ(m["embstore_inflight_requests"], 0);
  // The histogram: cumulative buckets, +Inf equal to the count.
  double prev = 0;
  int buckets = 0;
  for (const auto& [key, value] : m) {
    if (key.rfind("embstore_request_duration_seconds_bucket{method=\"EmbeddingBag\"", 0) != 0)
      continue;
    ++buckets;
    (void)prev;
  }
  EXPECT_EQ(buckets, 19);
  const std::string prefix =
      "embstore_request_duration_seconds_bucket{method=\"EmbeddingBag\",le=\"";
  for (const char* le :
       {"5e-05", "0.0001", "0.0002", "0.0003", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.02",
        "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"}) {
    ASSERT_EQ(m.count(prefix + le + "\"}"), 1u) << le;
    EXPECT_GE(m[prefix + le + "\"}"], prev) << le;
    prev = m[prefix + le + "\"}"];
  }
  EXPECT_EQ(prev, 9);
  EXPECT_EQ(m["embstore_request_duration_seconds_count{method=\"EmbeddingBag\"}"], 9);
  EXPECT_GT(m["embstore_request_duration_seconds_sum{method=\"EmbeddingBag\"}"], 0);
  // A table replaced is seen with its new version.
  f.Import(8, /*replace=*/true);
  bool updated = false;
  for (int i = 0; i < 100 && !updated; ++i) {
    ASSERT_TRUE(c->EmbeddingBag("t", r.Bag(), QueryOptions(), 0).ok());
    updated = Scrape(server.metrics_port())["embstore_table_version{table=\"t\"}"] == 2;
    if (!updated) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(updated);
  // Anything else: 404 / 405.
  EXPECT_EQ(HttpGet(server.metrics_port(), "/").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_EQ(HttpGet(server.metrics_port(), "/metrics", "POST").rfind("HTTP/1.1 405", 0), 0u);
  EXPECT_EQ(WEXITSTATUS(server.Stop()), 0) << server.err();
}

// Runs a shell command; its exit code.
int Shell(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

// TLS with a certificate made at test time; then mutual TLS.
TEST(ServeTest, TlsAndMutualTls) {
  Fixture f;
  f.Import(9);
  const std::string d = f.dir.path();
  const std::string cert = [&](const std::string& name) {
    return "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -keyout " + d + "/" + name +
           ".key -out " + d + "/" + name + ".crt -subj /CN=" + name +
           " -addext subjectAltName=IP:127.0.0.1,DNS:localhost";
  }("server");
  ASSERT_EQ(Shell(cert), 0) << "openssl (tools/install_deps.sh installs it) failed: " << cert;
  ASSERT_EQ(Shell("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -keyout " + d +
                  "/client.key -out " + d + "/client.crt -subj /CN=client"),
            0);
  const Request r = {{1, 2, 3}, {0, 1}, {}};
  QueryOptions qo;
  qo.mode = PoolingMode::kMax;
  auto want = EmbeddingBag(f.View(f.values), r.Bag(), qo);
  ASSERT_TRUE(want.ok());
  {
    ServeProcess server;
    ASSERT_TRUE(
        server.Start(f.db, {"--tls-cert", d + "/server.crt", "--tls-key", d + "/server.key"}))
        << server.err();
    serve::ClientOptions o;
    o.target = server.address();
    o.tls_ca = d + "/server.crt";
    o.deadline = std::chrono::milliseconds(20000);
    auto c = serve::Client::Connect(o);
    ASSERT_TRUE(c.ok());
    auto got = (*c)->EmbeddingBag("t", r.Bag(), qo, 0);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->output.values, want->values);
    // A plaintext client is not served.
    auto plain = Connect(server.address(), std::chrono::milliseconds(3000));
    EXPECT_FALSE(plain->EmbeddingBag("t", r.Bag(), qo, 0).ok());
    // The CLI with --tls-ca.
    const auto cli =
        RunCli({"query", "--server", server.address(), "--tls-ca", d + "/server.crt", "--table",
                "t", "--indices", "1,2,3", "--offsets", "0,1", "--mode", "max"});
    EXPECT_EQ(cli.exit_code, 0) << cli.err;
    EXPECT_EQ(std::count(cli.out.begin(), cli.out.end(), '\n'), 2);
    EXPECT_EQ(WEXITSTATUS(server.Stop()), 0);
  }
  {
    ServeProcess server;
    ASSERT_TRUE(server.Start(f.db, {"--tls-cert", d + "/server.crt", "--tls-key", d + "/server.key",
                                    "--tls-client-ca", d + "/client.crt"}))
        << server.err();
    serve::ClientOptions o;
    o.target = server.address();
    o.tls_ca = d + "/server.crt";
    o.deadline = std::chrono::milliseconds(5000);
    auto anonymous = serve::Client::Connect(o);
    ASSERT_TRUE(anonymous.ok());
    EXPECT_FALSE((*anonymous)->EmbeddingBag("t", r.Bag(), qo, 0).ok());
    o.tls_cert = d + "/client.crt";
    o.tls_key = d + "/client.key";
    o.deadline = std::chrono::milliseconds(20000);
    auto known = serve::Client::Connect(o);
    ASSERT_TRUE(known.ok());
    auto got = (*known)->EmbeddingBag("t", r.Bag(), qo, 0);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->output.values, want->values);
    EXPECT_EQ(WEXITSTATUS(server.Stop()), 0);
  }
}

// Bad flags: a clear message and exit 1, nothing served.
TEST(ServeTest, BadFlagsAreRefused) {
  Fixture f;
  f.Import(11);
  for (const auto& [args, message] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--listen", "nonsense"}, "--listen must be HOST:PORT"},
           {{"--tls-cert", "x.pem"}, "--tls-cert and --tls-key go together"},
           {{"--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"}, "cannot read"},
           {{"--max-inflight", "-1"}, "--max-inflight must be >= 0"},
           {{"--busy-poll-us", "-1"}, "--busy-poll-us must be between 0 and 1000000"},
           {{"--busy-poll-us", "1000001"}, "--busy-poll-us must be between 0 and 1000000"},
           {{"--metrics", "127.0.0.1:99999"}, "over 65535"},
       }) {
    std::vector<std::string> a = {"serve", "--db", f.db};
    a.insert(a.end(), args.begin(), args.end());
    if (args[0] != "--listen") a.insert(a.end(), {"--listen", "127.0.0.1:0"});
    const auto r = RunCli(a);
    EXPECT_NE(r.exit_code, 0) << args[0];
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
  }
  const auto r = RunCli({"serve", "--db", f.dir / "missing", "--listen", "127.0.0.1:0"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("no embstore store"), std::string::npos) << r.err;
}

// A port another server holds is an error (exit 2, "cannot listen"), not a
// silent share of it (gRPC's default SO_REUSEPORT is turned off).
TEST(ServeTest, APortInUseIsRefused) {
  Fixture f;
  f.Import(12);
  ServeProcess first;
  ASSERT_TRUE(first.Start(f.db, {})) << first.err();
  const auto r = RunCli({"serve", "--db", f.db, "--listen", first.address()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("cannot listen on " + first.address()), std::string::npos) << r.err;
  EXPECT_EQ(WEXITSTATUS(first.Stop()), 0);
}

// Tiny requests that ask for huge replies are refused before anything is
// planned or allocated: 2-D indices [B, 0], FM scores of 2^31 + 1 samples
// with no bags. FmScore itself gives the library's scores.
TEST(ServeTest, HugeRepliesOfTinyRequestsAreRefusedFirst) {
  Fixture f;
  f.Import(13);
  const std::vector<float> biases = testing::RandomFloats(kRows, 14);
  testing::WriteF32Npy(f.dir / "b.npy", {kRows, 1}, biases);
  ASSERT_EQ(RunCli({"import", "--db", f.db, "--table", "b", "--from", f.dir / "b.npy"}).exit_code,
            0);
  ServeProcess server;
  ASSERT_TRUE(server.Start(f.db, {})) << server.err();
  auto stub = Stub(server.address());
  {
    v1::EmbeddingBagRequest req;
    req.set_table("t");
    req.add_indices_shape(int64_t{6} << 30);
    req.add_indices_shape(0);
    grpc::ClientContext ctx;
    v1::PooledReply reply;
    const grpc::Status st = stub->EmbeddingBag(&ctx, req, &reply);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_NE(st.error_message().find("--max-reply-bytes"), std::string::npos);
  }
  {
    v1::BatchedEmbeddingBagRequest req;
    req.set_table("t");
    req.set_batch(1);
    req.set_items(0);
    for (int i = 0; i < 2000000; ++i) req.add_ends(-1);  // 2M bags of dim 64: 512 MB
    req.set_bags_per_sample(2000000);
    grpc::ClientContext ctx;
    v1::PooledReply reply;
    const grpc::Status st = stub->BatchedEmbeddingBag(&ctx, req, &reply);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  }
  v1::FmScoreRequest fm;
  fm.set_vectors_table("t");
  fm.set_biases_table("b");
  fm.set_batch((int64_t{1} << 31) + 1);
  {
    grpc::ClientContext ctx;
    v1::FmScoreReply reply;
    const grpc::Status st = stub->FmScore(&ctx, fm, &reply);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  }
  // A real FM request: the library's scores.
  std::mt19937_64 rng(15);
  const int64_t batch = 8, items = 6, k = 3;
  std::vector<int64_t> ids(batch * items), ends(batch * k);
  std::vector<float> w(batch * items);
  for (auto& id : ids) id = static_cast<int64_t>(rng() % kRows);
  for (auto& x : w) x = static_cast<float>(rng() % 100) / 50.0f;
  for (int64_t b = 0; b < batch; ++b) {
    ends[b * k] = 1;
    ends[b * k + 1] = 3;
    ends[b * k + 2] = 5;
  }
  fm.set_batch(batch);
  fm.set_items(items);
  fm.set_bags_per_sample(k);
  fm.set_bias(0.25);
  for (int64_t id : ids) fm.add_indices(id);
  for (int64_t e : ends) fm.add_ends(e);
  for (float x : w) fm.mutable_per_sample_weights()->add_values(x);
  grpc::ClientContext ctx;
  v1::FmScoreReply reply;
  const grpc::Status st = stub->FmScore(&ctx, fm, &reply);
  ASSERT_TRUE(st.ok()) << st.error_message();
  FmRequest lib;
  lib.bags.indices = std::span<const int64_t>(ids);
  lib.bags.ends = std::span<const int64_t>(ends);
  lib.bags.weights = std::span<const float>(w);
  lib.bags.batch = batch;
  lib.bags.items = items;
  lib.bags.bags_per_sample = k;
  lib.bias = 0.25;
  QueryOptions qo;
  qo.mode = PoolingMode::kSum;
  TableView bv;
  bv.data = reinterpret_cast<const uint8_t*>(biases.data());
  bv.rows = kRows;
  bv.dim = 1;
  bv.row_stride = sizeof(float);
  auto want = FmScore(FmModel::kFm, f.View(f.values), bv, lib, qo);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  EXPECT_EQ(std::vector<float>(reply.scores().begin(), reply.scores().end()), *want);
  EXPECT_EQ(reply.vectors_version(), 1u);
  EXPECT_EQ(WEXITSTATUS(server.Stop()), 0) << server.err();
}

}  // namespace
}  // namespace embstore
