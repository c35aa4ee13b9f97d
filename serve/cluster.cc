#include "serve/cluster.h"

#include <grpcpp/grpcpp.h>
#include <xxhash.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "checkpoint/tensor_reader.h"
#include "embstore/store.h"
#include "embstore/v1/embstore.grpc.pb.h"
#include "engine/partial.h"
#include "engine/plan.h"
#include "serve/convert.h"
#include "storage/convert.h"
#include "util/mutex.h"

namespace embstore::serve {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string Hex64(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016" PRIx64, v);
  return b;
}

Result<uint64_t> ParseHex64(const std::string& s) {
  if (s.empty() || s.size() > 16) return Status::InvalidArgument("bad checksum '" + s + "'");
  uint64_t v = 0;
  for (char c : s) {
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return Status::InvalidArgument("bad checksum '" + s + "'");
    v = v << 4 | static_cast<uint64_t>(d);
  }
  return v;
}

Result<uint64_t> ParseVersion(const std::string& s, const std::string& what) {
  if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string::npos) {
    return Status::Corruption(what + " is not a version number: '" + s + "'");
  }
  return std::stoull(s);
}

Status StepStopped(const std::string& step) {
  return Status::IOError("publish stopped after step '" + step + "' (test hook)");
}

}  // namespace

// ---------------------------------------------------------------- manifest

std::string ManifestToJson(const Manifest& m) {
  json j = json::object();
  j["table"] = m.table;
  j["version"] = m.version;
  j["state"] = m.state;
  j["rows"] = m.rows;
  j["dim"] = m.dim;
  j["dtype"] = FindDType(m.dtype)->name;
  j["replicas"] = m.replicas;
  j["source"] = m.source;
  j["created_unix"] = m.created_unix;
  json shards = json::array();
  for (const ShardInfo& s : m.shards) {
    shards.push_back(
        {{"begin", s.begin}, {"end", s.end}, {"checksum", Hex64(s.checksum)}, {"nodes", s.nodes}});
  }
  j["shards"] = shards;
  return j.dump();
}

Result<Manifest> ManifestFromJson(const std::string& text) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Status::Corruption("a cluster manifest is not a JSON object");
  Manifest m;
  try {
    m.table = j.at("table").get<std::string>();
    m.version = j.at("version").get<uint64_t>();
    m.state = j.at("state").get<std::string>();
    m.rows = j.at("rows").get<int64_t>();
    m.dim = j.at("dim").get<int64_t>();
    const std::optional<DType> d = ParseDType(j.at("dtype").get<std::string>());
    if (!d) return Status::Corruption("manifest of '" + m.table + "': unknown dtype");
    m.dtype = *d;
    m.replicas = j.at("replicas").get<int>();
    m.source = j.value("source", "");
    m.created_unix = j.value("created_unix", int64_t{0});
    int64_t next = 0;
    for (const json& s : j.at("shards")) {
      ShardInfo info;
      info.begin = s.at("begin").get<int64_t>();
      info.end = s.at("end").get<int64_t>();
      EMBSTORE_ASSIGN_OR_RETURN(info.checksum, ParseHex64(s.at("checksum").get<std::string>()));
      info.nodes = s.at("nodes").get<std::vector<std::string>>();
      if (info.begin != next || info.end < info.begin) {
        return Status::Corruption("manifest of '" + m.table + "' version " +
                                  std::to_string(m.version) + ": its shards do not tile the rows");
      }
      next = info.end;
      m.shards.push_back(std::move(info));
    }
    // A version still publishing lists its shards only once they are placed.
    if ((m.state == "ready" && next != m.rows) || m.rows < 0 || m.dim < 1) {
      return Status::Corruption("manifest of '" + m.table + "' version " +
                                std::to_string(m.version) + ": its shards do not cover its rows");
    }
  } catch (const json::exception& e) {
    return Status::Corruption(std::string("a cluster manifest is malformed: ") + e.what());
  }
  return m;
}

std::string ShardTableName(const std::string& table, uint64_t version, size_t shard) {
  return table + ".v" + std::to_string(version) + ".s" + std::to_string(shard);
}

Status ValidateClusterTableName(const std::string& name) {
  EMBSTORE_RETURN_IF_ERROR(ValidateTableName(name));
  if (name.size() > kMaxClusterTableName) {
    return Status::InvalidArgument("a cluster table name has at most " +
                                   std::to_string(kMaxClusterTableName) + " characters: '" + name +
                                   "'");
  }
  return Status::OK();
}

std::vector<std::string> PlaceShard(const std::vector<std::string>& nodes, const std::string& table,
                                    size_t shard, int replicas) {
  std::vector<std::pair<uint64_t, std::string>> scored;
  for (const std::string& n : nodes) {
    const std::string key = n + '\0' + table + '\0' + std::to_string(shard);
    scored.emplace_back(XXH64(key.data(), key.size(), 0x656d6273746f7265ull), n);
  }
  std::sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  std::vector<std::string> out;
  for (size_t i = 0; i < scored.size() && static_cast<int>(i) < replicas; ++i)
    out.push_back(scored[i].second);
  return out;
}

std::pair<int64_t, int64_t> ShardRange(int64_t rows, int64_t shards, int64_t s) {
  const auto at = [rows, shards](int64_t k) {
    return static_cast<int64_t>(static_cast<__int128>(rows) * k / shards);
  };
  return {at(s), at(s + 1)};
}

std::string ClusterKeys::Version(const std::string& t, uint64_t v) const {
  char b[24];
  std::snprintf(b, sizeof b, "%012" PRIu64, v);
  return Versions(t) + b;
}

Result<std::vector<NodeInfo>> ListNodes(Etcd* etcd, const ClusterKeys& keys) {
  EMBSTORE_ASSIGN_OR_RETURN(std::vector<EtcdKeyValue> kvs, etcd->List(keys.Nodes()));
  std::vector<NodeInfo> out;
  for (const EtcdKeyValue& kv : kvs) {
    const json j = json::parse(kv.value, nullptr, false);
    if (!j.is_object() || !j.contains("address") || !j["address"].is_string()) continue;
    NodeInfo n;
    n.name = kv.key.substr(keys.Nodes().size());
    n.address = j["address"].get<std::string>();
    n.started_unix = j.value("started_unix", int64_t{0});
    out.push_back(std::move(n));
  }
  return out;
}

// ---------------------------------------------------------------- membership

struct ClusterMember::State {
  std::unique_ptr<Etcd> etcd;
  ClusterKeys keys;
  NodeInfo node;
  int64_t ttl_s = 0;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> lease{0};
  std::thread thread;

  std::string Value() const {
    return json{{"name", node.name}, {"address", node.address}, {"started_unix", node.started_unix}}
        .dump();
  }
  Result<int64_t> Register() {
    EMBSTORE_ASSIGN_OR_RETURN(int64_t id, etcd->GrantLease(ttl_s));
    EMBSTORE_RETURN_IF_ERROR(etcd->Put(keys.Node(node.name), Value(), id));
    return id;
  }
  // Keeps the lease alive every third of its TTL until `stop`.
  void KeepAliveLoop() {
    const auto period = std::chrono::milliseconds(std::max<int64_t>(100, ttl_s * 1000 / 3));
    while (!stop.load()) {
      for (auto t = std::chrono::milliseconds(0); t < period && !stop.load();
           t += std::chrono::milliseconds(20)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (stop.load()) break;
      Status st = etcd->KeepAlive(lease.load());
      if (st.code() == Status::Code::kNotFound) {  // expired: register again
        auto r = Register();
        if (r.ok()) lease.store(*r);
        st = r.status();
      }
      if (!st.ok() && !stop.load()) {
        std::fprintf(stderr, "embstore serve: cluster: %s (retrying)\n", st.message().c_str());
      }
    }
  }
};

Result<std::unique_ptr<ClusterMember>> ClusterMember::Join(const std::string& endpoints,
                                                           const ClusterKeys& keys,
                                                           const NodeInfo& node, int64_t ttl_s) {
  if (ttl_s < 1) return Status::InvalidArgument("--lease-ttl must be >= 1 second");
  std::unique_ptr<ClusterMember> m(new ClusterMember());
  m->state_ = std::make_unique<State>();
  State* s = m->state_.get();
  EMBSTORE_ASSIGN_OR_RETURN(s->etcd, Etcd::Connect(endpoints, std::chrono::seconds(5)));
  s->keys = keys;
  s->node = node;
  s->ttl_s = ttl_s;
  // Another live node of the same name would be silently replaced.
  EMBSTORE_ASSIGN_OR_RETURN(std::optional<EtcdKeyValue> other, s->etcd->Get(keys.Node(node.name)));
  if (other) {
    return Status::AlreadyExists("a node named '" + node.name +
                                 "' is already registered in the cluster (" + other->value +
                                 "); give another --node name, or wait for its lease (" +
                                 std::to_string(ttl_s) + " s) to expire");
  }
  EMBSTORE_ASSIGN_OR_RETURN(int64_t lease, s->Register());
  s->lease.store(lease);
  s->thread = std::thread([s] { s->KeepAliveLoop(); });
  return m;
}

void ClusterMember::Leave() {
  if (!state_ || state_->stop.exchange(true)) return;
  if (state_->thread.joinable()) state_->thread.join();
  (void)state_->etcd->RevokeLease(state_->lease.load());  // the key goes with it
}

ClusterMember::~ClusterMember() { Leave(); }

// ---------------------------------------------------------------- publish

namespace {

// A stub per node address, made once.
class NodeStubs {
 public:
  explicit NodeStubs(ClientOptions tls) : tls_(std::move(tls)) {}
  Result<v1::Embstore::Stub*> Get(const std::string& address) {
    MutexLock lock(&mu_);
    auto it = stubs_.find(address);
    if (it != stubs_.end()) return it->second.get();
    ClientOptions o = tls_;
    o.target = address;
    EMBSTORE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> ch, OpenChannel(o));
    auto& slot = stubs_[address];
    slot = v1::Embstore::NewStub(ch);
    return slot.get();
  }

 private:
  ClientOptions tls_;
  Mutex mu_;
  std::map<std::string, std::unique_ptr<v1::Embstore::Stub>> stubs_ GUARDED_BY(mu_);
};

Status NodeCall(const grpc::Status& st, const std::string& node, const std::string& what) {
  if (st.ok()) return Status::OK();
  return FromGrpc(st, "node '" + node + "' (" + what + ")");
}

}  // namespace

Result<Manifest> Publish(Etcd* etcd, const PublishOptions& o) {
  auto log = [&o](const std::string& line) {
    if (o.log) o.log(line);
  };
  auto step = [&o](const std::string& name) { return !o.step || o.step(name); };
  EMBSTORE_RETURN_IF_ERROR(ValidateClusterTableName(o.table));
  if (o.shards < 1 || o.shards > 65536) {
    return Status::InvalidArgument("--shards must be between 1 and 65536");
  }
  if (o.replicas < 1 || o.replicas > 16) {
    return Status::InvalidArgument("--replicas must be between 1 and 16");
  }
  if (o.keep < 1) return Status::InvalidArgument("--keep must be >= 1");
  EMBSTORE_ASSIGN_OR_RETURN(auto reader, storage::OpenTensor(o.from, o.tensor_key));
  Manifest m;
  m.table = o.table;
  m.rows = reader->rows();
  m.dim = reader->dim();
  m.dtype = o.dtype.value_or(storage::DefaultTableDType(reader->source_dtype()));
  m.replicas = o.replicas;
  m.source = reader->source();
  m.created_unix = static_cast<int64_t>(std::time(nullptr));
  if (m.rows < o.shards) {
    return Status::InvalidArgument("--shards " + std::to_string(o.shards) + " is more than the " +
                                   std::to_string(m.rows) + " rows of " + m.source);
  }

  EMBSTORE_ASSIGN_OR_RETURN(std::vector<NodeInfo> nodes, ListNodes(etcd, o.keys));
  if (static_cast<int>(nodes.size()) < o.replicas) {
    return Status::IOError("--replicas " + std::to_string(o.replicas) +
                           " needs as many live nodes; the cluster has " +
                           std::to_string(nodes.size()));
  }
  std::map<std::string, std::string> address;
  std::vector<std::string> names;
  for (const NodeInfo& n : nodes) {
    address[n.name] = n.address;
    names.push_back(n.name);
  }

  // Reserve the next version number: a key created only if absent.
  EMBSTORE_ASSIGN_OR_RETURN(std::vector<EtcdKeyValue> existing,
                            etcd->List(o.keys.Versions(o.table)));
  uint64_t v = 1;
  for (const EtcdKeyValue& kv : existing) {
    auto n = ParseVersion(kv.key.substr(o.keys.Versions(o.table).size()), kv.key);
    if (n.ok()) v = std::max(v, *n + 1);
  }
  std::string reservation;  // the manifest as reserved, which the ready one replaces by CAS
  for (;; ++v) {
    m.version = v;
    m.state = "publishing";
    reservation = ManifestToJson(m);
    EMBSTORE_ASSIGN_OR_RETURN(
        bool reserved, etcd->CompareAndPut(o.keys.Version(o.table, v), std::nullopt, reservation));
    if (reserved) break;
  }
  log("version " + std::to_string(v) + " of '" + o.table + "' reserved");
  if (!step("reserved")) return StepStopped("reserved");

  NodeStubs stubs(o.tls);
  const size_t stride = RowStrideBytes(m.dtype, m.dim);
  const int64_t chunk_rows = std::max<int64_t>(
      1, o.chunk_bytes / static_cast<int64_t>(std::max(stride, m.dim * sizeof(float))));
  std::vector<float> rows;
  std::vector<uint8_t> encoded;
  for (int s = 0; s < o.shards; ++s) {
    ShardInfo shard;
    std::tie(shard.begin, shard.end) = ShardRange(m.rows, o.shards, s);
    shard.nodes = PlaceShard(names, o.table, static_cast<size_t>(s), o.replicas);
    const std::string name = ShardTableName(o.table, v, static_cast<size_t>(s));
    // Stream the rows once to every replica, hashing them as the store
    // will encode them.
    XXH64_state_t* hash = XXH64_createState();
    XXH64_reset(hash, 0);
    std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> hash_owner(hash, XXH64_freeState);
    for (int64_t first = shard.begin; first < shard.end; first += chunk_rows) {
      const int64_t n = std::min(chunk_rows, shard.end - first);
      rows.resize(static_cast<size_t>(n * m.dim));
      EMBSTORE_RETURN_IF_ERROR(reader->ReadRows(first, n, rows.data()));
      encoded.assign(static_cast<size_t>(n) * stride, 0);
      EMBSTORE_RETURN_IF_ERROR(
          storage::EncodeRows(rows.data(), n, m.dim, m.dtype, stride, encoded.data(), first));
      XXH64_update(hash, encoded.data(), encoded.size());
      v1::PutShardRowsRequest req;
      req.set_shard(name);
      req.set_first_row(first - shard.begin);
      req.set_dim(m.dim);
      req.set_dtype(FindDType(m.dtype)->name);
      req.set_rows(encoded.data(), encoded.size());
      for (const std::string& node : shard.nodes) {
        EMBSTORE_ASSIGN_OR_RETURN(v1::Embstore::Stub * stub, stubs.Get(address[node]));
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + o.rpc_timeout);
        v1::PutShardRowsReply rep;
        EMBSTORE_RETURN_IF_ERROR(
            NodeCall(stub->PutShardRows(&ctx, req, &rep), node, "rows of " + name));
      }
    }
    shard.checksum = XXH64_digest(hash);
    for (size_t r = 0; r < shard.nodes.size(); ++r) {
      const std::string& node = shard.nodes[r];
      v1::CommitShardRequest req;
      req.set_shard(name);
      req.set_rows(shard.end - shard.begin);
      req.set_dim(m.dim);
      req.set_dtype(FindDType(m.dtype)->name);
      req.set_checksum(shard.checksum);
      req.set_source(m.source + " rows " + std::to_string(shard.begin) + ".." +
                     std::to_string(shard.end));
      EMBSTORE_ASSIGN_OR_RETURN(v1::Embstore::Stub * stub, stubs.Get(address[node]));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + o.rpc_timeout);
      v1::CommitShardReply rep;
      EMBSTORE_RETURN_IF_ERROR(
          NodeCall(stub->CommitShard(&ctx, req, &rep), node, "commit " + name));
      log("shard " + std::to_string(s) + " rows [" + std::to_string(shard.begin) + ", " +
          std::to_string(shard.end) + ") on '" + node + "', checksum " + Hex64(shard.checksum) +
          " verified there");
      if (!step("shard " + std::to_string(s) + " replica " + std::to_string(r))) {
        return StepStopped("shard " + std::to_string(s) + " replica " + std::to_string(r));
      }
    }
    m.shards.push_back(std::move(shard));
  }

  m.state = "ready";
  // Only over this publish's own reservation: a newer publish may have
  // retired it meanwhile (and the nodes may be dropping its shards).
  EMBSTORE_ASSIGN_OR_RETURN(bool readied, etcd->CompareAndPut(o.keys.Version(o.table, v),
                                                              reservation, ManifestToJson(m)));
  if (!readied) {
    return Status::IOError("version " + std::to_string(v) + " of '" + o.table +
                           "' was retired by a newer publish while this one ran; nothing changed");
  }
  if (!step("manifest")) return StepStopped("manifest");
  // Switch the current version: from what it was when read, by CAS.
  for (int attempt = 0; attempt < 100; ++attempt) {
    EMBSTORE_ASSIGN_OR_RETURN(std::optional<EtcdKeyValue> cur, etcd->Get(o.keys.Current(o.table)));
    std::optional<std::string> expected;
    if (cur) expected = cur->value;
    if (cur) {
      auto n = ParseVersion(cur->value, o.keys.Current(o.table));
      if (n.ok() && *n > v) {
        return Status::IOError("version " + std::to_string(*n) + " of '" + o.table +
                               "' was published meanwhile; version " + std::to_string(v) +
                               " is kept but not made current");
      }
    }
    EMBSTORE_ASSIGN_OR_RETURN(
        bool switched, etcd->CompareAndPut(o.keys.Current(o.table), expected, std::to_string(v)));
    if (switched) {
      log("version " + std::to_string(v) + " of '" + o.table + "' is current");
      // Retiring is housekeeping: the new version serves whatever happens.
      std::optional<uint64_t> previous;
      if (cur) {
        if (auto n = ParseVersion(cur->value, o.keys.Current(o.table)); n.ok()) previous = *n;
      }
      auto retired = RetireVersions(etcd, o.keys, o.table, v, previous, o.keep);
      if (!retired.ok()) {
        log("retiring old versions of '" + o.table + "' failed (" + retired.status().message() +
            "); the next publish retries");
      } else {
        for (uint64_t r : *retired) log("version " + std::to_string(r) + " retired");
      }
      return m;
    }
  }
  return Status::IOError("could not switch the current version of '" + o.table +
                         "': it kept changing");
}

Result<std::vector<uint64_t>> RetireVersions(Etcd* etcd, const ClusterKeys& keys,
                                             const std::string& table, uint64_t current,
                                             std::optional<uint64_t> previous, int keep) {
  EMBSTORE_ASSIGN_OR_RETURN(std::vector<EtcdKeyValue> kvs, etcd->List(keys.Versions(table)));
  std::vector<std::pair<uint64_t, std::string>> versions;  // (version, state), up to current
  for (const EtcdKeyValue& kv : kvs) {
    auto v = ParseVersion(kv.key.substr(keys.Versions(table).size()), kv.key);
    if (!v.ok() || *v > current) continue;
    auto m = ManifestFromJson(kv.value);
    versions.emplace_back(*v, m.ok() ? m->state : std::string("unreadable"));
  }
  std::sort(versions.rbegin(), versions.rend());
  std::vector<uint64_t> retired;
  int ready = 0;
  for (const auto& [v, state] : versions) {
    const bool keep_it = v == current || v == previous || (state == "ready" && ready < keep);
    if (state == "ready") ++ready;
    if (keep_it) continue;
    EMBSTORE_RETURN_IF_ERROR(etcd->Delete(keys.Version(table, v)));
    retired.push_back(v);
  }
  return retired;
}

Result<uint64_t> RollbackCluster(Etcd* etcd, const ClusterKeys& keys, const std::string& table,
                                 std::optional<uint64_t> to_version) {
  EMBSTORE_RETURN_IF_ERROR(ValidateClusterTableName(table));
  EMBSTORE_ASSIGN_OR_RETURN(std::optional<EtcdKeyValue> cur, etcd->Get(keys.Current(table)));
  if (!cur) return Status::NotFound("no table '" + table + "' in the cluster");
  EMBSTORE_ASSIGN_OR_RETURN(uint64_t current, ParseVersion(cur->value, keys.Current(table)));
  EMBSTORE_ASSIGN_OR_RETURN(std::vector<EtcdKeyValue> kvs, etcd->List(keys.Versions(table)));
  std::optional<uint64_t> pick;
  for (const EtcdKeyValue& kv : kvs) {
    auto m = ManifestFromJson(kv.value);
    if (!m.ok() || m->state != "ready") continue;
    if (to_version) {
      if (m->version == *to_version) pick = m->version;
    } else if (m->version < current && (!pick || m->version > *pick)) {
      pick = m->version;
    }
  }
  if (to_version && *to_version == current) {
    return Status::InvalidArgument("version " + std::to_string(current) + " of '" + table +
                                   "' is the current version");
  }
  if (!pick) {
    return Status::NotFound(to_version
                                ? "no ready version " + std::to_string(*to_version) + " of '" +
                                      table + "' in the cluster"
                                : "table '" + table + "' (version " + std::to_string(current) +
                                      ") has no earlier ready version to roll back to");
  }
  EMBSTORE_ASSIGN_OR_RETURN(
      bool switched, etcd->CompareAndPut(keys.Current(table), cur->value, std::to_string(*pick)));
  if (!switched) {
    return Status::IOError("the current version of '" + table +
                           "' changed during the rollback; nothing was done");
  }
  return *pick;
}

namespace {

// Copies shard `name` (rows, dtype and checksum as in `shard`) from node
// `from` to node `to`, encoded rows byte for byte.
Status CopyShard(NodeStubs* stubs, const std::string& name, const Manifest& m,
                 const ShardInfo& shard, const std::string& from_node, const std::string& from,
                 const std::string& to_node, const std::string& to, const RebalanceOptions& o) {
  EMBSTORE_ASSIGN_OR_RETURN(v1::Embstore::Stub * src, stubs->Get(from));
  EMBSTORE_ASSIGN_OR_RETURN(v1::Embstore::Stub * dst, stubs->Get(to));
  const int64_t rows = shard.end - shard.begin;
  const int64_t stride = static_cast<int64_t>(RowStrideBytes(m.dtype, m.dim));
  const int64_t chunk = std::max<int64_t>(1, o.chunk_bytes / stride);
  for (int64_t first = 0; first < rows;) {
    v1::GetShardRowsRequest get;
    get.set_shard(name);
    get.set_first_row(first);
    get.set_count(std::min(chunk, rows - first));
    v1::GetShardRowsReply got;
    grpc::ClientContext gctx;
    gctx.set_deadline(std::chrono::system_clock::now() + o.rpc_timeout);
    EMBSTORE_RETURN_IF_ERROR(
        NodeCall(src->GetShardRows(&gctx, get, &got), from_node, "rows of " + name));
    const int64_t n = static_cast<int64_t>(got.rows().size()) / stride;
    if (n < 1 || got.table().checksum() != shard.checksum ||
        got.rows().size() % static_cast<size_t>(stride) != 0) {
      return Status::Corruption("node '" + from_node + "' holds a shard '" + name +
                                "' that is not the manifest's (checksum or rows differ)");
    }
    v1::PutShardRowsRequest put;
    put.set_shard(name);
    put.set_first_row(first);
    put.set_dim(m.dim);
    put.set_dtype(FindDType(m.dtype)->name);
    put.set_rows(got.rows());
    v1::PutShardRowsReply ack;
    grpc::ClientContext pctx;
    pctx.set_deadline(std::chrono::system_clock::now() + o.rpc_timeout);
    EMBSTORE_RETURN_IF_ERROR(
        NodeCall(dst->PutShardRows(&pctx, put, &ack), to_node, "rows of " + name));
    first += n;
  }
  v1::CommitShardRequest commit;
  commit.set_shard(name);
  commit.set_rows(rows);
  commit.set_dim(m.dim);
  commit.set_dtype(FindDType(m.dtype)->name);
  commit.set_checksum(shard.checksum);
  commit.set_source(m.source + " rows " + std::to_string(shard.begin) + ".." +
                    std::to_string(shard.end) + " (copied from " + from_node + ")");
  v1::CommitShardReply done;
  grpc::ClientContext cctx;
  cctx.set_deadline(std::chrono::system_clock::now() + o.rpc_timeout);
  return NodeCall(dst->CommitShard(&cctx, commit, &done), to_node, "commit " + name);
}

}  // namespace

Result<int64_t> RebalanceCluster(Etcd* etcd, const RebalanceOptions& o) {
  auto log = [&o](const std::string& line) {
    if (o.log) o.log(line);
  };
  EMBSTORE_ASSIGN_OR_RETURN(std::vector<NodeInfo> nodes, ListNodes(etcd, o.keys));
  std::map<std::string, std::string> address;
  std::vector<std::string> live;
  for (const NodeInfo& n : nodes) {
    address[n.name] = n.address;
    live.push_back(n.name);
  }
  NodeStubs stubs(o.tls);
  EMBSTORE_ASSIGN_OR_RETURN(std::vector<EtcdKeyValue> kvs, etcd->List(o.keys.Tables()));
  std::map<std::string, uint64_t> current;
  std::map<std::string, std::vector<EtcdKeyValue>> versions;
  for (const EtcdKeyValue& kv : kvs) {
    const std::string rest = kv.key.substr(o.keys.Tables().size());
    const size_t slash = rest.find('/');
    if (slash == std::string::npos) continue;
    const std::string table = rest.substr(0, slash);
    if (rest.substr(slash) == "/current") {
      if (auto v = ParseVersion(kv.value, kv.key); v.ok()) current[table] = *v;
    } else {
      versions[table].push_back(kv);
    }
  }
  int64_t added = 0;
  std::vector<std::string> lost;
  for (const auto& [table, cur] : current) {
    // The current version and the newest ready one before it (the rollback target).
    std::vector<std::pair<Manifest, std::string>> pick;
    std::optional<std::pair<Manifest, std::string>> previous;
    for (const EtcdKeyValue& kv : versions[table]) {
      auto m = ManifestFromJson(kv.value);
      if (!m.ok() || m->state != "ready") continue;
      if (m->version == cur) {
        pick.emplace_back(*m, kv.value);
      } else if (m->version < cur && (!previous || m->version > previous->first.version)) {
        previous.emplace(*m, kv.value);
      }
    }
    if (previous) pick.push_back(*previous);
    for (auto& [m, raw] : pick) {
      bool changed = false;
      for (size_t s = 0; s < m.shards.size(); ++s) {
        ShardInfo& shard = m.shards[s];
        std::vector<std::string> holders;
        for (const std::string& n : shard.nodes)
          if (address.count(n)) holders.push_back(n);
        const std::string name = ShardTableName(table, m.version, s);
        if (holders.empty()) {
          lost.push_back(name);
          log("shard " + name +
              ": no live replica; it cannot be restored (publish the table again)");
          continue;
        }
        if (holders.size() != shard.nodes.size()) changed = true;
        for (const std::string& to : PlaceShard(live, table, s, static_cast<int>(live.size()))) {
          if (static_cast<int>(holders.size()) >= m.replicas) break;
          if (std::find(holders.begin(), holders.end(), to) != holders.end()) continue;
          Status st = Status::IOError("no source");
          for (const std::string& from : holders) {
            st = CopyShard(&stubs, name, m, shard, from, address[from], to, address[to], o);
            if (st.ok()) {
              log("shard " + name + " copied from '" + from + "' to '" + to + "', checksum " +
                  Hex64(shard.checksum) + " verified there");
              break;
            }
          }
          if (!st.ok()) {
            log("shard " + name + ": copy to '" + to + "' failed: " + st.message());
            continue;
          }
          holders.push_back(to);
          ++added;
          changed = true;
        }
        shard.nodes = holders;
      }
      if (!changed) continue;
      EMBSTORE_ASSIGN_OR_RETURN(bool written, etcd->CompareAndPut(o.keys.Version(table, m.version),
                                                                  raw, ManifestToJson(m)));
      if (!written) {
        return Status::IOError("the manifest of '" + table + "' version " +
                               std::to_string(m.version) +
                               " changed during the rebalance; run it again");
      }
    }
  }
  if (!lost.empty()) {
    std::string all;
    for (const std::string& l : lost) all += (all.empty() ? "" : ", ") + l;
    return Status::IOError("UNAVAILABLE: no live replica of " + all +
                           ": those shards cannot be restored; publish their tables again");
  }
  return added;
}

Result<std::string> ClusterStatus(Etcd* etcd, const ClusterKeys& keys) {
  std::ostringstream out;
  EMBSTORE_ASSIGN_OR_RETURN(std::vector<NodeInfo> nodes, ListNodes(etcd, keys));
  std::set<std::string> live;
  out << "nodes: " << nodes.size() << " live\n";
  for (const NodeInfo& n : nodes) {
    live.insert(n.name);
    out << "  " << n.name << "  " << n.address << "\n";
  }
  EMBSTORE_ASSIGN_OR_RETURN(std::vector<EtcdKeyValue> kvs, etcd->List(keys.Tables()));
  std::map<std::string, std::string> current;
  std::map<std::string, std::vector<Manifest>> versions;
  for (const EtcdKeyValue& kv : kvs) {
    const std::string rest = kv.key.substr(keys.Tables().size());
    const size_t slash = rest.find('/');
    if (slash == std::string::npos) continue;
    const std::string table = rest.substr(0, slash);
    if (rest.substr(slash) == "/current") {
      current[table] = kv.value;
    } else if (auto m = ManifestFromJson(kv.value); m.ok()) {
      versions[table].push_back(std::move(m).value());
    }
  }
  out << "tables: " << versions.size() << "\n";
  int under = 0;
  for (const auto& [table, vs] : versions) {
    out << "  " << table << "  current version " << (current.count(table) ? current[table] : "none")
        << "\n";
    for (const Manifest& m : vs) {
      const bool is_current = current.count(table) && current[table] == std::to_string(m.version);
      out << "    version " << m.version << (is_current ? " (current)" : "") << "  " << m.state
          << "  " << m.rows << " x " << m.dim << " " << FindDType(m.dtype)->name << ", "
          << m.shards.size() << " shards x " << m.replicas << " replicas\n";
      if (!is_current) continue;
      for (size_t s = 0; s < m.shards.size(); ++s) {
        const ShardInfo& sh = m.shards[s];
        int alive = 0;
        std::string where;
        for (const std::string& n : sh.nodes) {
          const bool up = live.count(n) > 0;
          alive += up;
          where += (where.empty() ? "" : ", ") + n + (up ? "" : " (down)");
        }
        const bool short_of = alive < m.replicas;
        under += short_of;
        out << "      shard " << s << "  rows [" << sh.begin << ", " << sh.end << ")  " << where
            << (short_of ? "  UNDER-REPLICATED (" + std::to_string(alive) + " of " +
                               std::to_string(m.replicas) + ")"
                         : "")
            << "\n";
      }
    }
  }
  out << "under-replicated shards: " << under << "\n";
  return out.str();
}

// ---------------------------------------------------------------- client

namespace {

class ClusterClientImpl final : public ClusterClient {
 public:
  Status Init(const ClusterClientOptions& o) {
    options_ = o;
    EMBSTORE_ASSIGN_OR_RETURN(etcd_, Etcd::Connect(o.endpoints, o.etcd_timeout));
    ClientOptions tls;
    tls.tls_ca = o.tls_ca;
    tls.tls_cert = o.tls_cert;
    tls.tls_key = o.tls_key;
    stubs_ = std::make_unique<NodeStubs>(tls);
    int64_t revision = 0;
    EMBSTORE_ASSIGN_OR_RETURN(std::vector<EtcdKeyValue> kvs, etcd_->List(o.keys.prefix, &revision));
    {
      MutexLock lock(&mu_);
      for (const EtcdKeyValue& kv : kvs) ApplyLocked(false, kv);
    }
    watch_ = etcd_->Watch(
        o.keys.prefix, revision,
        [this](const std::vector<EtcdEvent>& events, int64_t) {
          MutexLock lock(&mu_);
          for (const EtcdEvent& e : events) ApplyLocked(e.deleted, e.kv);
        },
        [](const Status&) {});  // the routing last seen stays in use
    return Status::OK();
  }

  Result<Manifest> Route(const std::string& table) const override {
    MutexLock lock(&mu_);
    return RouteLocked(table);
  }

  ClusterStats stats() const override {
    ClusterStats s;
    s.requests = requests_.load();
    s.sub_requests = sub_requests_.load();
    s.retries = retries_.load();
    s.mismatched_replies = mismatches_.load();
    return s;
  }

  Result<RemoteResult> EmbeddingBag(const std::string& table, const BagRequest& request,
                                    const QueryOptions& options) override {
    return Pool(table, options,
                [&](const TableView& view) { return engine::PlanBags(view, request, options); });
  }

  Result<RemoteResult> BatchedEmbeddingBag(const std::string& table,
                                           const BatchedBagRequest& request,
                                           const QueryOptions& options) override {
    return Pool(table, options, [&](const TableView& view) {
      return engine::PlanBatchedBags(view, request, options);
    });
  }

 private:
  Result<RemoteResult> Pool(
      const std::string& table, const QueryOptions& options,
      const std::function<Result<engine::BagPlan>(const TableView&)>& plan_of) {
    ++requests_;
    Manifest m;
    std::map<std::string, std::string> address;
    {
      MutexLock lock(&mu_);
      EMBSTORE_ASSIGN_OR_RETURN(m, RouteLocked(table));
      address = nodes_;
    }
    // Validate as the local engine does (same messages), against the
    // table's shape; no row is read.
    static const uint8_t kNoRows[64] = {};
    TableView view;
    view.data = kNoRows;
    view.rows = m.rows;
    view.dim = m.dim;
    view.dtype = m.dtype;
    view.row_stride = RowStrideBytes(m.dtype, m.dim);
    view.name = table;
    EMBSTORE_ASSIGN_OR_RETURN(engine::BagPlan plan, plan_of(view));
    const int64_t bags = plan.num_bags();
    const int64_t dim = m.dim;
    const size_t nshards = m.shards.size();

    // Split by shard, keeping the bags.
    std::vector<int64_t> begins(nshards);
    for (size_t s = 0; s < nshards; ++s) begins[s] = m.shards[s].begin;
    const std::vector<engine::ShardPart> subs = engine::SplitByShard(plan, begins);

    // Fan out on one completion queue: every shard with ids at once, each
    // to its first live replica; a failure or a late answer (past the
    // attempt timeout) moves it to the next replica. Every call carries a
    // deadline, so every one completes and the queue drains.
    const auto deadline = Clock::now() + options_.deadline.value_or(std::chrono::seconds(30));
    const bool max_mode = options.mode == PoolingMode::kMax;
    std::vector<v1::PartialReply> replies(nshards);
    std::vector<std::string> failed;
    struct Attempt {
      size_t shard = 0;
      grpc::ClientContext ctx;
      v1::PartialReply reply;
      grpc::Status status;
      std::unique_ptr<grpc::ClientAsyncResponseReader<v1::PartialReply>> call;
    };
    struct ShardCall {
      v1::PoolPartialRequest req;
      size_t next_replica = 0;
      int tried = 0;
      std::string why;
    };
    std::vector<ShardCall> calls(nshards);
    std::vector<std::unique_ptr<Attempt>> attempts;
    grpc::CompletionQueue cq;
    int pending = 0;
    auto note = [](std::string* why, const std::string& what) {
      *why += (why->empty() ? "" : "; ") + what;
    };
    // Starts shard s on its next live replica; false when none is left.
    auto start = [&](size_t s) {
      ShardCall& c = calls[s];
      const std::vector<std::string>& replicas = m.shards[s].nodes;
      while (c.next_replica < replicas.size()) {
        const size_t r = c.next_replica++;
        auto it = address.find(replicas[r]);
        if (it == address.end()) {
          note(&c.why, replicas[r] + ": not live");
          continue;
        }
        const auto left = deadline - Clock::now();
        if (left <= Clock::duration::zero()) {
          note(&c.why, "the deadline passed");
          return false;
        }
        auto stub = stubs_->Get(it->second);
        if (!stub.ok()) {
          note(&c.why, replicas[r] + ": " + stub.status().message());
          continue;
        }
        if (c.tried++ > 0) ++retries_;
        ++sub_requests_;
        auto a = std::make_unique<Attempt>();
        a->shard = s;
        // The last replica gets what is left of the deadline.
        const auto attempt = r + 1 < replicas.size()
                                 ? std::min<Clock::duration>(left, options_.attempt_timeout)
                                 : left;
        a->ctx.set_deadline(std::chrono::system_clock::now() + attempt);
        a->call = (*stub)->AsyncPoolPartial(&a->ctx, c.req, &cq);
        a->call->Finish(&a->reply, &a->status, a.get());
        attempts.push_back(std::move(a));
        ++pending;
        return true;
      }
      return false;
    };
    auto give_up = [&](size_t s) {
      failed.push_back("shard " + std::to_string(s) + " (" + calls[s].why + ")");
    };
    for (size_t s = 0; s < nshards; ++s) {
      if (!subs[s].any) continue;
      const engine::ShardPart& sub = subs[s];
      v1::EmbeddingBagRequest* bag = calls[s].req.mutable_bag();
      bag->set_table(ShardTableName(table, m.version, s));
      bag->mutable_indices()->Add(sub.ids.begin(), sub.ids.end());
      bag->mutable_offsets()->mutable_values()->Add(sub.offsets.begin(), sub.offsets.end());
      if (plan.weights != nullptr) {
        bag->mutable_per_sample_weights()->mutable_values()->Add(sub.weights.begin(),
                                                                 sub.weights.end());
      }
      QueryOptions qo = options;
      qo.mode = max_mode ? PoolingMode::kMax : PoolingMode::kSum;
      qo.padding_idx.reset();  // padding ids were dropped above
      qo.include_last_offset = false;
      WritePoolOptions(qo, bag->mutable_options());
      if (!start(s)) give_up(s);
    }
    while (pending > 0) {
      void* tag = nullptr;
      bool ok = false;
      if (!cq.Next(&tag, &ok)) break;  // not reached: the queue is shut down below
      --pending;
      Attempt* a = static_cast<Attempt*>(tag);
      const size_t s = a->shard;
      const grpc::Status& st = a->status;
      const bool answered = ok && st.ok();
      const bool whole =
          answered && a->reply.counts_size() == bags &&
          a->reply.values().size() == static_cast<size_t>(bags * dim) * sizeof(float);
      // The rows pooled must be this version's, as the manifest has them.
      const bool same_rows =
          whole && a->reply.version() == m.version && a->reply.checksum() == m.shards[s].checksum;
      if (same_rows) {
        replies[s] = std::move(a->reply);
        continue;
      }
      const std::string& node = m.shards[s].nodes[calls[s].next_replica - 1];
      std::string what;
      if (!answered) {
        what = std::string(GrpcCodeName(st.error_code())) + ": " + st.error_message();
      } else if (!whole) {
        what = "a malformed reply";
      } else {
        what = "rows of another version (version " + std::to_string(a->reply.version()) +
               ", checksum " + Hex64(a->reply.checksum()) + " where the manifest has " +
               Hex64(m.shards[s].checksum) + ")";
        ++mismatches_;
      }
      note(&calls[s].why, node + ": " + what);
      if (!start(s)) give_up(s);
    }
    cq.Shutdown();
    {
      void* tag = nullptr;
      bool ok = false;
      while (cq.Next(&tag, &ok)) {
      }
    }
    if (!failed.empty()) {
      std::sort(failed.begin(), failed.end());
      std::string all;
      for (const std::string& f : failed) all += (all.empty() ? "" : ", ") + f;
      return Status::IOError("UNAVAILABLE: table '" + table + "' version " +
                             std::to_string(m.version) + ": no replica answered for " + all);
    }

    // Merge in shard order.
    std::vector<engine::Partial> partials(nshards);
    for (size_t s = 0; s < nshards; ++s) {
      if (!subs[s].any) continue;
      const v1::PartialReply& rep = replies[s];
      engine::Partial& p = partials[s];
      // protobuf's bytes are malloc'd: aligned for floats and int32s.
      p.values =
          std::span<const float>(reinterpret_cast<const float*>(rep.values().data()),  // NOLINT
                                 rep.values().size() / sizeof(float));
      p.counts = std::span<const int64_t>(rep.counts().data(), rep.counts().size());
      p.max_positions = std::span<const int32_t>(
          reinterpret_cast<const int32_t*>(rep.max_positions().data()),  // NOLINT
          rep.max_positions().size() / sizeof(int32_t));
      p.nan_cells = std::span<const int64_t>(rep.nan_cells().data(), rep.nan_cells().size());
      p.nan_bits = std::span<const uint32_t>(rep.nan_bits().data(), rep.nan_bits().size());
    }
    RemoteResult result;
    result.version = m.version;
    result.output.shape = plan.OutputShape(dim);
    result.output.values.assign(static_cast<size_t>(bags * dim), 0.0f);
    if (Status st =
            engine::MergePartials(subs, partials, bags, dim, options.mode, result.output.values);
        !st.ok()) {
      return Status::IOError("UNAVAILABLE: table '" + table + "' version " +
                             std::to_string(m.version) + ": a node's reply: " + st.message());
    }
    return result;
  }

  void ApplyLocked(bool deleted, const EtcdKeyValue& kv) EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const ClusterKeys& k = options_.keys;
    if (kv.key.rfind(k.Nodes(), 0) == 0) {
      const std::string name = kv.key.substr(k.Nodes().size());
      if (deleted) {
        nodes_.erase(name);
        return;
      }
      const json j = json::parse(kv.value, nullptr, false);
      if (j.is_object() && j.contains("address") && j["address"].is_string())
        nodes_[name] = j["address"].get<std::string>();
      return;
    }
    if (kv.key.rfind(k.Tables(), 0) != 0) return;
    const std::string rest = kv.key.substr(k.Tables().size());
    const size_t slash = rest.find('/');
    if (slash == std::string::npos) return;
    const std::string table = rest.substr(0, slash);
    const std::string what = rest.substr(slash);
    if (what == "/current") {
      if (deleted) {
        current_.erase(table);
      } else if (auto v = ParseVersion(kv.value, kv.key); v.ok()) {
        current_[table] = *v;
      }
      return;
    }
    if (what.rfind("/versions/", 0) != 0) return;
    auto v = ParseVersion(what.substr(std::string("/versions/").size()), kv.key);
    if (!v.ok()) return;
    if (deleted) {
      manifests_[table].erase(*v);
    } else if (auto m = ManifestFromJson(kv.value); m.ok()) {
      manifests_[table][*v] = std::move(m).value();
    }
  }

  Result<Manifest> RouteLocked(const std::string& table) const EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto c = current_.find(table);
    if (c == current_.end()) {
      return Status::NotFound("unknown table '" + table + "' (not in the cluster at " +
                              etcd_->endpoints() + ")");
    }
    auto t = manifests_.find(table);
    if (t == manifests_.end() || !t->second.count(c->second)) {
      return Status::IOError("UNAVAILABLE: table '" + table +
                             "': the manifest of its current version " + std::to_string(c->second) +
                             " is missing");
    }
    const Manifest& m = t->second.at(c->second);
    if (m.state != "ready") {
      return Status::IOError("UNAVAILABLE: table '" + table + "': its current version " +
                             std::to_string(m.version) + " is not ready");
    }
    return m;
  }

  ClusterClientOptions options_;
  std::unique_ptr<Etcd> etcd_;
  std::unique_ptr<NodeStubs> stubs_;
  mutable Mutex mu_;
  std::map<std::string, std::string> nodes_ GUARDED_BY(mu_);  // name -> address
  std::map<std::string, uint64_t> current_ GUARDED_BY(mu_);
  std::map<std::string, std::map<uint64_t, Manifest>> manifests_ GUARDED_BY(mu_);
  std::unique_ptr<EtcdWatch> watch_;  // last: stopped first
  std::atomic<int64_t> requests_{0}, sub_requests_{0}, retries_{0}, mismatches_{0};
};

}  // namespace

Result<std::unique_ptr<ClusterClient>> ClusterClient::Open(const ClusterClientOptions& options) {
  auto c = std::make_unique<ClusterClientImpl>();
  EMBSTORE_RETURN_IF_ERROR(c->Init(options));
  return std::unique_ptr<ClusterClient>(std::move(c));
}

}  // namespace embstore::serve
