#include "serve/server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <sched.h>

#include <atomic>
#include <climits>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <new>
#include <sstream>
#include <thread>
#include <vector>

#include "embstore/fm.h"
#include "embstore/query.h"
#include "embstore/store.h"
#include "embstore/v1/embstore.grpc.pb.h"
#include "serve/convert.h"
#include "serve/http.h"
#include "serve/metrics.h"
#include "util/mutex.h"

namespace embstore::serve {
namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kServiceName = "embstore.v1.Embstore";
constexpr int64_t kReplyFraming = 64 << 10;
constexpr int kMaxThreads = 4096;

Result<std::string> ReadPem(const std::string& path, const std::string& flag) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::NotFound(flag + ": cannot read '" + path + "'");
  std::ostringstream s;
  s << f.rdbuf();
  if (s.str().find("-----BEGIN") == std::string::npos) {
    return Status::InvalidArgument(flag + ": '" + path + "' is not a PEM file");
  }
  return s.str();
}

// Fixed workers over an unbounded queue (admission bounds what enters it).
class WorkerPool {
 public:
  explicit WorkerPool(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~WorkerPool() { Stop(); }
  void Submit(std::function<void()> job) {
    MutexLock lock(&mu_);
    jobs_.push_back(std::move(job));
    cv_.Signal();
  }
  // Runs what is queued, then joins the workers.
  void Stop() {
    {
      MutexLock lock(&mu_);
      stopping_ = true;
      cv_.SignalAll();
    }
    for (std::thread& t : threads_)
      if (t.joinable()) t.join();
    threads_.clear();
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> job;
      {
        MutexLock lock(&mu_);
        while (jobs_.empty() && !stopping_) cv_.Wait(&mu_);
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }
  Mutex mu_;
  CondVar cv_{&mu_};
  std::deque<std::function<void()>> jobs_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

using Snap = std::shared_ptr<const TableSnapshot>;

// What a finished request adds to the metrics besides its code and time.
struct Work {
  int64_t lookups = 0;
  int64_t row_bytes = 0;
};

class ServerImpl;

class Service final : public v1::Embstore::CallbackService {
 public:
  explicit Service(ServerImpl* server) : server_(server) {}
  grpc::ServerUnaryReactor* EmbeddingBag(grpc::CallbackServerContext* ctx,
                                         const v1::EmbeddingBagRequest* request,
                                         v1::PooledReply* reply) override;
  grpc::ServerUnaryReactor* BatchedEmbeddingBag(grpc::CallbackServerContext* ctx,
                                                const v1::BatchedEmbeddingBagRequest* request,
                                                v1::PooledReply* reply) override;
  grpc::ServerUnaryReactor* FmScore(grpc::CallbackServerContext* ctx,
                                    const v1::FmScoreRequest* request,
                                    v1::FmScoreReply* reply) override;
  grpc::ServerUnaryReactor* ListTables(grpc::CallbackServerContext* ctx,
                                       const v1::ListTablesRequest* request,
                                       v1::ListTablesReply* reply) override;
  grpc::ServerUnaryReactor* TableInfo(grpc::CallbackServerContext* ctx,
                                      const v1::TableInfoRequest* request,
                                      v1::TableMeta* reply) override;

 private:
  ServerImpl* server_;
};

class ServerImpl final : public Server {
 public:
  Status Init(const ServerOptions& options);
  ~ServerImpl() override { Shutdown(std::chrono::milliseconds(0)); }
  int port() const override { return port_; }
  int metrics_port() const override { return http_ ? http_->port() : 0; }
  void Shutdown(std::chrono::milliseconds drain) override;
  std::string RenderMetrics() const override {
    std::optional<CacheStats> cache;
    if (engine_->device() == Device::kCuda) cache = engine_->stats();
    return metrics_.Render(inflight_.load(std::memory_order_relaxed), cache);
  }

  // Admits the request (or refuses it at once) and queues `work` for a
  // worker; replies with the status `work` returns (checking the deadline
  // before and after).
  grpc::ServerUnaryReactor* Handle(grpc::CallbackServerContext* ctx, Method method,
                                   std::function<grpc::Status(Work*)> work);

  // The table's current version (version 0) or `version` if it is current
  // or held. Shared: the last holder of a version's snapshot tells the
  // engine to forget its rows (a GPU cache keyed by address must not serve
  // them for another mapping at the same address later).
  Result<Snap> Resolve(const std::string& table, uint64_t version);
  Store& store() { return *store_; }
  Engine& engine() { return *engine_; }
  int64_t max_reply_bytes() const { return options_.max_reply_bytes; }

 private:
  // The held snapshot of `current`'s version, added (newest first, at most
  // held_versions) if it is new.
  Snap Remember(const TableSnapshot& current);

  ServerOptions options_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Engine> engine_;
  Metrics metrics_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<MetricsHttpServer> http_;
  int port_ = 0;
  int max_inflight_ = 0;
  int threads_ = 1;
  std::atomic<int> inline_running_{0};
  std::atomic<int64_t> inflight_{0};
  std::atomic<bool> shut_down_{false};
  std::atomic<bool> draining_{false};  // set by Shutdown: new requests are refused
  Mutex held_mu_;
  // Per table, the snapshots of recent versions, newest first.
  std::map<std::string, std::deque<Snap>> held_ GUARDED_BY(held_mu_);
};

Status ServerImpl::Init(const ServerOptions& options) {
  options_ = options;
  if (options.threads < 0) return Status::InvalidArgument("--threads must be >= 0");
  if (options.max_inflight < 0) return Status::InvalidArgument("--max-inflight must be >= 0");
  if (options.max_request_bytes < 1 || options.max_request_bytes > (int64_t{2} << 30) - 1)
    return Status::InvalidArgument("--max-request-bytes must be between 1 and 2147483647");
  if (options.max_reply_bytes < 1 || options.max_reply_bytes > (int64_t{2} << 30) - 1)
    return Status::InvalidArgument("--max-reply-bytes must be between 1 and 2147483647");
  if (options.held_versions < 1) return Status::InvalidArgument("held versions must be >= 1");
  std::string host;
  int port = 0;
  EMBSTORE_RETURN_IF_ERROR(SplitHostPort(options.listen, "--listen", &host, &port));
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return Status::InvalidArgument("--tls-cert and --tls-key go together");
  }
  if (!options.tls_client_ca.empty() && options.tls_cert.empty()) {
    return Status::InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key");
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!options.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    EMBSTORE_ASSIGN_OR_RETURN(std::string cert, ReadPem(options.tls_cert, "--tls-cert"));
    EMBSTORE_ASSIGN_OR_RETURN(std::string key, ReadPem(options.tls_key, "--tls-key"));
    ssl.pem_key_cert_pairs.push_back({key, cert});
    if (!options.tls_client_ca.empty()) {
      EMBSTORE_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                                ReadPem(options.tls_client_ca, "--tls-client-ca"));
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(ssl);
  }

  StoreOptions store_options;
  store_options.create_if_missing = false;
  auto store = Store::Open(options.db, store_options);
  if (!store.ok()) return store.status();
  store_ = std::move(store).value();
  auto engine = Engine::Create(options.engine);
  if (!engine.ok()) return engine.status();
  engine_ = std::move(engine).value();

  if (options.threads > kMaxThreads) {
    return Status::InvalidArgument("--threads must be at most " + std::to_string(kMaxThreads));
  }
  int threads = options.threads;
  if (threads == 0) {  // the cores this process may run on (affinity, cpusets)
    cpu_set_t set;
    CPU_ZERO(&set);
    threads = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
    if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  max_inflight_ = options.max_inflight > 0 ? options.max_inflight : 64 * threads;
  threads_ = threads;
  workers_ = std::make_unique<WorkerPool>(threads);

  service_ = std::make_unique<Service>(this);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, creds, &port_);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_request_bytes));
  // The values are checked against max_reply_bytes; the rest of a reply
  // (shape, table name, version) is small.
  builder.SetMaxSendMessageSize(
      static_cast<int>(std::min<int64_t>(options.max_reply_bytes + kReplyFraming, INT32_MAX)));
  // Another process on the same port is an error, not a silent share of it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    workers_->Stop();
    return Status::IOError("cannot listen on " + options.listen +
                           " (in use, or not an address of this machine)");
  }
  if (auto* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(kServiceName, true);
    health->SetServingStatus(true);
  }
  if (!options.metrics.empty()) {
    auto http = MetricsHttpServer::Start(options.metrics, [this] { return RenderMetrics(); });
    if (!http.ok()) {
      Shutdown(std::chrono::milliseconds(0));
      return http.status();
    }
    http_ = std::move(http).value();
  }
  // The tables' versions from the start, for the metrics.
  if (auto tables = store_->ListTables(); tables.ok()) {
    for (const TableInfo& t : *tables) metrics_.SetTableVersion(t.name, t.version);
  }
  return Status::OK();
}

void ServerImpl::Shutdown(std::chrono::milliseconds drain) {
  if (shut_down_.exchange(true)) return;
  if (server_) {
    if (auto* health = server_->GetHealthCheckService()) {
      health->SetServingStatus(kServiceName, false);
      health->SetServingStatus(false);
    }
    // Drain here rather than in gRPC's Shutdown: it would also wait (about
    // 5 s) on idle connections of clients that keep their channel open.
    // New requests are refused from now on; those admitted may finish
    // within `drain`; then gRPC shuts down what is left.
    draining_.store(true);
    const Clock::time_point give_up = Clock::now() + drain;
    while (inflight_.load() > 0 && Clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  }
  if (workers_) workers_->Stop();
  if (server_) server_->Wait();
  if (http_) http_->Stop();
}

grpc::ServerUnaryReactor* ServerImpl::Handle(grpc::CallbackServerContext* ctx, Method method,
                                             std::function<grpc::Status(Work*)> work) {
  const Clock::time_point arrived = Clock::now();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto finish = [this, reactor, method, arrived](const grpc::Status& st, const Work& w) {
    metrics_.Record(method, st.error_code(), Clock::now() - arrived, st.ok() ? w.lookups : 0,
                    st.ok() ? w.row_bytes : 0);
    inflight_.fetch_sub(1, std::memory_order_acq_rel);
    reactor->Finish(st);
  };
  int64_t now_inflight = inflight_.load(std::memory_order_relaxed);
  do {
    if (now_inflight >= max_inflight_) {
      metrics_.Record(method, grpc::StatusCode::RESOURCE_EXHAUSTED, Clock::now() - arrived, 0, 0);
      reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                   "the server is busy: " + std::to_string(max_inflight_) +
                                       " requests in flight (--max-inflight); retry later"));
      return reactor;
    }
  } while (!inflight_.compare_exchange_weak(now_inflight, now_inflight + 1));
  // Counted first, then the check: Shutdown sets draining_ and then waits
  // for the count to reach 0, so a request is either refused here or waited
  // for there.
  if (draining_.load()) {
    finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"), Work());
    return reactor;
  }
  auto job = [ctx, finish, work = std::move(work)] {
    // The deadline first: gRPC cancels a call whose deadline passed.
    if (ctx->deadline() < std::chrono::system_clock::now()) {
      finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "the deadline passed before the request was started"),
             Work());
      return;
    }
    if (ctx->IsCancelled()) {
      finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request"), Work());
      return;
    }
    Work w;
    grpc::Status st;
    try {
      st = work(&w);
    } catch (const std::bad_alloc&) {
      st = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "the server ran out of memory for this request");
    } catch (const std::exception& e) {
      st = grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what());
    }
    if (st.ok() && ctx->deadline() < std::chrono::system_clock::now()) {
      finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "the deadline passed while the request was pooled"),
             Work());
      return;
    }
    finish(st, w);
  };
  // While fewer than `threads` requests run here, this one runs on the
  // thread gRPC called us on (no hand-off to a worker: two thread wake-ups
  // fewer, the larger part of a small request's cost); past that it waits
  // for a worker.
  int running = inline_running_.load(std::memory_order_relaxed);
  while (running < threads_) {
    if (inline_running_.compare_exchange_weak(running, running + 1, std::memory_order_acq_rel)) {
      job();
      inline_running_.fetch_sub(1, std::memory_order_acq_rel);
      return reactor;
    }
  }
  workers_->Submit(std::move(job));
  return reactor;
}

Snap ServerImpl::Remember(const TableSnapshot& current) {
  const TableInfo& info = current.info();
  MutexLock lock(&held_mu_);
  std::deque<Snap>& held = held_[info.name];
  if (!held.empty() && held.front()->info().version == info.version &&
      held.front()->info().file == info.file) {
    return held.front();
  }
  metrics_.SetTableVersion(info.name, info.version);
  Engine* engine = engine_.get();
  const bool cached = engine->device() == Device::kCuda;
  Snap snap(new TableSnapshot(current), [engine, cached](const TableSnapshot* s) {
    if (cached) (void)engine->Forget(s->view());
    delete s;
  });
  held.push_front(snap);
  while (static_cast<int>(held.size()) > options_.held_versions) held.pop_back();
  return snap;
}

Result<Snap> ServerImpl::Resolve(const std::string& table, uint64_t version) {
  Result<TableSnapshot> current = store_->GetSnapshot(table);
  if (!current.ok()) {
    if (current.status().code() != Status::Code::kNotFound) return current.status();
    // Dropped (or never there): nothing of it stays mapped here.
    MutexLock lock(&held_mu_);
    held_.erase(table);
    return current.status();
  }
  Snap snap = Remember(*current);
  if (version == 0 || snap->info().version == version) return snap;
  MutexLock lock(&held_mu_);
  std::string held_list;
  if (auto it = held_.find(table); it != held_.end()) {
    for (const Snap& h : it->second) {
      if (h->info().version == version) return h;
      held_list += (held_list.empty() ? "" : ", ") + std::to_string(h->info().version);
    }
  }
  return Status::NotFound("version " + std::to_string(version) + " of table '" + table +
                          "' is not held by this server (current: " +
                          std::to_string(snap->info().version) + "; held: " + held_list + ")");
}

// Library errors as gRPC errors, inside the handlers.
#define EMBSTORE_GRPC_RETURN_IF_ERROR(expr)               \
  do {                                                    \
    const ::embstore::Status _st = (expr);                \
    if (!_st.ok()) return ::embstore::serve::ToGrpc(_st); \
  } while (0)
#define EMBSTORE_GRPC_ASSIGN_OR_RETURN(lhs, expr) \
  EMBSTORE_GRPC_ASSIGN_OR_RETURN_IMPL(EMBSTORE_GRPC_CONCAT(_r, __LINE__), lhs, expr)
#define EMBSTORE_GRPC_CONCAT_INNER(a, b) a##b
#define EMBSTORE_GRPC_CONCAT(a, b) EMBSTORE_GRPC_CONCAT_INNER(a, b)
#define EMBSTORE_GRPC_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr)      \
  auto tmp = (expr);                                             \
  if (!tmp.ok()) return ::embstore::serve::ToGrpc(tmp.status()); \
  lhs = std::move(tmp).value()

// RESOURCE_EXHAUSTED when `count` rows of `dim` floats exceed the reply
// limit (the values alone: the send limit leaves room for the rest).
grpc::Status CheckReplySize(int64_t count, int64_t dim, int64_t limit) {
  if (count > 0 && dim > 0 && count > limit / 4 / dim) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "the reply would hold " + std::to_string(count) + " rows of " +
                            std::to_string(dim) +
                            " floats, more than the server's reply limit of " +
                            std::to_string(limit) + " bytes (--max-reply-bytes)");
  }
  return grpc::Status::OK;
}

// The reply's values for `bags` bags of `dim`, or RESOURCE_EXHAUSTED past the
// reply limit (checked before anything is pooled or allocated).
grpc::Status ReplyBuffer(int64_t bags, int64_t dim, int64_t limit, std::string* values,
                         std::span<float>* out) {
  if (grpc::Status st = CheckReplySize(bags, dim, limit); !st.ok()) return st;
  values->resize(static_cast<size_t>(bags * dim) * sizeof(float));
  *out = std::span<float>(reinterpret_cast<float*>(values->data()),  // NOLINT
                          static_cast<size_t>(bags * dim));
  return grpc::Status::OK;
}

void SetReply(const TableSnapshot& snap, const std::vector<int64_t>& shape, v1::PooledReply* r) {
  for (int64_t d : shape) r->add_shape(d);
  r->set_table(snap.info().name);
  r->set_version(snap.info().version);
}

}  // namespace

grpc::ServerUnaryReactor* Service::EmbeddingBag(grpc::CallbackServerContext* ctx,
                                                const v1::EmbeddingBagRequest* request,
                                                v1::PooledReply* reply) {
  ServerImpl* s = server_;
  return s->Handle(ctx, Method::kEmbeddingBag, [s, request, reply](Work* w) -> grpc::Status {
    EMBSTORE_GRPC_ASSIGN_OR_RETURN(const Snap snap,
                                   s->Resolve(request->table(), request->version()));
    const TableView view = snap->view();
    BagRequest req;
    QueryOptions qo;
    EMBSTORE_GRPC_RETURN_IF_ERROR(ReadBagRequest(*request, &req, &qo));
    // At most this many bags (the library's plan has one entry per bag):
    // refused past the reply limit before anything is planned.
    const int64_t most = request->indices_shape_size() == 2 ? request->indices_shape(0)
                                                            : request->offsets().values_size();
    if (grpc::Status st = CheckReplySize(most, view.dim, s->max_reply_bytes()); !st.ok()) return st;
    EMBSTORE_GRPC_ASSIGN_OR_RETURN(const int64_t bags, CountBags(view, req, qo));
    std::span<float> out;
    if (grpc::Status st =
            ReplyBuffer(bags, view.dim, s->max_reply_bytes(), reply->mutable_values(), &out);
        !st.ok()) {
      return st;
    }
    EMBSTORE_GRPC_RETURN_IF_ERROR(s->engine().EmbeddingBag(view, req, qo, out));
    SetReply(*snap, {bags, view.dim}, reply);
    w->lookups = req.indices.size;
    w->row_bytes = req.indices.size * static_cast<int64_t>(view.row_stride);
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* Service::BatchedEmbeddingBag(
    grpc::CallbackServerContext* ctx, const v1::BatchedEmbeddingBagRequest* request,
    v1::PooledReply* reply) {
  ServerImpl* s = server_;
  return s->Handle(ctx, Method::kBatchedEmbeddingBag, [s, request, reply](Work* w) -> grpc::Status {
    EMBSTORE_GRPC_ASSIGN_OR_RETURN(const Snap snap,
                                   s->Resolve(request->table(), request->version()));
    const TableView view = snap->view();
    BatchedBagRequest req;
    QueryOptions qo;
    EMBSTORE_GRPC_RETURN_IF_ERROR(ReadBatchedRequest(*request, &req, &qo));
    // ends has one entry per bag.
    if (grpc::Status st = CheckReplySize(request->ends_size(), view.dim, s->max_reply_bytes());
        !st.ok()) {
      return st;
    }
    EMBSTORE_GRPC_ASSIGN_OR_RETURN(const int64_t bags, CountBags(view, req, qo));
    std::span<float> out;
    if (grpc::Status st =
            ReplyBuffer(bags, view.dim, s->max_reply_bytes(), reply->mutable_values(), &out);
        !st.ok()) {
      return st;
    }
    EMBSTORE_GRPC_RETURN_IF_ERROR(s->engine().BatchedEmbeddingBag(view, req, qo, out));
    SetReply(*snap, {req.batch, req.bags_per_sample, view.dim}, reply);
    w->lookups = req.indices.size;
    w->row_bytes = req.indices.size * static_cast<int64_t>(view.row_stride);
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* Service::FmScore(grpc::CallbackServerContext* ctx,
                                           const v1::FmScoreRequest* request,
                                           v1::FmScoreReply* reply) {
  ServerImpl* s = server_;
  return s->Handle(ctx, Method::kFmScore, [s, request, reply](Work* w) -> grpc::Status {
    EMBSTORE_GRPC_ASSIGN_OR_RETURN(const Snap vectors, s->Resolve(request->vectors_table(), 0));
    EMBSTORE_GRPC_ASSIGN_OR_RETURN(const Snap biases, s->Resolve(request->biases_table(), 0));
    FmModel model = FmModel::kFm;
    FmRequest req;
    QueryOptions qo;
    EMBSTORE_GRPC_RETURN_IF_ERROR(ReadFmRequest(*request, &model, &req, &qo));
    // One score (a float) per sample, refused past the reply limit first.
    if (grpc::Status st = CheckReplySize(req.bags.batch, 1, s->max_reply_bytes()); !st.ok())
      return st;
    if (req.bags.batch < 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "batch must be >= 0");
    }
    google::protobuf::RepeatedField<float>* scores = reply->mutable_scores();
    scores->Resize(static_cast<int>(req.bags.batch), 0.0f);
    EMBSTORE_GRPC_RETURN_IF_ERROR(embstore::FmScore(
        model, vectors->view(), biases->view(), req, qo,
        std::span<float>(scores->mutable_data(), static_cast<size_t>(scores->size()))));
    reply->set_vectors_version(vectors->info().version);
    reply->set_biases_version(biases->info().version);
    w->lookups = 2 * req.bags.indices.size;
    w->row_bytes = req.bags.indices.size *
                   static_cast<int64_t>(vectors->view().row_stride + biases->view().row_stride);
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* Service::ListTables(grpc::CallbackServerContext* ctx,
                                              const v1::ListTablesRequest* /*request*/,
                                              v1::ListTablesReply* reply) {
  ServerImpl* s = server_;
  return s->Handle(ctx, Method::kListTables, [s, reply](Work*) -> grpc::Status {
    EMBSTORE_GRPC_ASSIGN_OR_RETURN(const std::vector<embstore::TableInfo> tables,
                                   s->store().ListTables());
    for (const embstore::TableInfo& t : tables) WriteTableMeta(t, reply->add_tables());
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* Service::TableInfo(grpc::CallbackServerContext* ctx,
                                             const v1::TableInfoRequest* request,
                                             v1::TableMeta* reply) {
  ServerImpl* s = server_;
  return s->Handle(ctx, Method::kTableInfo, [s, request, reply](Work*) -> grpc::Status {
    EMBSTORE_GRPC_ASSIGN_OR_RETURN(const embstore::TableInfo info,
                                   s->store().GetInfo(request->table()));
    WriteTableMeta(info, reply);
    return grpc::Status::OK;
  });
}

Server::~Server() = default;

Result<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  auto server = std::make_unique<ServerImpl>();
  EMBSTORE_RETURN_IF_ERROR(server->Init(options));
  return std::unique_ptr<Server>(std::move(server));
}

}  // namespace embstore::serve
