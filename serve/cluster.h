// Tables past one machine (docs/cluster.md): row shards on `embstore serve
// --cluster` nodes, the cluster's state in etcd, partial pooling at the
// shards and the merge at the client.
//
// etcd keys, under a prefix (default "/embstore/"):
//   nodes/NAME                     {"name", "address", "started_unix"}, under the node's lease
//   tables/T/versions/VVVVVVVVVVVV  the manifest of version V of table T (JSON, below)
//   tables/T/current               "V": the version served, switched by compare-and-swap
#ifndef EMBSTORE_SERVE_CLUSTER_H_
#define EMBSTORE_SERVE_CLUSTER_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "embstore/dtype.h"
#include "embstore/query.h"
#include "embstore/status.h"
#include "serve/client.h"
#include "serve/etcd.h"

namespace embstore::serve {

inline constexpr const char* kDefaultClusterPrefix = "/embstore/";
// Cluster table names leave room for ".vV.sS" in a node's store.
inline constexpr size_t kMaxClusterTableName = 96;

struct NodeInfo {
  std::string name;
  std::string address;  // HOST:PORT of its gRPC service
  int64_t started_unix = 0;
};

struct ShardInfo {
  int64_t begin = 0, end = 0;      // rows [begin, end) of the table
  uint64_t checksum = 0;           // xxh64 of the shard's encoded rows
  std::vector<std::string> nodes;  // the nodes holding a replica, in preference order
};

struct Manifest {
  std::string table;
  uint64_t version = 0;
  std::string state;  // "publishing" until every replica is in place, then "ready"
  int64_t rows = 0, dim = 0;
  DType dtype = DType::kF32;
  int replicas = 0;
  std::string source;
  int64_t created_unix = 0;
  std::vector<ShardInfo> shards;  // in row order, covering [0, rows)
};

std::string ManifestToJson(const Manifest& m);
Result<Manifest> ManifestFromJson(const std::string& json);

// The name of shard `shard` of `table` version `version` in a node's store.
std::string ShardTableName(const std::string& table, uint64_t version, size_t shard);
// A valid cluster table name (the store's rules, at most kMaxClusterTableName).
Status ValidateClusterTableName(const std::string& name);

// Rendezvous (highest random weight) placement: the `replicas` nodes of
// `nodes` with the highest hash of (node, table, shard), best first. Stable:
// losing a node moves only the shards it held.
std::vector<std::string> PlaceShard(const std::vector<std::string>& nodes, const std::string& table,
                                    size_t shard, int replicas);

// Rows [begin, end) of shard s of `shards` equal row-range shards.
std::pair<int64_t, int64_t> ShardRange(int64_t rows, int64_t shards, int64_t s);

struct ClusterKeys {
  std::string prefix = kDefaultClusterPrefix;
  std::string Nodes() const { return prefix + "nodes/"; }
  std::string Node(const std::string& name) const { return Nodes() + name; }
  std::string Tables() const { return prefix + "tables/"; }
  std::string Versions(const std::string& t) const { return Tables() + t + "/versions/"; }
  std::string Version(const std::string& t, uint64_t v) const;
  std::string Current(const std::string& t) const { return Tables() + t + "/current"; }
};

Result<std::vector<NodeInfo>> ListNodes(Etcd* etcd, const ClusterKeys& keys);

// A node's membership: registers NAME -> address under a lease of `ttl_s`,
// keeps the lease alive (re-registering if it expired, e.g. after etcd was
// unreachable for longer), and revokes it when stopped.
class ClusterMember {
 public:
  static Result<std::unique_ptr<ClusterMember>> Join(const std::string& endpoints,
                                                     const ClusterKeys& keys, const NodeInfo& node,
                                                     int64_t ttl_s);
  ~ClusterMember();
  void Leave();  // revokes the lease: the node is gone from the cluster at once

 private:
  ClusterMember() = default;
  struct State;
  std::unique_ptr<State> state_;
};

// `embstore publish`.
struct PublishOptions {
  std::string table;
  std::string from;        // a checkpoint file
  std::string tensor_key;  // as for import
  std::optional<DType> dtype;
  int shards = 1;
  int replicas = 1;
  ClusterKeys keys;
  std::chrono::milliseconds rpc_timeout{60000};
  // TLS to the nodes (tls_ca, and tls_cert/tls_key for mutual TLS), as for Client.
  ClientOptions tls;
  int64_t chunk_bytes = 4 << 20;  // rows sent per PutShardRows, about this many bytes
  // Once the new version is current, the ready versions past the newest
  // `keep` (the new one counted; the one it replaced is always kept) are
  // retired: their manifests are deleted, and the nodes drop their shards
  // after --shard-gc-grace. Manifests left "publishing" by failed publishes
  // of older versions are deleted too.
  int keep = 2;
  std::function<void(const std::string&)> log;  // progress lines; may be empty
  // Testing: called after each step with its name ("reserved", "shard S
  // replica R", "manifest"); returning false stops the publish there, as a
  // kill would.
  std::function<bool(const std::string&)> step;
};
Result<Manifest> Publish(Etcd* etcd, const PublishOptions& options);

// The retirement Publish does after its switch, alone: of `table`'s versions
// up to `current`, the ready ones past the newest `keep` and every one still
// "publishing" are deleted from etcd. Kept whatever `keep` says: `current`,
// `previous` (the version current before it, which `rollback --cluster`
// returns to) and every version after `current`. Returns those retired.
Result<std::vector<uint64_t>> RetireVersions(Etcd* etcd, const ClusterKeys& keys,
                                             const std::string& table, uint64_t current,
                                             std::optional<uint64_t> previous, int keep);

// `embstore rollback --cluster`: the current version switched back to the
// newest ready version before it (or `to_version`), by compare-and-swap.
Result<uint64_t> RollbackCluster(Etcd* etcd, const ClusterKeys& keys, const std::string& table,
                                 std::optional<uint64_t> to_version);

// `embstore cluster rebalance`: for the current and the previous ready
// version of every table, each shard with fewer than its replicas on live
// nodes gets copies (its encoded rows, byte for byte, from a live replica,
// checksum verified at the new node) on the live nodes rendezvous hashing
// ranks next; the manifest then lists its live holders, updated by
// compare-and-swap. A shard with no live replica cannot be restored (its
// rows are gone from the cluster): it is reported and the result is an
// IOError naming it, after every other shard was dealt with.
struct RebalanceOptions {
  ClusterKeys keys;
  ClientOptions tls;
  std::chrono::milliseconds rpc_timeout{60000};
  int64_t chunk_bytes = 4 << 20;
  std::function<void(const std::string&)> log;
};
// The number of replicas added.
Result<int64_t> RebalanceCluster(Etcd* etcd, const RebalanceOptions& options);

// `embstore cluster status`: nodes, tables, versions, placement and any
// under-replicated shard, as text.
Result<std::string> ClusterStatus(Etcd* etcd, const ClusterKeys& keys);

struct ClusterClientOptions {
  std::string endpoints;  // etcd
  ClusterKeys keys;
  std::chrono::milliseconds etcd_timeout{5000};
  // Each attempt at a shard gets at most this long (and never more than
  // what is left of the request's deadline) before its replica is tried.
  std::chrono::milliseconds attempt_timeout{1000};
  std::optional<std::chrono::milliseconds> deadline;  // per request; default 30 s
  // TLS to the nodes, as for Client.
  std::string tls_ca, tls_cert, tls_key;
};

struct ClusterStats {
  int64_t requests = 0;
  int64_t sub_requests = 0;
  int64_t retries = 0;  // sub-requests sent again to another replica
  // Replies refused because their rows were not the manifest's (another
  // version's rows under the shard's name); each was asked again elsewhere.
  int64_t mismatched_replies = 0;
};

// Queries a cluster: pins the table's current version, splits the request
// by shard (keeping the bags), fans out to one replica per shard with the
// remaining deadline, retries a failed or late shard on its next replica,
// and merges in shard order (sum adds, mean is sum / count, max is the max
// over partials with count > 0, empty bags are zeros). The routing (nodes,
// current versions, manifests) is read at Open and kept up to date by a
// watch; if etcd goes away, queries go on with the routing last seen.
// Thread-safe.
class ClusterClient {
 public:
  static Result<std::unique_ptr<ClusterClient>> Open(const ClusterClientOptions& options);
  virtual ~ClusterClient() = default;
  // The local engine's answer (mean within float rounding), or UNAVAILABLE
  // naming the shards no replica of which answered.
  virtual Result<RemoteResult> EmbeddingBag(const std::string& table, const BagRequest& request,
                                            const QueryOptions& options) = 0;
  // batched_embedding_bag: bags given by their ends per sample (as the local
  // engine's BatchedEmbeddingBag), split and merged the same way.
  virtual Result<RemoteResult> BatchedEmbeddingBag(const std::string& table,
                                                   const BatchedBagRequest& request,
                                                   const QueryOptions& options) = 0;
  virtual ClusterStats stats() const = 0;
  // The current version and manifest of `table` as routed now.
  virtual Result<Manifest> Route(const std::string& table) const = 0;

 protected:
  ClusterClient() = default;
};

}  // namespace embstore::serve

#endif  // EMBSTORE_SERVE_CLUSTER_H_
