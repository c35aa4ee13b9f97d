// embstore serve: one store, read-only, over gRPC (docs/serve.md).
#include <signal.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "serve/http.h"
#include "serve/server.h"
#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class ServeCommand : public Command {
 public:
  ServeCommand()
      : Command("serve", "serve a store over gRPC (read-only), with metrics",
                "Serve the tables of one store over gRPC (proto/embstore/v1/embstore.proto), "
                "read-only,\nfollowing new versions as other processes publish them. Prints "
                "'embstore serve: listening on\nHOST:PORT' once it listens; SIGTERM or SIGINT "
                "drains the requests in flight and exits 0.") {
    AddValue("db", "Store directory", Need::kRequired);
    AddValueWithDefault("listen",
                        "HOST:PORT to serve gRPC on (port 0: any free port). Anything but "
                        "loopback is your explicit choice: give it --tls-cert/--tls-key",
                        "127.0.0.1:50051");
    AddValue("metrics", "HOST:PORT to serve Prometheus metrics on, at GET /metrics");
    AddInt("threads",
           "Serving threads: each polls its own completion queue and pools the requests it "
           "takes (0 = the cores available)",
           "0");
    AddInt("max-inflight",
           "Requests admitted at once, queued or running; more are refused with "
           "RESOURCE_EXHAUSTED (0 = 64 x threads)",
           "0");
    AddInt("busy-poll-us",
           "An idle serving thread keeps polling this many microseconds before it sleeps: "
           "lower latency for a core per thread kept busy meanwhile (0 = sleep at once)",
           "0");
    AddInt64("max-request-bytes", "Largest request message accepted (default 64 MiB)");
    AddInt64("max-reply-bytes", "Largest reply sent (default 256 MiB)");
    AddValue("tls-cert", "PEM certificate chain of the server (TLS)");
    AddValue("tls-key", "PEM private key of the server (TLS)");
    AddValue("tls-client-ca", "PEM CA that client certificates must be signed by (mutual TLS)");
    AddInt("drain-seconds", "On SIGTERM, how long requests in flight may take to finish", "30");
    AddValueWithDefault("device", "cpu | cuda (pool on the GPU through a row cache)", "cpu");
    AddInt64("cache-mb", "GPU row cache capacity in MiB (with --device cuda)");
    AddValue("cluster",
             "etcd endpoints (http://HOST:PORT,...): serve as a node of that cluster "
             "(registered under a lease; accepts shards from `embstore publish`; docs/cluster.md)");
    AddValue("node", "With --cluster: this node's name (default HOSTNAME-PORT)");
    AddValue("advertise",
             "With --cluster: HOST:PORT clients reach this node at (default: "
             "--listen's host and the bound port)");
    AddValue("cluster-prefix",
             "With --cluster: the cluster's etcd key prefix (default /embstore/)");
    AddInt64("lease-ttl",
             "With --cluster: seconds after which a silent node is dropped (default 10)");
    AddInt64("shard-gc-grace",
             "With --cluster: seconds a shard of a retired version (no manifest names it) "
             "stays before it is dropped from the store (default 30)");
  }

 private:
  int Run() override {
    serve::ServerOptions o;
    o.db = Str("db");
    o.listen = Str("listen");
    if (Has("metrics")) o.metrics = Str("metrics");
    o.threads = Int("threads");
    o.max_inflight = Int("max-inflight");
    o.busy_poll_us = Int("busy-poll-us");
    if (Has("max-request-bytes")) o.max_request_bytes = Int64("max-request-bytes");
    if (Has("max-reply-bytes")) o.max_reply_bytes = Int64("max-reply-bytes");
    if (Has("tls-cert")) o.tls_cert = Str("tls-cert");
    if (Has("tls-key")) o.tls_key = Str("tls-key");
    if (Has("tls-client-ca")) o.tls_client_ca = Str("tls-client-ca");
    if (Has("cluster")) {
      o.cluster = Str("cluster");
      if (Has("node")) o.node = Str("node");
      if (Has("advertise")) o.advertise = Str("advertise");
      if (Has("cluster-prefix")) o.cluster_prefix = Str("cluster-prefix");
      if (Has("lease-ttl")) {
        o.lease_ttl_s = Int64("lease-ttl");
        if (o.lease_ttl_s < 1 || o.lease_ttl_s > 3600)
          return Usage("--lease-ttl must be between 1 and 3600 seconds");
      }
      if (Has("shard-gc-grace")) {
        const int64_t g = Int64("shard-gc-grace");
        if (g < 0 || g > 7 * 24 * 3600)
          return Usage("--shard-gc-grace must be between 0 and 604800 seconds");
        o.shard_gc_grace = std::chrono::seconds(g);
      }
    } else {
      for (const char* c : {"node", "advertise", "cluster-prefix", "lease-ttl", "shard-gc-grace"}) {
        if (Has(c)) return Usage(std::string("--") + c + " applies to --cluster only");
      }
    }
    const int drain = Int("drain-seconds");
    if (drain < 0) return Usage("--drain-seconds must be >= 0");
    const std::optional<Device> device = ParseDevice(Str("device"));
    if (!device) return Usage("--device must be cpu or cuda");
    o.engine.device = *device;
    if (Has("cache-mb")) {
      if (*device != Device::kCuda) return Usage("--cache-mb needs --device cuda");
      const int64_t mb = Int64("cache-mb");
      if (mb <= 0 || mb > (int64_t{1} << 30))
        return Usage("--cache-mb must be between 1 and 1073741824 (1 PiB)");
      o.engine.gpu.cache_bytes = mb << 20;
    }
    std::string host;
    int port = 0;
    if (const Status st = serve::SplitHostPort(o.listen, "--listen", &host, &port); !st.ok())
      return Fail(st);
    if (!serve::IsLoopbackHost(host) && o.tls_cert.empty()) {
      std::fprintf(stderr,
                   "embstore serve: warning: serving %s without TLS: anyone who can reach it "
                   "can read every table (give --tls-cert and --tls-key)\n",
                   o.listen.c_str());
    }

    // SIGTERM and SIGINT are taken by sigwait below, in this thread: block
    // them before any thread starts, so that every thread inherits the mask.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    // A closed stdout/stderr (`serve ... | head`) must not kill the drain.
    std::signal(SIGPIPE, SIG_IGN);

    auto server = serve::Server::Start(o);
    if (!server.ok()) return Fail(server.status());
    std::printf("embstore serve: listening on %s:%d\n",
                host.find(':') != std::string::npos ? ("[" + host + "]").c_str() : host.c_str(),
                (*server)->port());
    if ((*server)->metrics_port() != 0) {
      std::string mhost;
      int mport = 0;
      if (serve::SplitHostPort(o.metrics, "--metrics", &mhost, &mport).ok()) {
        if (mhost.find(':') != std::string::npos) mhost = "[" + mhost + "]";
        std::printf("embstore serve: metrics on http://%s:%d/metrics\n", mhost.c_str(),
                    (*server)->metrics_port());
      }
    }
    std::fflush(stdout);
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::fprintf(stderr, "embstore serve: %s: draining requests in flight (at most %d s)\n",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT", drain);
    // A second signal during the drain stops at once.
    std::thread([stop_signals] {
      int again = 0;
      sigwait(&stop_signals, &again);
      std::fprintf(stderr, "embstore serve: second signal: stopping without draining\n");
      std::_Exit(kExitIO);
    }).detach();
    (*server)->Shutdown(std::chrono::seconds(drain));
    server->reset();
    std::fprintf(stderr, "embstore serve: stopped\n");
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewServeCommand() { return std::make_unique<ServeCommand>(); }

}  // namespace embstore::cli
