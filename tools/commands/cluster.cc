// embstore publish / embstore cluster: tables sharded over `embstore serve
// --cluster` nodes, with the cluster's state in etcd (docs/cluster.md).
#include "serve/cluster.h"

#include <cinttypes>
#include <cstdio>

#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

Result<std::unique_ptr<serve::Etcd>> ConnectEtcd(const std::string& endpoints) {
  return serve::Etcd::Connect(endpoints, std::chrono::seconds(10));
}

class PublishCommand : public Command {
 public:
  PublishCommand()
      : Command("publish", "publish a checkpoint to a cluster, in row shards with replicas",
                "Split one tensor of a checkpoint into row-range shards, place each shard's "
                "replicas on distinct\nlive nodes (rendezvous hashing), transfer them and have "
                "the nodes verify their checksums,\nthen write the manifest and make the "
                "version current by compare-and-swap in etcd. A publish\nthat fails or is "
                "killed leaves the current version serving.") {
    AddValue("cluster", "etcd endpoints: http://HOST:PORT[,http://HOST:PORT...]", Need::kRequired);
    AddValue("cluster-prefix", "The cluster's etcd key prefix (default /embstore/)");
    AddValue("table", "Table name in the cluster", Need::kRequired);
    AddValue("from", "Checkpoint file (.npy, .npz, .pt, .safetensors)", Need::kRequired);
    AddValue("tensor", "Tensor key inside a multi-tensor checkpoint");
    AddValue("dtype", "Stored dtype: f32 | f16 | bf16 | int8 (default: the tensor's)");
    AddInt("shards", "Row-range shards", "1");
    AddInt("replicas", "Replicas of each shard, on distinct nodes", "1");
    AddInt("keep",
           "Ready versions kept, the new one counted (the one it replaces always is); older "
           "ones are retired and their shards dropped by the nodes",
           "2");
    AddValue("tls-ca", "Verify the nodes' TLS certificates with this PEM CA");
    AddValue("tls-cert", "With --tls-ca: this PEM client certificate (mutual TLS)");
    AddValue("tls-key", "With --tls-ca: the client certificate's PEM key");
  }

 private:
  int Run() override {
    serve::PublishOptions o;
    o.table = Str("table");
    o.from = Str("from");
    if (Has("tensor")) o.tensor_key = Str("tensor");
    if (Has("dtype")) {
      const std::optional<DType> d = ParseDType(Str("dtype"));
      if (!d) return Usage("--dtype must be f32, f16, bf16 or int8 (got '" + Str("dtype") + "')");
      o.dtype = *d;
    }
    o.shards = Int("shards");
    o.replicas = Int("replicas");
    o.keep = Int("keep");
    if (o.keep < 1) return Usage("--keep must be >= 1");
    if (Has("cluster-prefix")) o.keys.prefix = Str("cluster-prefix");
    if (Has("tls-ca")) o.tls.tls_ca = Str("tls-ca");
    if (Has("tls-cert")) o.tls.tls_cert = Str("tls-cert");
    if (Has("tls-key")) o.tls.tls_key = Str("tls-key");
    o.log = [](const std::string& line) {
      std::fprintf(stderr, "embstore publish: %s\n", line.c_str());
    };
    auto etcd = ConnectEtcd(Str("cluster"));
    if (!etcd.ok()) return Fail(etcd.status());
    auto m = serve::Publish(etcd->get(), o);
    if (!m.ok()) return Fail(m.status());
    std::printf("published %s: version %" PRIu64 ", %" PRId64 " x %" PRId64
                " %s, %zu shards x %d "
                "replicas\n",
                m->table.c_str(), m->version, m->rows, m->dim, FindDType(m->dtype)->name,
                m->shards.size(), m->replicas);
    return kExitOk;
  }
};

class ClusterCommand : public Command {
 public:
  ClusterCommand()
      : Command("cluster", "show a cluster's nodes, tables and shard placement",
                "embstore cluster status --cluster E: the live nodes, each table's versions, the "
                "current\nversion's shard placement, and any under-replicated shard.\n"
                "embstore cluster rebalance --cluster E: copy under-replicated shards (of the "
                "current and\nthe previous version) to live nodes until each has its replicas "
                "again.") {
    AddPositional("action", "status | rebalance", "status|rebalance");
    AddValue("cluster", "etcd endpoints: http://HOST:PORT[,http://HOST:PORT...]", Need::kRequired);
    AddValue("cluster-prefix", "The cluster's etcd key prefix (default /embstore/)");
    AddValue("tls-ca", "rebalance: verify the nodes' TLS certificates with this PEM CA");
    AddValue("tls-cert", "rebalance, with --tls-ca: this PEM client certificate (mutual TLS)");
    AddValue("tls-key", "rebalance, with --tls-ca: the client certificate's PEM key");
  }

 private:
  int Run() override {
    const std::string action = Has("action") ? Str("action") : "";
    if (action != "status" && action != "rebalance") {
      return Usage("give an action: `embstore cluster status|rebalance --cluster E`" +
                   (action.empty() ? std::string() : " (got '" + action + "')"));
    }
    serve::ClusterKeys keys;
    if (Has("cluster-prefix")) keys.prefix = Str("cluster-prefix");
    auto etcd = ConnectEtcd(Str("cluster"));
    if (!etcd.ok()) return Fail(etcd.status());
    if (action == "rebalance") {
      serve::RebalanceOptions o;
      o.keys = keys;
      if (Has("tls-ca")) o.tls.tls_ca = Str("tls-ca");
      if (Has("tls-cert")) o.tls.tls_cert = Str("tls-cert");
      if (Has("tls-key")) o.tls.tls_key = Str("tls-key");
      o.log = [](const std::string& line) {
        std::fprintf(stderr, "embstore cluster: %s\n", line.c_str());
      };
      auto added = serve::RebalanceCluster(etcd->get(), o);
      if (!added.ok()) return Fail(added.status());
      std::printf("rebalanced: %lld replicas added\n", static_cast<long long>(*added));
      return kExitOk;
    }
    auto text = serve::ClusterStatus(etcd->get(), keys);
    if (!text.ok()) return Fail(text.status());
    std::fputs(text->c_str(), stdout);
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewPublishCommand() { return std::make_unique<PublishCommand>(); }
std::unique_ptr<Command> NewClusterCommand() { return std::make_unique<ClusterCommand>(); }

// `embstore rollback --cluster`, called by the rollback command.
Result<uint64_t> RollbackInCluster(const std::string& endpoints, const std::string& prefix,
                                   const std::string& table, std::optional<uint64_t> to) {
  serve::ClusterKeys keys;
  if (!prefix.empty()) keys.prefix = prefix;
  EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<serve::Etcd> etcd, ConnectEtcd(endpoints));
  return serve::RollbackCluster(etcd.get(), keys, table, to);
}

}  // namespace embstore::cli
