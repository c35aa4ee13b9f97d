// The client side of `embstore serve`, for the CLI (`embstore query
// --server`): the same requests as the library's, sent over gRPC, with the
// same results and, for bad requests, the same messages.
#ifndef EMBSTORE_SERVE_CLIENT_H_
#define EMBSTORE_SERVE_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "embstore/query.h"
#include "embstore/status.h"
#include "embstore/store.h"

namespace grpc {
class Channel;
}

namespace embstore::serve {

struct ClientOptions {
  std::string target;  // HOST:PORT
  // PEM files. tls_ca: verify the server with this CA (TLS). tls_cert and
  // tls_key: present this certificate (mutual TLS).
  std::string tls_ca, tls_cert, tls_key;
  // Per call; absent: none.
  std::optional<std::chrono::milliseconds> deadline;
};

// A pooled result and the version of the table it came from.
struct RemoteResult {
  PooledOutput output;
  uint64_t version = 0;
};

class Client {
 public:
  static Result<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  virtual ~Client();
  // version 0: the table's current version.
  virtual Result<RemoteResult> EmbeddingBag(const std::string& table, const BagRequest& request,
                                            const QueryOptions& options, uint64_t version) = 0;
  virtual Result<RemoteResult> BatchedEmbeddingBag(const std::string& table,
                                                   const BatchedBagRequest& request,
                                                   const QueryOptions& options,
                                                   uint64_t version) = 0;
  virtual Result<std::vector<TableInfo>> ListTables() = 0;
  // grpc.health.v1 Check of `service` ("" = the server as a whole): true
  // when SERVING.
  virtual Result<bool> Healthy(const std::string& service) = 0;

 protected:
  Client() = default;
};

// A gRPC channel to options.target with its TLS settings (no deadline:
// that is per call).
Result<std::shared_ptr<grpc::Channel>> OpenChannel(const ClientOptions& options);

}  // namespace embstore::serve

#endif  // EMBSTORE_SERVE_CLIENT_H_
