// The cluster (issue [scale-out], docs/cluster.md) on loopback, with real
// processes: etcd (Debian's etcd-server) on ephemeral 127.0.0.1 ports with a
// temporary data dir, 3-4 `embstore serve --cluster` nodes, `embstore
// publish`, and queries through serve::ClusterClient and `embstore query
// --cluster`, compared with the local engine on the same table:
//   - every dtype, every mode, weights, padding, max_norm, 1-D and 2-D
//     layouts: sum and mean within float rounding, max exact;
//   - a node SIGKILLed during 1000 queries: no wrong and no failed answer,
//     retries counted;
//   - a node SIGSTOPped: answers within the deadline plus one retry;
//   - both replicas of a shard gone: UNAVAILABLE naming the shard;
//   - a publish under load: every answer is exactly one version's;
//   - a publish stopped at every step, and one SIGKILLed: the old version
//     keeps serving;
//   - a node restart (its shards re-verified, a damaged one dropped);
//   - a rebalance after a node is lost (int8 shards copied byte for byte);
//   - old versions retired by publish, their shards dropped by the nodes;
//   - a node holding other rows under a shard's name: refused, retried;
//   - etcd stopped: queries go on from the routing last seen, publishes fail
//     cleanly;
//   - the CLI: publish, query --cluster, cluster status, rollback --cluster.
#include "serve/cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <thread>

#include "cluster_test_util.h"
#include "embstore/query.h"
#include "embstore/store.h"
#include "serve/etcd.h"
#include "serve_test_util.h"
#include "test_util.h"

namespace embstore {
namespace {

using serve::ClusterClient;
using serve::ClusterClientOptions;
using testing::EtcdProcess;
using testing::RunCli;
using testing::ServeProcess;
using testing::TempDir;
using Clock = std::chrono::steady_clock;

constexpr int64_t kRows = 1000, kDim = 16;

// etcd, N nodes, a source table as a .npy and the same table imported into
// a local store (for the local engine's answers).
struct Cluster {
  TempDir dir;
  EtcdProcess etcd;
  std::vector<std::unique_ptr<ServeProcess>> nodes;
  std::vector<float> values;
  std::vector<std::string> node_args;  // more flags for every node

  void Start(int n) {
    ASSERT_TRUE(etcd.Start(dir.path())) << "etcd did not start (is etcd-server installed? "
                                           "tools/install_deps.sh installs it)";
    for (int i = 0; i < n; ++i) StartNode(i);
  }
  void StartNode(int i) {
    if (static_cast<int>(nodes.size()) <= i) nodes.resize(static_cast<size_t>(i) + 1);
    nodes[static_cast<size_t>(i)] = std::make_unique<ServeProcess>();
    std::vector<std::string> args = {
        "--cluster", etcd.endpoint(), "--node", "n" + std::to_string(i), "--lease-ttl",
        "2",         "--threads",     "2"};
    args.insert(args.end(), node_args.begin(), node_args.end());
    ASSERT_TRUE(nodes[static_cast<size_t>(i)]->Start(dir / ("node" + std::to_string(i)), args))
        << nodes[static_cast<size_t>(i)]->err();
  }
  // A table "t" of kRows x kDim: writes t.npy (seed) and imports it locally
  // as `local` with `dtype`.
  void MakeTable(uint32_t seed, const std::string& dtype, const std::string& local) {
    values = testing::RandomFloats(static_cast<size_t>(kRows * kDim), seed);
    testing::WriteF32Npy(dir / "t.npy", {kRows, kDim}, values);
    const auto r = RunCli({"import", "--db", dir / "local", "--table", local, "--from",
                           dir / "t.npy", "--dtype", dtype});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  testing::CommandResult Publish(const std::string& table, const std::string& dtype, int shards,
                                 int replicas) {
    return RunCli({"publish", "--cluster", etcd.endpoint(), "--table", table, "--from",
                   dir / "t.npy", "--dtype", dtype, "--shards", std::to_string(shards),
                   "--replicas", std::to_string(replicas)});
  }
  std::unique_ptr<ClusterClient> Client(
      std::chrono::milliseconds attempt = std::chrono::milliseconds(1000),
      std::chrono::milliseconds deadline = std::chrono::seconds(20)) {
    ClusterClientOptions o;
    o.endpoints = etcd.endpoint();
    o.attempt_timeout = attempt;
    o.deadline = deadline;
    auto c = ClusterClient::Open(o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }
  Result<TableSnapshot> Local(const std::string& name) {
    StoreOptions so;
    so.create_if_missing = false;
    auto store = Store::Open(dir / "local", so);
    if (!store.ok()) return store.status();
    local_store = std::move(store).value();
    return local_store->GetSnapshot(name);
  }
  std::unique_ptr<Store> local_store;
  // The shard tables node i's store holds now (read by this process, as
  // another process may read a store).
  std::set<std::string> ShardsOn(int i) {
    StoreOptions so;
    so.create_if_missing = false;
    std::set<std::string> names;
    auto store = Store::Open(dir / ("node" + std::to_string(i)), so);
    if (!store.ok()) return names;
    auto tables = (*store)->ListTables();
    if (!tables.ok()) return names;
    for (const TableInfo& t : *tables) names.insert(t.name);
    return names;
  }
};

// A random request: B bags of up to `per` ids, 1-D with offsets.
struct Request {
  std::vector<int64_t> ids, offsets;
  std::vector<float> weights;
  BagRequest Bag() const {
    BagRequest r;
    r.indices = std::span<const int64_t>(ids);
    r.offsets = IndexArray(std::span<const int64_t>(offsets));
    if (!weights.empty()) r.weights = std::span<const float>(weights);
    return r;
  }
};

Request RandomRequest(std::mt19937_64& rng, int64_t bags, int64_t per, bool weighted) {
  Request r;
  for (int64_t b = 0; b < bags; ++b) {
    r.offsets.push_back(static_cast<int64_t>(r.ids.size()));
    const int64_t n = static_cast<int64_t>(rng() % static_cast<uint64_t>(per + 1));  // may be empty
    for (int64_t k = 0; k < n; ++k) r.ids.push_back(static_cast<int64_t>(rng() % kRows));
  }
  if (weighted) {
    for (size_t k = 0; k < r.ids.size(); ++k)
      r.weights.push_back(static_cast<float>(rng() % 1000) / 250.0f - 2.0f);
  }
  return r;
}

// Sum and mean within float rounding of the local engine's; max exact.
::testing::AssertionResult SameAnswer(const PooledOutput& want, const PooledOutput& got,
                                      PoolingMode mode) {
  if (want.shape != got.shape) return ::testing::AssertionFailure() << "shapes differ";
  for (size_t i = 0; i < want.values.size(); ++i) {
    const float w = want.values[i], g = got.values[i];
    const bool ok = mode == PoolingMode::kMax ? std::memcmp(&w, &g, sizeof w) == 0
                                              : std::fabs(w - g) <= 1e-5f + 1e-5f * std::fabs(w);
    if (!ok) return ::testing::AssertionFailure() << "value " << i << ": " << w << " vs " << g;
  }
  return ::testing::AssertionSuccess();
}

TEST(ClusterTest, EveryDtypeAndOptionGivesTheLocalEnginesAnswer) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(3));
  std::mt19937_64 rng(42);
  int checked = 0;
  for (const std::string dtype : {"f32", "f16", "bf16", "int8"}) {
    const std::string table = "t" + dtype;
    ASSERT_NO_FATAL_FAILURE(c.MakeTable(7, dtype, table));
    const auto pub =
        RunCli({"publish", "--cluster", c.etcd.endpoint(), "--table", table, "--from",
                c.dir / "t.npy", "--dtype", dtype, "--shards", "6", "--replicas", "2"});
    ASSERT_EQ(pub.exit_code, 0) << pub.err;
    auto snap = c.Local(table);
    ASSERT_TRUE(snap.ok()) << snap.status().ToString();
    auto client = c.Client();
    ASSERT_NE(client, nullptr);
    for (int i = 0; i < 60; ++i) {
      const bool weighted = i % 4 == 1;
      const Request r = RandomRequest(rng, 1 + static_cast<int64_t>(rng() % 40), 12, weighted);
      QueryOptions qo;
      qo.mode = weighted ? PoolingMode::kSum : static_cast<PoolingMode>(i % 3);
      if (i % 5 == 0) qo.max_norm = 1.5;
      if (i % 5 == 3) qo.max_norm = 0.7, qo.norm_type = 1.0;
      if (i % 7 == 0) qo.padding_idx = static_cast<int64_t>(rng() % kRows);
      if (i % 7 == 2 && !r.ids.empty()) qo.padding_idx = r.ids[0] - kRows;  // negative form
      if (i % 6 == 5) qo.include_last_offset = true;
      auto want = EmbeddingBag(snap->view(), r.Bag(), qo);
      auto got = client->EmbeddingBag(table, r.Bag(), qo);
      ASSERT_EQ(want.ok(), got.ok())
          << (want.ok() ? got.status().ToString() : want.status().ToString());
      if (!want.ok()) continue;
      EXPECT_EQ(got->version, 1u);
      ASSERT_TRUE(SameAnswer(*want, got->output, qo.mode)) << dtype << " request " << i;
      ++checked;
    }
    // 2-D [B, N] input.
    std::vector<int64_t> ids2;
    for (int k = 0; k < 5 * 4; ++k) ids2.push_back(static_cast<int64_t>(rng() % kRows));
    BagRequest r2;
    r2.indices = std::span<const int64_t>(ids2);
    r2.indices_shape = {5, 4};
    for (const PoolingMode mode : {PoolingMode::kSum, PoolingMode::kMean, PoolingMode::kMax}) {
      QueryOptions qo;
      qo.mode = mode;
      auto want = EmbeddingBag(snap->view(), r2, qo);
      auto got = client->EmbeddingBag(table, r2, qo);
      ASSERT_TRUE(want.ok() && got.ok());
      ASSERT_TRUE(SameAnswer(*want, got->output, mode)) << dtype;
      ++checked;
    }
    // Bad requests: the local engine's message, word for word.
    Request bad;
    bad.ids = {1, kRows};
    bad.offsets = {0};
    QueryOptions qo;
    auto want = EmbeddingBag(snap->view(), bad.Bag(), qo);
    auto got = client->EmbeddingBag(table, bad.Bag(), qo);
    ASSERT_FALSE(want.ok());
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().code(), want.status().code());
    EXPECT_EQ(got.status().message(), want.status().message());
  }
  EXPECT_GE(checked, 4 * 55);
  auto client = c.Client();
  auto unknown = client->EmbeddingBag("nosuch", Request{{1}, {0}, {}}.Bag(), QueryOptions());
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), Status::Code::kNotFound);
}

// Max over shards bit for bit where the order of a bag's entries decides:
// ties between +0 and -0, and NaNs (kept only as a bag's first entry), with
// the tied or NaN rows on different shards.
TEST(ClusterTest, MaxTiesAndNansMergeAsTheLocalEngine) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(3));
  std::vector<float> v(static_cast<size_t>(kRows * kDim));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t d = 0; d < kDim; ++d) {
      float x = (r % 3 == 0) ? 0.0f : (r % 3 == 1) ? -0.0f : -1.0f;
      if (r % 7 == 0 && d % 2 == 0) x = r % 2 ? -nan : nan;
      v[static_cast<size_t>(r * kDim + d)] = x;
    }
  }
  testing::WriteF32Npy(c.dir / "t.npy", {kRows, kDim}, v);
  ASSERT_EQ(RunCli({"import", "--db", c.dir / "local", "--table", "t", "--from", c.dir / "t.npy"})
                .exit_code,
            0);
  ASSERT_EQ(c.Publish("t", "f32", 5, 1).exit_code, 0);
  auto snap = c.Local("t");
  ASSERT_TRUE(snap.ok());
  auto client = c.Client();
  ASSERT_NE(client, nullptr);
  std::mt19937_64 rng(77);
  for (int i = 0; i < 200; ++i) {
    const Request r = RandomRequest(rng, 1 + static_cast<int64_t>(rng() % 8), 6, i % 3 == 0);
    QueryOptions qo;
    qo.mode = PoolingMode::kMax;
    auto want = EmbeddingBag(snap->view(), r.Bag(), qo);
    auto got = client->EmbeddingBag("t", r.Bag(), qo);
    ASSERT_TRUE(want.ok() && got.ok());
    ASSERT_TRUE(SameAnswer(*want, got->output, qo.mode)) << "request " << i;
  }
}

TEST(ClusterTest, ANodeKilledDuring1000QueriesGivesNoWrongOrFailedAnswer) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(4));
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(3, "f32", "t"));
  ASSERT_EQ(c.Publish("t", "f32", 6, 2).exit_code, 0);
  auto snap = c.Local("t");
  ASSERT_TRUE(snap.ok());
  auto client = c.Client(std::chrono::milliseconds(500));
  ASSERT_NE(client, nullptr);
  std::atomic<int> done{0}, wrong{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      for (int i = 0; i < 500; ++i) {
        const Request r = RandomRequest(rng, 8, 10, false);
        QueryOptions qo;
        qo.mode = PoolingMode::kMax;
        auto want = EmbeddingBag(snap->view(), r.Bag(), qo);
        auto got = client->EmbeddingBag("t", r.Bag(), qo);
        if (!got.ok()) {
          ++failed;
          ADD_FAILURE() << got.status().ToString();
        } else if (!SameAnswer(*want, got->output, qo.mode)) {
          ++wrong;
        }
        ++done;
      }
    });
  }
  while (done.load() < 300) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  c.nodes[1]->Kill();  // SIGKILL
  for (auto& th : threads) th.join();
  EXPECT_EQ(done.load(), 1000);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_GT(client->stats().retries, 0) << "the killed node held replicas of some shards";
}

TEST(ClusterTest, AStoppedNodeCostsAtMostOneRetryWithinTheDeadline) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(3));
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(4, "f32", "t"));
  ASSERT_EQ(c.Publish("t", "f32", 6, 2).exit_code, 0);
  auto snap = c.Local("t");
  ASSERT_TRUE(snap.ok());
  const auto attempt = std::chrono::milliseconds(300);
  const auto deadline = std::chrono::milliseconds(5000);
  auto client = c.Client(attempt, deadline);
  ASSERT_NE(client, nullptr);
  ::kill(c.nodes[0]->pid(), SIGSTOP);  // alive to etcd (its lease lives on), silent to queries
  std::mt19937_64 rng(5);
  for (int i = 0; i < 20; ++i) {
    const Request r = RandomRequest(rng, 16, 10, false);
    QueryOptions qo;
    qo.mode = PoolingMode::kSum;
    const auto t0 = Clock::now();
    auto got = client->EmbeddingBag("t", r.Bag(), qo);
    const auto took = Clock::now() - t0;
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    auto want = EmbeddingBag(snap->view(), r.Bag(), qo);
    EXPECT_TRUE(SameAnswer(*want, got->output, qo.mode));
    // One attempt at the stopped node, then its replica: the attempt's time
    // plus one round trip, well inside the deadline.
    // (2.5 s of slack for a loaded machine: sanitizer builds, tests in parallel.)
    EXPECT_LT(took, attempt + std::chrono::milliseconds(2500));
    EXPECT_LT(took, deadline);
  }
  EXPECT_GT(client->stats().retries, 0);
  ::kill(c.nodes[0]->pid(), SIGCONT);
}

TEST(ClusterTest, BothReplicasGoneIsUnavailableNamingTheShards) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(3));
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(5, "f32", "t"));
  ASSERT_EQ(c.Publish("t", "f32", 6, 2).exit_code, 0);
  auto client = c.Client(std::chrono::milliseconds(300), std::chrono::milliseconds(3000));
  ASSERT_NE(client, nullptr);
  auto route = client->Route("t");
  ASSERT_TRUE(route.ok());
  // The shards held only by n0 and n1.
  std::vector<size_t> lost;
  for (size_t s = 0; s < route->shards.size(); ++s) {
    const auto& n = route->shards[s].nodes;
    if (std::find(n.begin(), n.end(), "n2") == n.end()) lost.push_back(s);
  }
  ASSERT_FALSE(lost.empty()) << "placement put n2 on every shard";
  c.nodes[0]->Kill();
  c.nodes[1]->Kill();
  // Every row, so every shard is asked for.
  Request r;
  r.offsets = {0};
  for (int64_t id = 0; id < kRows; id += 7) r.ids.push_back(id);
  auto got = client->EmbeddingBag("t", r.Bag(), QueryOptions());
  ASSERT_FALSE(got.ok());
  const std::string m = got.status().message();
  EXPECT_NE(m.find("UNAVAILABLE"), std::string::npos) << m;
  for (size_t s : lost)
    EXPECT_NE(m.find("shard " + std::to_string(s) + " ("), std::string::npos) << m;
  // The CLI says the same and exits 2.
  const auto q = RunCli({"query", "--cluster", c.etcd.endpoint(), "--table", "t", "--indices",
                         "0,1," + std::to_string(route->shards[lost[0]].begin), "--offsets", "0",
                         "--attempt-ms", "300", "--deadline-ms", "3000"});
  EXPECT_EQ(q.exit_code, 2);
  EXPECT_NE(q.err.find("UNAVAILABLE"), std::string::npos) << q.err;
}

TEST(ClusterTest, APublishUnderLoadGivesEachAnswerExactlyOneVersion) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(3));
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(11, "f32", "v1"));
  ASSERT_EQ(c.Publish("t", "f32", 4, 2).exit_code, 0);
  auto v1 = c.Local("v1");
  ASSERT_TRUE(v1.ok());
  const std::vector<float> v1_values = c.values;
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(12, "f32", "v2"));  // rewrites t.npy
  auto v2 = c.Local("v2");
  ASSERT_TRUE(v2.ok());
  auto client = c.Client();
  ASSERT_NE(client, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<int> seen1{0}, seen2{0}, bad{0};
  std::thread reader([&] {
    std::mt19937_64 rng(9);
    for (int i = 0; i < 20000 && !stop.load(); ++i) {
      const Request r = RandomRequest(rng, 6, 8, false);
      QueryOptions qo;
      qo.mode = PoolingMode::kMax;
      auto got = client->EmbeddingBag("t", r.Bag(), qo);
      if (!got.ok()) {
        ++bad;
        continue;
      }
      const TableSnapshot& s = got->version == 1 ? *v1 : *v2;
      auto want = EmbeddingBag(s.view(), r.Bag(), qo);
      if (!SameAnswer(*want, got->output, qo.mode)) ++bad;
      ++(got->version == 1 ? seen1 : seen2);
    }
  });
  while (seen1.load() < 20) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_EQ(c.Publish("t", "f32", 4, 2).exit_code, 0);
  const auto give_up = Clock::now() + std::chrono::seconds(20);
  while (seen2.load() < 20 && Clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  stop = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GE(seen1.load(), 20);
  EXPECT_GE(seen2.load(), 20);
  // Rollback: version 1 is current again.
  const auto rb = RunCli({"rollback", "--cluster", c.etcd.endpoint(), "--table", "t"});
  ASSERT_EQ(rb.exit_code, 0) << rb.err;
  EXPECT_NE(rb.out.find("version 1 is current"), std::string::npos) << rb.out;
  const auto give_up2 = Clock::now() + std::chrono::seconds(10);
  while (client->Route("t")->version != 1 && Clock::now() < give_up2)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto got = client->EmbeddingBag("t", Request{{5}, {0}, {}}.Bag(), QueryOptions());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->version, 1u);
  EXPECT_EQ(got->output.values[0], v1_values[5 * kDim]);
}

TEST(ClusterTest, AStoppedOrKilledPublishLeavesTheOldVersionServing) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(3));
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(21, "f32", "old"));
  ASSERT_EQ(c.Publish("t", "f32", 3, 2).exit_code, 0);
  auto old = c.Local("old");
  ASSERT_TRUE(old.ok());
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(22, "f32", "new"));
  auto etcd = serve::Etcd::Connect(c.etcd.endpoint(), std::chrono::seconds(5));
  ASSERT_TRUE(etcd.ok());
  const std::vector<std::string> steps = {"reserved", "shard 0 replica 0", "shard 1 replica 1",
                                          "shard 2 replica 1", "manifest"};
  for (const std::string& stop_at : steps) {
    serve::PublishOptions o;
    o.table = "t";
    o.from = c.dir / "t.npy";
    o.shards = 3;
    o.replicas = 2;
    o.step = [&stop_at](const std::string& s) { return s != stop_at; };
    auto m = serve::Publish(etcd->get(), o);
    ASSERT_FALSE(m.ok()) << stop_at;
    auto client = c.Client();
    auto got = client->EmbeddingBag("t", Request{{0, 999}, {0}, {}}.Bag(), QueryOptions());
    ASSERT_TRUE(got.ok()) << stop_at << ": " << got.status().ToString();
    EXPECT_EQ(got->version, 1u) << stop_at;
    auto want = EmbeddingBag(old->view(), Request{{0, 999}, {0}, {}}.Bag(), QueryOptions());
    EXPECT_TRUE(SameAnswer(*want, got->output, PoolingMode::kMean)) << stop_at;
  }
  // A real kill: the publish process, SIGKILLed once it has sent rows.
  {
    int err[2];
    ASSERT_EQ(::pipe(err), 0);
    const std::string t = c.dir / "t.npy";
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(err[1], 2);
      ::execl(EMBSTORE_CLI, EMBSTORE_CLI, "publish", "--cluster", c.etcd.endpoint().c_str(),
              "--table", "t", "--from", t.c_str(), "--shards", "3", "--replicas", "2", nullptr);
      _exit(127);
    }
    ::close(err[1]);
    std::string text;
    char b[512];
    while (text.find("verified there") == std::string::npos) {
      const ssize_t n = ::read(err[0], b, sizeof b);
      if (n <= 0) break;
      text.append(b, static_cast<size_t>(n));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    ::close(err[0]);
    EXPECT_NE(text.find("verified there"), std::string::npos) << text;
  }
  auto client = c.Client();
  auto got = client->EmbeddingBag("t", Request{{3}, {0}, {}}.Bag(), QueryOptions());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->version, 1u);
  auto want = EmbeddingBag(old->view(), Request{{3}, {0}, {}}.Bag(), QueryOptions());
  ASSERT_TRUE(want.ok());
  EXPECT_TRUE(SameAnswer(*want, got->output, PoolingMode::kMean));
  // The status shows the unfinished versions as publishing, version 1 current.
  const auto st = RunCli({"cluster", "status", "--cluster", c.etcd.endpoint()});
  ASSERT_EQ(st.exit_code, 0) << st.err;
  EXPECT_NE(st.out.find("current version 1"), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("publishing"), std::string::npos) << st.out;
  // And a publish after all that succeeds.
  ASSERT_EQ(c.Publish("t", "f32", 3, 2).exit_code, 0);
}

// Publish retires old versions (--keep 2: the new one and the one it
// replaced; and any left "publishing" by a failed publish), and the nodes
// drop the retired versions' shards (here with --shard-gc-grace 0); what is
// kept still serves and rolls back.
TEST(ClusterTest, RetiredVersionsLeaveEtcdAndTheNodesDropTheirShards) {
  Cluster c;
  c.node_args = {"--shard-gc-grace", "0"};
  ASSERT_NO_FATAL_FAILURE(c.Start(3));
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(31, "f32", "v1"));
  ASSERT_EQ(c.Publish("t", "f32", 3, 2).exit_code, 0);
  auto etcd = serve::Etcd::Connect(c.etcd.endpoint(), std::chrono::seconds(5));
  ASSERT_TRUE(etcd.ok());
  {  // version 2: stopped after shard 0's first replica, left "publishing"
    serve::PublishOptions o;
    o.table = "t";
    o.from = c.dir / "t.npy";
    o.shards = 3;
    o.replicas = 2;
    o.step = [](const std::string& s) { return s != "shard 0 replica 1"; };
    ASSERT_FALSE(serve::Publish(etcd->get(), o).ok());
  }
  auto count = [&](const std::string& version_prefix) {
    int n = 0;
    for (int i = 0; i < 3; ++i) {
      for (const std::string& name : c.ShardsOn(i)) n += name.rfind(version_prefix, 0) == 0;
    }
    return n;
  };
  EXPECT_EQ(count("t.v2."), 2);  // shard 0 on both its replicas
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(33, "f32", "v3"));
  auto r3 = c.Publish("t", "f32", 3, 2);
  ASSERT_EQ(r3.exit_code, 0) << r3.err;
  EXPECT_NE(r3.err.find("version 2 retired"), std::string::npos) << r3.err;
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(34, "f32", "v4"));
  auto r4 = c.Publish("t", "f32", 3, 2);
  ASSERT_EQ(r4.exit_code, 0) << r4.err;
  EXPECT_NE(r4.err.find("version 1 retired"), std::string::npos) << r4.err;
  auto versions = (*etcd)->List("/embstore/tables/t/versions/");
  ASSERT_TRUE(versions.ok());
  std::vector<std::string> keys;
  for (const auto& kv : *versions) keys.push_back(kv.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"/embstore/tables/t/versions/000000000003",
                                            "/embstore/tables/t/versions/000000000004"}));
  // The nodes drop versions 1 and 2 (checked every 200 ms with grace 0).
  const auto until = Clock::now() + std::chrono::seconds(20);
  while ((count("t.v1.") > 0 || count("t.v2.") > 0) && Clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(count("t.v1."), 0);
  EXPECT_EQ(count("t.v2."), 0);
  EXPECT_EQ(count("t.v3."), 6);
  EXPECT_EQ(count("t.v4."), 6);
  bool said = false;
  for (auto& n : c.nodes) said |= n->err().find("'t.v1.s") != std::string::npos;
  EXPECT_TRUE(said) << "no node said it dropped a shard of version 1";
  // What is kept serves: 4, then 3 after a rollback.
  const Request q{{0, 500, 999}, {0, 1}, {}};
  for (const auto& [version, local] : {std::pair<uint64_t, const char*>{4, "v4"}, {3, "v3"}}) {
    if (version == 3) {
      auto rb = RunCli({"rollback", "--cluster", c.etcd.endpoint(), "--table", "t"});
      ASSERT_EQ(rb.exit_code, 0) << rb.err;
    }
    auto client = c.Client();
    auto got = client->EmbeddingBag("t", q.Bag(), QueryOptions());
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->version, version);
    auto snap = c.Local(local);
    ASSERT_TRUE(snap.ok());
    auto want = EmbeddingBag(snap->view(), q.Bag(), QueryOptions());
    ASSERT_TRUE(want.ok());
    EXPECT_TRUE(SameAnswer(*want, got->output, PoolingMode::kMean)) << version;
  }
  // A publish overtaken: while it transfers (version 5), another one
  // completes (version 6) and retires 5's reservation; the first then fails
  // without making 5 ready or current.
  serve::PublishOptions slow;
  slow.table = "t";
  slow.from = c.dir / "t.npy";
  slow.shards = 3;
  slow.replicas = 2;
  bool overtaken = false;
  slow.step = [&](const std::string& s) {
    if (s == "shard 0 replica 0" && !overtaken) {
      overtaken = true;
      EXPECT_EQ(c.Publish("t", "f32", 3, 2).exit_code, 0);
    }
    return true;
  };
  auto m5 = serve::Publish(etcd->get(), slow);
  ASSERT_TRUE(overtaken);
  ASSERT_FALSE(m5.ok());
  EXPECT_NE(m5.status().message().find("version 5 of 't' was retired by a newer publish"),
            std::string::npos)
      << m5.status().message();
  auto current = (*etcd)->Get("/embstore/tables/t/current");
  ASSERT_TRUE(current.ok() && current->has_value());
  EXPECT_EQ((*current)->value, "6");
  auto v5 = (*etcd)->Get("/embstore/tables/t/versions/000000000005");
  ASSERT_TRUE(v5.ok());
  EXPECT_FALSE(v5->has_value()) << "version 5's manifest came back";
}

// Every reply names the version and the checksum of the rows it pooled; a
// node holding other rows under a shard's name (here planted while it was
// down) is refused and the shard asked of its other replica: no wrong
// answer. With no other replica, UNAVAILABLE says why.
TEST(ClusterTest, RowsOtherThanTheManifestsAreRefusedAndAskedElsewhere) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(3));
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(41, "f32", "good"));
  ASSERT_EQ(c.Publish("t", "f32", 6, 2).exit_code, 0);
  auto client = c.Client(std::chrono::milliseconds(2000));
  auto route = client->Route("t");
  ASSERT_TRUE(route.ok());
  size_t planted = route->shards.size();
  for (size_t s = 0; s < route->shards.size() && planted == route->shards.size(); ++s)
    if (route->shards[s].nodes.at(0) == "n0") planted = s;
  ASSERT_LT(planted, route->shards.size()) << "n0 is asked first for no shard";
  const serve::ShardInfo shard = route->shards[planted];
  // n0 down; other rows of the same shape under the shard's name; n0 up.
  ASSERT_EQ(WEXITSTATUS(c.nodes[0]->Stop()), 0);
  testing::WriteF32Npy(
      c.dir / "other.npy", {shard.end - shard.begin, kDim},
      std::vector<float>(static_cast<size_t>((shard.end - shard.begin) * kDim), 7.0f));
  const std::string name = "t.v1.s" + std::to_string(planted);
  auto imp = RunCli({"import", "--db", c.dir / "node0", "--table", name, "--from",
                     c.dir / "other.npy", "--replace"});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  ASSERT_NO_FATAL_FAILURE(c.StartNode(0));
  // Wait for n0 to be routed again, then query rows of every shard.
  const auto until = Clock::now() + std::chrono::seconds(20);
  auto fresh = c.Client(std::chrono::milliseconds(2000));
  auto good = c.Local("good");
  ASSERT_TRUE(good.ok());
  const Request q{{shard.begin, 0, 999, shard.end - 1}, {0, 2}, {}};
  auto want = EmbeddingBag(good->view(), q.Bag(), QueryOptions());
  ASSERT_TRUE(want.ok());
  int asked = 0;
  while (fresh->stats().mismatched_replies == 0 && Clock::now() < until) {
    auto got = fresh->EmbeddingBag("t", q.Bag(), QueryOptions());
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_TRUE(SameAnswer(*want, got->output, PoolingMode::kMean));
    ++asked;
  }
  EXPECT_GT(fresh->stats().mismatched_replies, 0) << "n0's planted rows were never refused";
  EXPECT_GE(fresh->stats().retries, fresh->stats().mismatched_replies);
  for (int i = 0; i < 20; ++i) {
    auto got = fresh->EmbeddingBag("t", q.Bag(), QueryOptions());
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_TRUE(SameAnswer(*want, got->output, PoolingMode::kMean));
  }
  // The other replica gone: the planted rows are all that is left.
  const std::string other = shard.nodes.at(1);
  const int other_index = other[1] - '0';
  c.nodes[static_cast<size_t>(other_index)]->Stop(SIGKILL);
  auto got = fresh->EmbeddingBag("t", q.Bag(), QueryOptions());
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("UNAVAILABLE"), std::string::npos);
  EXPECT_NE(got.status().message().find("n0: rows of another version"), std::string::npos)
      << got.status().message();
  EXPECT_NE(got.status().message().find("shard " + std::to_string(planted) + " ("),
            std::string::npos)
      << got.status().message();
}

TEST(ClusterTest, ARestartedNodeReverifiesAndRegistersItsShards) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(3));
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(31, "f32", "t"));
  ASSERT_EQ(c.Publish("t", "f32", 3, 3).exit_code, 0);  // every node holds every shard
  c.nodes[2]->Kill();
  // Damage one of its shard files (a byte of data), then restart it.
  const std::string db = c.dir / "node2";
  std::string victim;
  for (const auto& e : std::filesystem::directory_iterator(db + "/tables"))
    if (victim.empty()) victim = e.path();
  ASSERT_FALSE(victim.empty());
  {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4096 + 8);
    const char x = 0x5a;
    f.write(&x, 1);
  }
  // Its lease expires (2 s), then it comes back under the same name.
  auto etcd = serve::Etcd::Connect(c.etcd.endpoint(), std::chrono::seconds(5));
  ASSERT_TRUE(etcd.ok());
  const auto give_up = Clock::now() + std::chrono::seconds(15);
  while (Clock::now() < give_up && (*etcd)->Get("/embstore/nodes/n2")->has_value())
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_FALSE((*etcd)->Get("/embstore/nodes/n2")->has_value());
  const auto down = RunCli({"cluster", "status", "--cluster", c.etcd.endpoint()});
  EXPECT_NE(down.out.find("n2 (down)"), std::string::npos) << down.out;
  EXPECT_NE(down.out.find("under-replicated shards: 3"), std::string::npos) << down.out;
  ASSERT_NO_FATAL_FAILURE(c.StartNode(2));
  EXPECT_NE(c.nodes[2]->err().find("failed its check"), std::string::npos) << c.nodes[2]->err();
  const auto up = RunCli({"cluster", "status", "--cluster", c.etcd.endpoint()});
  EXPECT_NE(up.out.find("nodes: 3 live"), std::string::npos) << up.out;
  // Queries use it again: kill the other two, every shard it kept answers.
  auto snap = c.Local("t");
  ASSERT_TRUE(snap.ok());
  auto client = c.Client(std::chrono::milliseconds(300), std::chrono::milliseconds(5000));
  c.nodes[0]->Kill();
  c.nodes[1]->Kill();
  int answered = 0;
  for (int64_t id = 0; id < kRows; id += 50) {
    auto got = client->EmbeddingBag("t", Request{{id}, {0}, {}}.Bag(), QueryOptions());
    if (got.ok()) {
      ++answered;
      auto want = EmbeddingBag(snap->view(), Request{{id}, {0}, {}}.Bag(), QueryOptions());
      EXPECT_TRUE(SameAnswer(*want, got->output, PoolingMode::kMean));
    } else {
      EXPECT_NE(got.status().message().find("UNAVAILABLE"), std::string::npos);
    }
  }
  EXPECT_GT(answered, 0);
  EXPECT_LT(answered, static_cast<int>(kRows / 50)) << "the damaged shard was dropped";
}

TEST(ClusterTest, RebalanceRestoresTheReplicasOfALostNode) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(4));
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(61, "int8", "t"));  // copies must be byte for byte
  ASSERT_EQ(c.Publish("t", "int8", 6, 2).exit_code, 0);
  auto snap = c.Local("t");
  ASSERT_TRUE(snap.ok());
  c.nodes[1]->Kill();
  auto etcd = serve::Etcd::Connect(c.etcd.endpoint(), std::chrono::seconds(5));
  ASSERT_TRUE(etcd.ok());
  const auto give_up = Clock::now() + std::chrono::seconds(15);
  while (Clock::now() < give_up && (*etcd)->Get("/embstore/nodes/n1")->has_value())
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto before = RunCli({"cluster", "status", "--cluster", c.etcd.endpoint()});
  ASSERT_EQ(before.out.find("under-replicated shards: 0"), std::string::npos) << before.out;
  const auto rb = RunCli({"cluster", "rebalance", "--cluster", c.etcd.endpoint()});
  ASSERT_EQ(rb.exit_code, 0) << rb.err;
  EXPECT_NE(rb.out.find("replicas added"), std::string::npos) << rb.out;
  EXPECT_NE(rb.err.find("verified there"), std::string::npos) << rb.err;
  const auto after = RunCli({"cluster", "status", "--cluster", c.etcd.endpoint()});
  EXPECT_NE(after.out.find("under-replicated shards: 0"), std::string::npos) << after.out;
  EXPECT_EQ(after.out.find("n1"), std::string::npos) << after.out;
  // A second rebalance has nothing to do.
  const auto again = RunCli({"cluster", "rebalance", "--cluster", c.etcd.endpoint()});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.out.find("rebalanced: 0 replicas added"), std::string::npos) << again.out;
  // Two replicas again: another node can go and every row still answers.
  auto client = c.Client(std::chrono::milliseconds(300), std::chrono::milliseconds(5000));
  ASSERT_NE(client, nullptr);
  c.nodes[3]->Kill();
  Request all;
  all.offsets = {0};
  for (int64_t id = 0; id < kRows; ++id) all.ids.push_back(id);
  QueryOptions qo;
  qo.mode = PoolingMode::kMax;
  auto got = client->EmbeddingBag("t", all.Bag(), qo);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  auto want = EmbeddingBag(snap->view(), all.Bag(), qo);
  EXPECT_TRUE(SameAnswer(*want, got->output, qo.mode));
  // With the last replicas of some shards gone, rebalance names them and fails.
  c.nodes[0]->Kill();
  c.nodes[2]->Kill();
  const auto give_up2 = Clock::now() + std::chrono::seconds(15);
  while (Clock::now() < give_up2 && !(*etcd)->List("/embstore/nodes/")->empty())
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_NO_FATAL_FAILURE(c.StartNode(4));
  const auto none = RunCli({"cluster", "rebalance", "--cluster", c.etcd.endpoint()});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("cannot be restored"), std::string::npos) << none.err;
  EXPECT_NE(none.err.find("t.v1.s0"), std::string::npos) << none.err;
}

TEST(ClusterTest, WithEtcdStoppedQueriesGoOnAndPublishesFailCleanly) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(3));
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(41, "f32", "t"));
  ASSERT_EQ(c.Publish("t", "f32", 4, 2).exit_code, 0);
  auto snap = c.Local("t");
  ASSERT_TRUE(snap.ok());
  auto client = c.Client();
  ASSERT_NE(client, nullptr);
  c.etcd.Stop();
  std::mt19937_64 rng(3);
  for (int i = 0; i < 50; ++i) {
    const Request r = RandomRequest(rng, 8, 8, false);
    QueryOptions qo;
    qo.mode = PoolingMode::kMax;
    auto got = client->EmbeddingBag("t", r.Bag(), qo);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    auto want = EmbeddingBag(snap->view(), r.Bag(), qo);
    EXPECT_TRUE(SameAnswer(*want, got->output, qo.mode));
  }
  const auto pub = c.Publish("t", "f32", 4, 2);
  EXPECT_EQ(pub.exit_code, 2);
  EXPECT_NE(pub.err.find("etcd at"), std::string::npos) << pub.err;
  for (auto& n : c.nodes) EXPECT_EQ(WEXITSTATUS(n->Stop()), 0) << n->err();
}

TEST(ClusterTest, TheCliPublishesQueriesAndReports) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.Start(3));
  ASSERT_NO_FATAL_FAILURE(c.MakeTable(51, "f32", "t"));
  const auto pub = c.Publish("t", "f32", 6, 2);
  ASSERT_EQ(pub.exit_code, 0) << pub.err;
  EXPECT_NE(pub.out.find("published t: version 1, 1000 x 16 f32, 6 shards x 2 replicas"),
            std::string::npos)
      << pub.out;
  for (const std::string mode : {"sum", "max"}) {
    const std::vector<std::string> q = {"--table",   "t",     "--indices", "1,500,999,3,7,200,13",
                                        "--offsets", "0,2,2", "--mode",    mode};
    std::vector<std::string> remote = {"query", "--cluster", c.etcd.endpoint()};
    std::vector<std::string> local = {"query", "--db", c.dir / "local"};
    remote.insert(remote.end(), q.begin(), q.end());
    local.insert(local.end(), q.begin(), q.end());
    const auto a = RunCli(remote), b = RunCli(local);
    ASSERT_EQ(a.exit_code, 0) << a.err;
    ASSERT_EQ(b.exit_code, 0) << b.err;
    if (mode == "max") {
      EXPECT_EQ(a.out, b.out);
    }
    EXPECT_EQ(std::count(a.out.begin(), a.out.end(), '\n'), 3);
  }
  const auto st = RunCli({"cluster", "status", "--cluster", c.etcd.endpoint()});
  ASSERT_EQ(st.exit_code, 0) << st.err;
  EXPECT_NE(st.out.find("nodes: 3 live"), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("version 1 (current)  ready  1000 x 16 f32, 6 shards x 2 replicas"),
            std::string::npos)
      << st.out;
  EXPECT_NE(st.out.find("under-replicated shards: 0"), std::string::npos) << st.out;
  // Bad usage: clear messages, exit 1.
  for (const auto& [args, message] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"publish", "--cluster", "nonsense", "--table", "t", "--from", c.dir / "t.npy"},
            "is not an etcd endpoint"},
           {{"publish", "--cluster", c.etcd.endpoint(), "--table", "t", "--from", c.dir / "t.npy",
             "--replicas", "4"},
            "needs as many live nodes"},
           {{"publish", "--cluster", c.etcd.endpoint(), "--table", "t", "--from", c.dir / "t.npy",
             "--shards", "0"},
            "--shards must be between"},
           {{"cluster", "--cluster", c.etcd.endpoint()}, "give an action"},
           {{"query", "--cluster", c.etcd.endpoint(), "--table", "t", "--indices", "1", "--offsets",
             "0", "--db", "x"},
            "--db does not apply with --cluster"},
           {{"serve", "--db", c.dir / "x", "--node", "n9"}, "--node applies to --cluster only"},
       }) {
    const auto r = RunCli(args);
    EXPECT_NE(r.exit_code, 0) << args[0];
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
  }
  // A second node of an existing name is refused.
  ServeProcess dup;
  EXPECT_FALSE(dup.Start(c.dir / "dup", {"--cluster", c.etcd.endpoint(), "--node", "n1"}));
  EXPECT_NE(dup.err().find("already registered"), std::string::npos) << dup.err();
  // PoolPartial is for nodes only: a stand-alone server refuses shard RPCs
  // (covered by serve_test for the public RPCs).
  for (auto& n : c.nodes) EXPECT_EQ(WEXITSTATUS(n->Stop()), 0) << n->err();
}

}  // namespace
}  // namespace embstore
