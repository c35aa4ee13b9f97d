// `embstore serve`: one store, read-only, over gRPC (proto/embstore/v1), with
// grpc.health.v1 and Prometheus metrics (docs/serve.md).
//
// Each of `threads` serving threads polls its own gRPC completion queue (the
// asynchronous API: no thread of gRPC's own takes calls) and runs the calls
// it takes on itself. An arriving call passes admission (at most
// max_inflight at once, queued or running; more are refused with
// RESOURCE_EXHAUSTED at once) and waits in one queue that every serving
// thread takes from (an idle thread is woken when calls wait). A thread
// resolves the table's snapshot (the current version, or a pinned one the
// server holds), checks the deadline, validates and pools with the engine,
// and replies. New versions published by other processes (`embstore import
// --replace`) are served from the next request on; each reply names its
// version. Nothing is ever written to the store.
#ifndef EMBSTORE_SERVE_SERVER_H_
#define EMBSTORE_SERVE_SERVER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "embstore/engine.h"
#include "embstore/status.h"

namespace embstore::serve {

struct ServerOptions {
  std::string db;                          // the store's directory
  std::string listen = "127.0.0.1:50051";  // HOST:PORT; port 0 picks a free one
  std::string metrics;                     // HOST:PORT of GET /metrics; empty: none
  int threads = 0;                         // serving threads; 0: the cores this process may use
  int max_inflight = 0;                    // queued + running; 0: 64 x threads
  // A serving thread with nothing to do keeps polling this long before it
  // sleeps (0: sleeps at once). Spends a core per thread while it spins; in
  // exchange no request waits for a sleeping thread to wake.
  int busy_poll_us = 0;
  int64_t max_request_bytes = int64_t{64} << 20;
  int64_t max_reply_bytes = int64_t{256} << 20;
  // PEM files. cert + key: TLS. client_ca too: clients must present a
  // certificate it signed (mutual TLS).
  std::string tls_cert, tls_key, tls_client_ca;
  EngineOptions engine;
  // Versions of each table kept mapped for requests that pin one: the
  // current one and the one served before it. (A held version's file, once
  // the store deletes it, keeps its disk space until it is let go; a dropped
  // table is let go at its next request.)
  int held_versions = 2;

  // Cluster node (docs/cluster.md): etcd endpoints ("http://HOST:PORT,...").
  // Empty: a stand-alone server, read-only. Set: the node registers itself
  // under a lease, accepts shards from `embstore publish` into its store
  // (created if missing), and serves PoolPartial.
  std::string cluster;
  std::string cluster_prefix = "/embstore/";
  std::string node;       // its name in the cluster; empty: HOSTNAME-PORT
  std::string advertise;  // HOST:PORT clients reach it at; empty: --listen's host, the bound port
  int64_t lease_ttl_s = 10;
  // A shard table whose version no manifest in etcd names any more (retired
  // by `embstore publish --keep`, or left by a publish that failed) is
  // dropped from the store once it has been so for this long: what a query
  // pinned to it needs to finish. Checked every min(5 s, grace / 4), at
  // least every 200 ms; never while etcd cannot be read.
  std::chrono::milliseconds shard_gc_grace{30000};
};

class Server {
 public:
  // Opens the store read-only, creates the engine, and starts listening.
  static Result<std::unique_ptr<Server>> Start(const ServerOptions& options);
  virtual ~Server();
  virtual int port() const = 0;          // the gRPC port bound
  virtual int metrics_port() const = 0;  // 0 without metrics
  // Stops taking requests (new ones get UNAVAILABLE), lets those admitted
  // finish within `drain` (then cancels what is left), stops the workers
  // and the metrics endpoint. Idempotent.
  virtual void Shutdown(std::chrono::milliseconds drain) = 0;
  // The metrics text, as GET /metrics returns it.
  virtual std::string RenderMetrics() const = 0;

 protected:
  Server() = default;
};

}  // namespace embstore::serve

#endif  // EMBSTORE_SERVE_SERVER_H_
