// A client of etcd's v3 API over gRPC (proto/etcd/rpc.proto), for the
// cluster's state (docs/cluster.md): reads, writes, compare-and-swap
// transactions, leases with keep-alives, and watches. Consensus, membership
// and failure detection are etcd's; this only talks to it.
//
// Thread-safety: every method may be called from any thread.
#ifndef EMBSTORE_SERVE_ETCD_H_
#define EMBSTORE_SERVE_ETCD_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "embstore/status.h"

namespace embstore::serve {

struct EtcdKeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t lease = 0;
};

struct EtcdEvent {
  bool deleted = false;  // else a put
  EtcdKeyValue kv;       // for a delete: the key and the revision only
};

// A watch running on a thread of its own; stops when destroyed.
class EtcdWatch {
 public:
  virtual ~EtcdWatch() = default;
};

class Etcd {
 public:
  // `endpoints`: etcd's client URLs as etcd writes them, comma-separated:
  // "http://127.0.0.1:2379,http://10.0.0.2:2379". A call goes to the first
  // endpoint that answers. `timeout` bounds each call.
  static Result<std::unique_ptr<Etcd>> Connect(const std::string& endpoints,
                                               std::chrono::milliseconds timeout);
  virtual ~Etcd() = default;

  virtual Result<std::optional<EtcdKeyValue>> Get(const std::string& key) = 0;
  // Every key under `prefix`, in key order; *revision (if given): the
  // store's revision the list was read at.
  virtual Result<std::vector<EtcdKeyValue>> List(const std::string& prefix,
                                                 int64_t* revision = nullptr) = 0;
  virtual Status Put(const std::string& key, const std::string& value, int64_t lease = 0) = 0;
  // Puts `value` only if the key's value is `expected` now (nullopt: only if
  // the key does not exist), in one transaction. False if it was not.
  virtual Result<bool> CompareAndPut(const std::string& key,
                                     const std::optional<std::string>& expected,
                                     const std::string& value, int64_t lease = 0) = 0;
  virtual Status Delete(const std::string& key) = 0;
  virtual Status DeletePrefix(const std::string& prefix) = 0;

  // A lease of `ttl_s` seconds; its id.
  virtual Result<int64_t> GrantLease(int64_t ttl_s) = 0;
  // One keep-alive of the lease; NotFound once it has expired.
  virtual Status KeepAlive(int64_t lease) = 0;
  virtual Status RevokeLease(int64_t lease) = 0;

  // Calls `on_events` (on the watch's thread) with the events under `prefix`
  // after `after_revision`, as they happen. When the stream breaks (etcd
  // restarted, or unreachable), it reconnects every `retry` and resumes
  // after the last revision it delivered; `on_error` hears why, each time.
  virtual std::unique_ptr<EtcdWatch> Watch(
      const std::string& prefix, int64_t after_revision,
      std::function<void(const std::vector<EtcdEvent>&, int64_t revision)> on_events,
      std::function<void(const Status&)> on_error,
      std::chrono::milliseconds retry = std::chrono::milliseconds(200)) = 0;

  const std::string& endpoints() const { return endpoints_; }

 protected:
  explicit Etcd(std::string endpoints) : endpoints_(std::move(endpoints)) {}

 private:
  std::string endpoints_;
};

// The end of the key range holding every key that starts with `prefix`.
std::string PrefixEnd(const std::string& prefix);

}  // namespace embstore::serve

#endif  // EMBSTORE_SERVE_ETCD_H_
