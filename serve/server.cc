#include "serve/server.h"

#include <fcntl.h>
#include <grpc/support/time.h>
#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <map>
#include <new>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "embstore/fm.h"
#include "embstore/query.h"
#include "embstore/store.h"
#include "embstore/v1/embstore.grpc.pb.h"
#include "engine/plan.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "serve/cluster.h"
#include "serve/convert.h"
#include "serve/http.h"
#include "serve/metrics.h"
#include "util/mutex.h"

namespace embstore::serve {
namespace {

using Clock = std::chrono::steady_clock;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
constexpr const char* kServiceName = "embstore.v1.Embstore";
constexpr int64_t kReplyFraming = 64 << 10;
constexpr int kMaxThreads = 4096;
// Calls of a pooling method each serving thread keeps asked for (gRPC
// matches an arriving call to one of them; past that it would hold the call
// where admission cannot see it). A thread collects what arrived between
// every two calls it runs, so these only cover what arrives during one.
constexpr int kPoolingSlots = 32;
constexpr int kOtherSlots = 2;

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

using Snap = std::shared_ptr<const TableSnapshot>;

// What a finished request adds to the metrics besides its code and time.
struct Work {
  int64_t lookups = 0;
  int64_t row_bytes = 0;
};

class ServerImpl;

// What a completion-queue event carries: the object whose operation
// completed.
class Tag {
 public:
  virtual ~Tag() = default;
  virtual void Done(bool ok) = 0;
};

// A serving thread and the completion queue it polls. Operations are
// started on the queue only under ops_mu while `shut` is false, so that
// none starts after the queue's Shutdown.
struct Poller {
  int index = 0;
  std::unique_ptr<grpc::ServerCompletionQueue> cq;
  Mutex ops_mu;
  bool shut GUARDED_BY(ops_mu) = false;
  std::atomic<bool> blocked{false};     // waiting in Next
  std::atomic<bool> wake_armed{false};  // a wake-up alarm is set on cq
  std::thread thread;
};

// Starts an operation on `p`'s queue; false (nothing started) once it is
// shut down.
template <class F>
bool StartOp(Poller* p, F&& start) {
  MutexLock lock(&p->ops_mu);
  if (p->shut) return false;
  start();
  return true;
}

// A wake-up for a thread blocked in Next: an alarm that expires at once.
class Wake final : public Tag {
 public:
  explicit Wake(Poller* p) : poller_(p) {}
  void Set() { alarm_.Set(poller_->cq.get(), gpr_now(GPR_CLOCK_MONOTONIC), this); }
  void Done(bool) override {
    poller_->wake_armed.store(false);
    delete this;
  }

 private:
  Poller* poller_;
  grpc::Alarm alarm_;
};

// One unary call. Posted on a poller's queue (asked for), it comes back
// when gRPC matches a call to it; then a fresh one is posted in its place,
// and this one is admitted and queued (or refused at once); a serving thread
// runs it and starts the reply; it is freed when the reply is sent.
class UnaryCall : public Tag {
 public:
  // `method` < 0: not counted, not admitted, run as it arrives (health).
  UnaryCall(ServerImpl* server, Poller* poller, int method)
      : server_(server), poller_(poller), method_(method) {}
  virtual void Post() = 0;
  virtual UnaryCall* Fresh() const = 0;
  void Done(bool ok) override;
  // Runs an admitted call, replies, and counts it.
  void Run();
  // Replies `st` without running (refused, or at shutdown), and counts it.
  void Refuse(const grpc::Status& st);

 protected:
  virtual grpc::Status Execute(Work* w) = 0;
  // Starts the reply: the response if st is OK, else the error.
  virtual void Reply(const grpc::Status& st) = 0;
  grpc::ServerContext ctx_;
  ServerImpl* const server_;
  Poller* const poller_;
  const int method_;

 private:
  void Finish(const grpc::Status& st, const Work& w, bool admitted);
  bool finishing_ = false;
  Clock::time_point arrived_;
};

template <class Service, class Req, class Rep>
class Unary final : public UnaryCall {
 public:
  using RequestFn = void (Service::*)(grpc::ServerContext*, Req*,
                                      grpc::ServerAsyncResponseWriter<Rep>*, grpc::CompletionQueue*,
                                      grpc::ServerCompletionQueue*, void*);
  using Handler = grpc::Status (*)(ServerImpl*, const Req&, Rep*, Work*);
  Unary(ServerImpl* server, Poller* poller, int method, Service* service, RequestFn request,
        Handler handler)
      : UnaryCall(server, poller, method),
        service_(service),
        request_fn_(request),
        handler_(handler),
        responder_(&ctx_) {}
  void Post() override {
    (service_->*request_fn_)(&ctx_, &request_, &responder_, poller_->cq.get(), poller_->cq.get(),
                             this);
  }
  UnaryCall* Fresh() const override {
    return new Unary(server_, poller_, method_, service_, request_fn_, handler_);
  }

 protected:
  grpc::Status Execute(Work* w) override { return handler_(server_, request_, &reply_, w); }
  void Reply(const grpc::Status& st) override {
    if (st.ok()) {
      responder_.Finish(reply_, st, this);
    } else {
      responder_.FinishWithError(st, this);
    }
  }

 private:
  Service* const service_;
  const RequestFn request_fn_;
  const Handler handler_;
  Req request_;
  Rep reply_;
  grpc::ServerAsyncResponseWriter<Rep> responder_;
};

// grpc.health.v1.Health/Watch: the status now, then each change, until the
// client goes or the server stops.
class WatchCall final : public Tag {
 public:
  WatchCall(ServerImpl* server, Poller* poller, grpc::health::v1::Health::AsyncService* service)
      : server_(server), poller_(poller), service_(service), writer_(&ctx_) {}
  void Post();
  void Done(bool ok) override;
  // The status of its service changed (under the server's health lock).
  void Notify();

 private:
  // Fires when the call ends, whatever ends it.
  class Ended final : public Tag {
   public:
    explicit Ended(WatchCall* call) : call_(call) {}
    void Done(bool) override { call_->OnEnded(); }

   private:
    WatchCall* call_;
  };
  void OnEnded();
  // Starts a write of the current status, or parks; false if nothing was
  // started. REQUIRES the server's health lock.
  void WriteOrPark();
  void Release();  // one of the two outstanding tags is done

  ServerImpl* const server_;
  Poller* const poller_;
  grpc::health::v1::Health::AsyncService* const service_;
  grpc::ServerContext ctx_;
  HealthCheckRequest request_;
  grpc::ServerAsyncWriter<HealthCheckResponse> writer_;
  Ended ended_{this};
  enum class State { kPosted, kWriting, kParked, kFinishing, kDone } state_ = State::kPosted;
  HealthCheckResponse::ServingStatus sent_ = HealthCheckResponse::UNKNOWN;
  bool ended_seen_ = false;
  std::atomic<int> refs_{2};  // the call's own tag and Ended's
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

  // The table's current version (version 0) or `version` if it is current
  // or held. Shared: the last holder of a version's snapshot tells the
  // engine to forget its rows (a GPU cache keyed by address must not serve
  // them for another mapping at the same address later).
  Result<Snap> Resolve(const std::string& table, uint64_t version);
  Store& store() { return *store_; }
  Engine& engine() { return *engine_; }
  int64_t max_reply_bytes() const { return options_.max_reply_bytes; }
  Metrics& metrics() { return metrics_; }
  bool cluster_node() const { return !options_.cluster.empty(); }
  // Where shards arrive before they are committed as tables.
  std::string staging_dir() const { return options_.db + "/cluster-staging"; }
  Mutex staging_mu_;  // one shard transfer step at a time

  // A call arrived: admitted and queued for a serving thread, or refused
  // at once (past max_inflight: RESOURCE_EXHAUSTED; shutting down:
  // UNAVAILABLE).
  void Admit(UnaryCall* call);
  // An admitted call finished (its reply started).
  void Release() { inflight_.fetch_sub(1, std::memory_order_acq_rel); }

  // Health, as grpc.health.v1 reports it: SERVING until Shutdown.
  HealthCheckResponse::ServingStatus HealthOf(const std::string& service) const
      EXCLUSIVE_LOCKS_REQUIRED(health_mu_) {
    if (!service.empty() && service != kServiceName) return HealthCheckResponse::SERVICE_UNKNOWN;
    return serving_ ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
  }
  bool health_stopped() const EXCLUSIVE_LOCKS_REQUIRED(health_mu_) { return !serving_; }
  void Park(WatchCall* w) EXCLUSIVE_LOCKS_REQUIRED(health_mu_) { watchers_.insert(w); }
  void Unpark(WatchCall* w) EXCLUSIVE_LOCKS_REQUIRED(health_mu_) { watchers_.erase(w); }
  Mutex health_mu_;

 private:
  // The held snapshot of `current`'s version, added (newest first, at most
  // held_versions) if it is new.
  Snap Remember(const TableSnapshot& current);
  // Posts each method's calls on `p`'s queue.
  void PostCalls(Poller* p);
  // A serving thread: collects what completed on its queue, runs one
  // admitted call, and again; waits (after busy_poll of spinning) when
  // there is nothing to do. Returns once its queue is shut down and drained.
  void Serve(Poller* p);
  UnaryCall* PopReady();
  // Re-verifies the shard tables this node holds (a damaged one is dropped,
  // for `embstore cluster rebalance` to restore) and registers the node.
  Status JoinCluster(const std::string& listen_host);
  // Wakes one serving thread blocked in Next, if any (calls are waiting).
  void WakeOne();

  ServerOptions options_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Engine> engine_;
  Metrics metrics_;
  v1::Embstore::AsyncService service_;
  grpc::health::v1::Health::AsyncService health_service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::unique_ptr<Poller>> pollers_;
  std::unique_ptr<MetricsHttpServer> http_;
  std::unique_ptr<ClusterMember> member_;
  // Cluster nodes: the shard GC (ShardGcLoop), with its own etcd client.
  void ShardGcLoop();
  std::unique_ptr<Etcd> gc_etcd_;
  std::thread gc_thread_;
  Mutex gc_mu_;
  CondVar gc_cv_{&gc_mu_};
  bool gc_stop_ GUARDED_BY(gc_mu_) = false;
  int port_ = 0;
  int max_inflight_ = 0;
  std::chrono::microseconds busy_poll_{0};
  std::atomic<int64_t> inflight_{0};
  std::atomic<bool> shut_down_{false};
  std::atomic<bool> draining_{false};  // set by Shutdown: new requests are refused
  Mutex ready_mu_;
  std::deque<UnaryCall*> ready_ GUARDED_BY(ready_mu_);
  std::atomic<int64_t> ready_count_{0};
  bool serving_ GUARDED_BY(health_mu_) = true;
  std::set<WatchCall*> watchers_ GUARDED_BY(health_mu_);  // parked Watch calls
  Mutex held_mu_;
  // Per table, the snapshots of recent versions, newest first.
  std::map<std::string, std::deque<Snap>> held_ GUARDED_BY(held_mu_);
};

// ---------------------------------------------------------------- calls

void UnaryCall::Done(bool ok) {
  if (finishing_ || !ok) {  // the reply went out (or not), or the server stopped
    delete this;
    return;
  }
  arrived_ = Clock::now();
  UnaryCall* fresh = Fresh();
  if (!StartOp(poller_, [fresh] { fresh->Post(); })) delete fresh;
  if (method_ < 0) {
    Run();
  } else {
    server_->Admit(this);
  }
}

void UnaryCall::Run() {
  Work w;
  grpc::Status st;
  // The deadline first: gRPC cancels a call whose deadline passed.
  if (ctx_.deadline() < std::chrono::system_clock::now()) {
    st = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                      "the deadline passed before the request was started");
  } else {
    try {
      st = Execute(&w);
    } catch (const std::bad_alloc&) {
      st = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "the server ran out of memory for this request");
    } catch (const std::exception& e) {
      st = grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what());
    }
    if (st.ok() && ctx_.deadline() < std::chrono::system_clock::now()) {
      st = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        "the deadline passed while the request was pooled");
      w = Work();
    }
  }
  Finish(st, w, /*admitted=*/method_ >= 0);
}

void UnaryCall::Refuse(const grpc::Status& st) { Finish(st, Work(), /*admitted=*/false); }

void UnaryCall::Finish(const grpc::Status& st, const Work& w, bool admitted) {
  ServerImpl* server = server_;
  if (method_ >= 0) {
    server->metrics().Record(static_cast<Method>(method_), st.error_code(), Clock::now() - arrived_,
                             st.ok() ? w.lookups : 0, st.ok() ? w.row_bytes : 0);
  }
  finishing_ = true;
  // Once started, the reply's completion may free this call on its
  // poller's thread: nothing of it is touched after.
  if (!StartOp(poller_, [this, &st] { Reply(st); })) delete this;
  // Counted out after the reply started: Shutdown waits for the count, then
  // stops gRPC, which would cancel a reply not yet started.
  if (admitted) server->Release();
}

void WatchCall::Post() {
  ctx_.AsyncNotifyWhenDone(&ended_);
  service_->RequestWatch(&ctx_, &request_, &writer_, poller_->cq.get(), poller_->cq.get(), this);
}

void WatchCall::WriteOrPark() {
  server_->health_mu_.AssertHeld();  // REQUIRES (the class is declared before the server's)
  const HealthCheckResponse::ServingStatus now = server_->HealthOf(request_.service());
  if (now != sent_ || state_ == State::kPosted) {
    HealthCheckResponse reply;
    reply.set_status(now);
    state_ = State::kWriting;
    sent_ = now;
    if (!StartOp(poller_, [this, &reply] { writer_.Write(reply, this); })) {
      state_ = State::kDone;
      Release();
    }
  } else if (server_->health_stopped()) {
    state_ = State::kFinishing;
    if (!StartOp(poller_, [this] {
          writer_.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"),
                         this);
        })) {
      state_ = State::kDone;
      Release();
    }
  } else {
    state_ = State::kParked;
    server_->Park(this);
  }
}

void WatchCall::Done(bool ok) {
  if (state_ == State::kPosted && !ok) {  // never matched: no Ended either
    delete this;
    return;
  }
  bool release = false;
  {
    MutexLock lock(&server_->health_mu_);
    switch (state_) {
      case State::kPosted: {
        WatchCall* fresh = new WatchCall(server_, poller_, service_);
        if (!StartOp(poller_, [fresh] { fresh->Post(); })) delete fresh;
        WriteOrPark();
        break;
      }
      case State::kWriting:
        if (ok && !ended_seen_) {
          WriteOrPark();
        } else {  // the stream is gone
          state_ = State::kDone;
          release = true;
        }
        break;
      default:  // kFinishing
        state_ = State::kDone;
        release = true;
        break;
    }
  }
  if (release) Release();
}

void WatchCall::Notify() {
  server_->health_mu_.AssertHeld();
  if (state_ != State::kParked) return;
  server_->Unpark(this);
  WriteOrPark();
}

void WatchCall::OnEnded() {
  bool parked = false;
  {
    MutexLock lock(&server_->health_mu_);
    ended_seen_ = true;
    if (state_ == State::kParked) {
      server_->Unpark(this);
      state_ = State::kDone;
      parked = true;
    }
  }
  if (parked) Release();
  Release();
}

void WatchCall::Release() {
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

// ---------------------------------------------------------------- server
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

// ---------------------------------------------------------------- handlers

grpc::Status HandleEmbeddingBag(ServerImpl* s, const v1::EmbeddingBagRequest& request,
                                v1::PooledReply* reply, Work* w) {
  EMBSTORE_GRPC_ASSIGN_OR_RETURN(const Snap snap, s->Resolve(request.table(), request.version()));
  const TableView view = snap->view();
  BagRequest req;
  QueryOptions qo;
  EMBSTORE_GRPC_RETURN_IF_ERROR(ReadBagRequest(request, &req, &qo));
  // At most this many bags (the library's plan has one entry per bag):
  // refused past the reply limit before anything is planned.
  const int64_t most = request.indices_shape_size() == 2 ? request.indices_shape(0)
                                                         : request.offsets().values_size();
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
}

grpc::Status HandleBatchedEmbeddingBag(ServerImpl* s, const v1::BatchedEmbeddingBagRequest& request,
                                       v1::PooledReply* reply, Work* w) {
  EMBSTORE_GRPC_ASSIGN_OR_RETURN(const Snap snap, s->Resolve(request.table(), request.version()));
  const TableView view = snap->view();
  BatchedBagRequest req;
  QueryOptions qo;
  EMBSTORE_GRPC_RETURN_IF_ERROR(ReadBatchedRequest(request, &req, &qo));
  // ends has one entry per bag.
  if (grpc::Status st = CheckReplySize(request.ends_size(), view.dim, s->max_reply_bytes());
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
}

grpc::Status HandleFmScore(ServerImpl* s, const v1::FmScoreRequest& request,
                           v1::FmScoreReply* reply, Work* w) {
  EMBSTORE_GRPC_ASSIGN_OR_RETURN(const Snap vectors, s->Resolve(request.vectors_table(), 0));
  EMBSTORE_GRPC_ASSIGN_OR_RETURN(const Snap biases, s->Resolve(request.biases_table(), 0));
  FmModel model = FmModel::kFm;
  FmRequest req;
  QueryOptions qo;
  EMBSTORE_GRPC_RETURN_IF_ERROR(ReadFmRequest(request, &model, &req, &qo));
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
}

grpc::Status HandleListTables(ServerImpl* s, const v1::ListTablesRequest& /*request*/,
                              v1::ListTablesReply* reply, Work* /*w*/) {
  EMBSTORE_GRPC_ASSIGN_OR_RETURN(const std::vector<embstore::TableInfo> tables,
                                 s->store().ListTables());
  for (const embstore::TableInfo& t : tables) WriteTableMeta(t, reply->add_tables());
  return grpc::Status::OK;
}

grpc::Status HandleTableInfo(ServerImpl* s, const v1::TableInfoRequest& request,
                             v1::TableMeta* reply, Work* /*w*/) {
  EMBSTORE_GRPC_ASSIGN_OR_RETURN(const embstore::TableInfo info,
                                 s->store().GetInfo(request.table()));
  WriteTableMeta(info, reply);
  return grpc::Status::OK;
}

grpc::Status NotANode() {
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                      "this server is not a cluster node (start it with --cluster)");
}

// A shard table's name as the publisher makes it: TABLE.vV.sS.
bool IsShardName(const std::string& name) {
  const size_t s = name.rfind(".s");
  const size_t v = s == std::string::npos ? std::string::npos : name.rfind(".v", s - 1);
  if (v == std::string::npos || v == 0 || s + 2 >= name.size() || v + 2 >= s) return false;
  const auto digits = [](const std::string& d) {
    return !d.empty() && d.find_first_not_of("0123456789") == std::string::npos;
  };
  return digits(name.substr(v + 2, s - v - 2)) && digits(name.substr(s + 2)) &&
         ValidateTableName(name).ok();
}

// The V of a shard table's name "TABLE.vV.sS" (IsShardName checked it).
uint64_t ShardVersion(const std::string& name) {
  const size_t s = name.rfind(".s");
  const size_t v = name.rfind(".v", s - 1);
  return std::strtoull(name.c_str() + v + 2, nullptr, 10);
}

grpc::Status BadShard(const std::string& name) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      "'" + name + "' is not a shard table name (TABLE.vVERSION.sSHARD)");
}

// PoolPartial's MAX, with what an exact merge needs: each entry is pooled
// alone (one-entry bags: the value the max kernel compares, with its weight
// and max_norm), then reduced here under torch's rule, keeping per element
// the max over the entries that are not NaN, its first entry's position, and
// whether the bag's first entry is NaN.
Status PartialMax(ServerImpl* s, const TableView& view, const BagRequest& req,
                  const QueryOptions& qo, const engine::BagPlan& plan, std::span<float> out,
                  v1::PartialReply* reply) {
  const int64_t n = req.indices.size;
  const int64_t dim = view.dim;
  std::vector<int64_t> starts(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) starts[static_cast<size_t>(k)] = k;
  BagRequest single;
  single.indices = req.indices;
  single.indices_shape = {n};
  single.offsets = IndexArray(std::span<const int64_t>(starts));
  single.weights = req.weights;
  QueryOptions one = qo;
  one.include_last_offset = false;
  std::vector<float> entry(static_cast<size_t>(n * dim));
  if (n > 0) EMBSTORE_RETURN_IF_ERROR(s->engine().EmbeddingBag(view, single, one, entry));
  const int64_t bags = plan.num_bags();
  std::string* positions = reply->mutable_max_positions();
  positions->assign(static_cast<size_t>(bags * dim) * sizeof(int32_t), '\0');
  for (int64_t b = 0; b < bags; ++b) {
    for (int64_t d = 0; d < dim; ++d) {
      int32_t best_pos = -1;
      float best = 0.0f;
      bool first = true;
      for (int64_t k = plan.bag_begin[b]; k < plan.bag_end[b]; ++k) {
        if (plan.indices[k] == plan.padding_row) continue;
        const float x = entry[static_cast<size_t>(k * dim + d)];
        if (first) {
          first = false;
          if (std::isnan(x)) {
            uint32_t bits = 0;
            std::memcpy(&bits, &x, sizeof bits);
            reply->add_nan_cells(b * dim + d);
            reply->add_nan_bits(bits);
          }
        }
        if (std::isnan(x)) continue;
        if (best_pos < 0 || x > best) {
          best = x;
          best_pos = static_cast<int32_t>(k);
        }
      }
      out[static_cast<size_t>(b * dim + d)] = best;
      std::memcpy(positions->data() + static_cast<size_t>(b * dim + d) * sizeof(int32_t), &best_pos,
                  sizeof best_pos);
    }
  }
  return Status::OK();
}

grpc::Status HandlePoolPartial(ServerImpl* s, const v1::PoolPartialRequest& request,
                               v1::PartialReply* reply, Work* w) {
  if (!s->cluster_node()) return NotANode();
  const v1::EmbeddingBagRequest& bag = request.bag();
  if (!IsShardName(bag.table())) return BadShard(bag.table());
  EMBSTORE_GRPC_ASSIGN_OR_RETURN(const Snap snap, s->Resolve(bag.table(), 0));
  const TableView view = snap->view();
  BagRequest req;
  QueryOptions qo;
  EMBSTORE_GRPC_RETURN_IF_ERROR(ReadBagRequest(bag, &req, &qo));
  if (qo.mode == PoolingMode::kMean) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "PoolPartial pools SUM or MAX (a mean is merged from sums and counts)");
  }
  const int64_t most =
      bag.indices_shape_size() == 2 ? bag.indices_shape(0) : bag.offsets().values_size();
  if (grpc::Status st = CheckReplySize(most, view.dim, s->max_reply_bytes()); !st.ok()) return st;
  EMBSTORE_GRPC_ASSIGN_OR_RETURN(const engine::BagPlan plan, engine::PlanBags(view, req, qo));
  const int64_t bags = plan.num_bags();
  std::span<float> out;
  if (grpc::Status st =
          ReplyBuffer(bags, view.dim, s->max_reply_bytes(), reply->mutable_values(), &out);
      !st.ok()) {
    return st;
  }
  if (qo.mode == PoolingMode::kMax) {
    EMBSTORE_GRPC_RETURN_IF_ERROR(PartialMax(s, view, req, qo, plan, out, reply));
  } else {
    EMBSTORE_GRPC_RETURN_IF_ERROR(s->engine().EmbeddingBag(view, req, qo, out));
  }
  reply->add_shape(bags);
  reply->add_shape(view.dim);
  reply->set_version(ShardVersion(bag.table()));
  reply->set_checksum(snap->info().checksum);
  google::protobuf::RepeatedField<int64_t>* counts = reply->mutable_counts();
  counts->Reserve(static_cast<int>(bags));
  for (int64_t b = 0; b < bags; ++b) {
    int64_t c = 0;
    for (int64_t k = plan.bag_begin[b]; k < plan.bag_end[b]; ++k)
      c += plan.indices[k] != plan.padding_row;
    counts->Add(c);
  }
  w->lookups = req.indices.size;
  w->row_bytes = req.indices.size * static_cast<int64_t>(view.row_stride);
  return grpc::Status::OK;
}

grpc::Status HandlePutShardRows(ServerImpl* s, const v1::PutShardRowsRequest& request,
                                v1::PutShardRowsReply* /*reply*/, Work* /*w*/) {
  if (!s->cluster_node()) return NotANode();
  if (!IsShardName(request.shard())) return BadShard(request.shard());
  const int64_t dim = request.dim();
  const std::optional<DType> dtype = ParseDType(request.dtype());
  const size_t stride = dtype ? RowStrideBytes(*dtype, dim) : 0;
  if (!dtype || dim < 1 || dim > (int64_t{1} << 24) || request.first_row() < 0 ||
      request.rows().size() % stride != 0 || request.first_row() > (int64_t{1} << 40)) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        "PutShardRows: bad dtype, dim, first_row or row bytes for '" + request.shard() + "'");
  }
  MutexLock lock(&s->staging_mu_);
  const std::string dir = s->staging_dir();
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "cannot create " + dir + ": " + std::strerror(errno));
  }
  const std::string path = dir + "/" + request.shard() + ".rows";
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (request.first_row() == 0 ? O_TRUNC : 0);
  const int fd = ::open(path.c_str(), flags, 0644);
  if (fd < 0) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "cannot open " + path + ": " + std::strerror(errno));
  }
  const off_t at = static_cast<off_t>(static_cast<size_t>(request.first_row()) * stride);
  const std::string& bytes = request.rows();
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n =
        ::pwrite(fd, bytes.data() + done, bytes.size() - done, at + static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = errno;
      ::close(fd);
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "cannot write " + path + ": " + std::strerror(e));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return grpc::Status::OK;
}

grpc::Status HandleCommitShard(ServerImpl* s, const v1::CommitShardRequest& request,
                               v1::CommitShardReply* reply, Work* /*w*/) {
  if (!s->cluster_node()) return NotANode();
  const std::string& name = request.shard();
  if (!IsShardName(name)) return BadShard(name);
  const std::optional<DType> dtype = ParseDType(request.dtype());
  if (!dtype) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "CommitShard: unknown dtype '" + request.dtype() + "'");
  }
  if (request.rows() < 1 || request.dim() < 1 || request.dim() > (int64_t{1} << 24)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "CommitShard: bad rows or dim");
  }
  MutexLock lock(&s->staging_mu_);
  const std::string path = s->staging_dir() + "/" + name + ".rows";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "CommitShard: no rows were sent for '" + name + "'");
  }
  struct stat st {};
  const size_t stride = RowStrideBytes(*dtype, request.dim());
  const int64_t want = request.rows() * static_cast<int64_t>(stride);
  if (::fstat(fd, &st) != 0 || st.st_size != want) {
    ::close(fd);
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "CommitShard: '" + name + "' has " + std::to_string(st.st_size) +
                            " bytes of rows staged, not " + std::to_string(want));
  }
  TableSpec spec;
  spec.rows = request.rows();
  spec.dim = request.dim();
  spec.dtype = *dtype;
  spec.source = request.source();
  spec.replace = true;
  auto info = s->store().WriteEncodedTable(
      name, spec, [fd, stride](int64_t first, int64_t count, uint8_t* out) {
        const size_t n = static_cast<size_t>(count) * stride;
        const off_t at = static_cast<off_t>(static_cast<size_t>(first) * stride);
        size_t done = 0;
        while (done < n) {
          const ssize_t r = ::pread(fd, out + done, n - done, at + static_cast<off_t>(done));
          if (r < 0 && errno == EINTR) continue;
          if (r <= 0) return Status::IOError("cannot read the staged rows");
          done += static_cast<size_t>(r);
        }
        return Status::OK();
      });
  ::close(fd);
  ::unlink(path.c_str());
  EMBSTORE_GRPC_RETURN_IF_ERROR(info.status());
  if (info->checksum != request.checksum()) {
    (void)s->store().DropTable(name);
    return grpc::Status(grpc::StatusCode::DATA_LOSS,
                        "shard '" + name + "' arrived with checksum " +
                            std::to_string(info->checksum) + ", not the " +
                            std::to_string(request.checksum()) + " it was sent with; dropped");
  }
  WriteTableMeta(*info, reply->mutable_table());
  return grpc::Status::OK;
}

grpc::Status HandleGetShardRows(ServerImpl* s, const v1::GetShardRowsRequest& request,
                                v1::GetShardRowsReply* reply, Work* w) {
  if (!s->cluster_node()) return NotANode();
  if (!IsShardName(request.shard())) return BadShard(request.shard());
  EMBSTORE_GRPC_ASSIGN_OR_RETURN(const Snap snap, s->Resolve(request.shard(), 0));
  const TableView view = snap->view();
  if (request.first_row() < 0 || request.count() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "GetShardRows: first_row and count must be >= 0");
  }
  const int64_t first = std::min(request.first_row(), view.rows);
  const int64_t fit = std::max<int64_t>(
      1, s->max_reply_bytes() / static_cast<int64_t>(std::max<size_t>(view.row_stride, 1)));
  const int64_t n = std::min({request.count(), view.rows - first, fit});
  WriteTableMeta(snap->info(), reply->mutable_table());
  reply->set_first_row(first);
  if (n > 0) {
    reply->set_rows(reinterpret_cast<const char*>(view.Row(first)),  // NOLINT
                    static_cast<size_t>(n) * view.row_stride);
  }
  w->row_bytes = n * static_cast<int64_t>(view.row_stride);
  return grpc::Status::OK;
}

grpc::Status HandleListShards(ServerImpl* s, const v1::ListShardsRequest& /*request*/,
                              v1::ListShardsReply* reply, Work* /*w*/) {
  if (!s->cluster_node()) return NotANode();
  EMBSTORE_GRPC_ASSIGN_OR_RETURN(const std::vector<embstore::TableInfo> tables,
                                 s->store().ListTables());
  for (const embstore::TableInfo& t : tables)
    if (IsShardName(t.name)) WriteTableMeta(t, reply->add_shards());
  return grpc::Status::OK;
}

grpc::Status HandleCheck(ServerImpl* s, const HealthCheckRequest& request,
                         HealthCheckResponse* reply, Work* /*w*/) {
  MutexLock lock(&s->health_mu_);
  const HealthCheckResponse::ServingStatus st = s->HealthOf(request.service());
  // As gRPC's own health service: an unknown service is NOT_FOUND.
  if (st == HealthCheckResponse::SERVICE_UNKNOWN) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service '" + request.service() + "'");
  }
  reply->set_status(st);
  return grpc::Status::OK;
}

Status ServerImpl::Init(const ServerOptions& options) {
  options_ = options;
  if (options.threads < 0) return Status::InvalidArgument("--threads must be >= 0");
  if (options.max_inflight < 0) return Status::InvalidArgument("--max-inflight must be >= 0");
  if (options.busy_poll_us < 0 || options.busy_poll_us > 1000000)
    return Status::InvalidArgument("--busy-poll-us must be between 0 and 1000000");
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
  store_options.create_if_missing = !options.cluster.empty();  // a node's store fills with shards
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
  busy_poll_ = std::chrono::microseconds(options.busy_poll_us);

  // Only asynchronous services: no thread of gRPC's own takes calls, each
  // serving thread polls its completion queue and runs what it takes.
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, creds, &port_);
  builder.RegisterService(&service_);
  builder.RegisterService(&health_service_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_request_bytes));
  // The values are checked against max_reply_bytes; the rest of a reply
  // (shape, table name, version) is small.
  builder.SetMaxSendMessageSize(
      static_cast<int>(std::min<int64_t>(options.max_reply_bytes + kReplyFraming, INT32_MAX)));
  // Another process on the same port is an error, not a silent share of it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  for (int i = 0; i < threads; ++i) {
    auto p = std::make_unique<Poller>();
    p->index = i;
    p->cq = builder.AddCompletionQueue();
    pollers_.push_back(std::move(p));
  }
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    if (server_) server_->Shutdown();
    for (auto& p : pollers_) {
      p->cq->Shutdown();
      void* tag = nullptr;
      bool ok = false;
      while (p->cq->Next(&tag, &ok)) {
      }
    }
    pollers_.clear();
    return Status::IOError("cannot listen on " + options.listen +
                           " (in use, or not an address of this machine)");
  }
  for (auto& p : pollers_) {
    PostCalls(p.get());
    p->thread = std::thread([this, raw = p.get()] { Serve(raw); });
  }
  if (!options.metrics.empty()) {
    auto http = MetricsHttpServer::Start(options.metrics, [this] { return RenderMetrics(); });
    if (!http.ok()) {
      Shutdown(std::chrono::milliseconds(0));
      return http.status();
    }
    http_ = std::move(http).value();
  }
  if (!options.cluster.empty()) {
    if (Status st = JoinCluster(host); !st.ok()) {
      Shutdown(std::chrono::milliseconds(0));
      return st;
    }
  }
  // The tables' versions from the start, for the metrics.
  if (auto tables = store_->ListTables(); tables.ok()) {
    for (const embstore::TableInfo& t : *tables) metrics_.SetTableVersion(t.name, t.version);
  }
  return Status::OK();
}

void ServerImpl::Shutdown(std::chrono::milliseconds drain) {
  if (shut_down_.exchange(true)) return;
  // Out of the cluster first: clients route elsewhere while this drains.
  if (member_) member_->Leave();
  if (gc_thread_.joinable()) {
    {
      MutexLock lock(&gc_mu_);
      gc_stop_ = true;
    }
    gc_cv_.SignalAll();
    gc_thread_.join();
  }
  if (server_) {
    {
      // NOT_SERVING to health checks and watchers, whose streams then end.
      MutexLock lock(&health_mu_);
      serving_ = false;
      const std::vector<WatchCall*> parked(watchers_.begin(), watchers_.end());
      for (WatchCall* w : parked) w->Notify();
    }
    // New requests are refused from now on; those admitted may finish
    // within `drain`; then gRPC shuts down what is left (rather than
    // draining in gRPC's Shutdown, which also waits, about 5 s, on idle
    // connections of clients that keep their channel open).
    draining_.store(true);
    const Clock::time_point give_up = Clock::now() + drain;
    while (inflight_.load() > 0 && Clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // The serving threads keep polling meanwhile: gRPC completes what is
    // started, and fails the calls still asked for.
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    for (auto& p : pollers_) {
      {
        MutexLock lock(&p->ops_mu);
        p->shut = true;
      }
      p->cq->Shutdown();
    }
    for (auto& p : pollers_)
      if (p->thread.joinable()) p->thread.join();
    // Admitted calls no thread ran (none is started on a queue shut down).
    for (;;) {
      UnaryCall* c = PopReady();
      if (c == nullptr) break;
      c->Refuse(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
      Release();
    }
  }
  if (http_) http_->Stop();
}

Status ServerImpl::JoinCluster(const std::string& listen_host) {
  if (auto tables = store_->ListTables(); tables.ok()) {
    for (const embstore::TableInfo& t : *tables) {
      if (!IsShardName(t.name)) continue;
      if (Status st = store_->VerifyTable(t.name); !st.ok()) {
        std::fprintf(stderr, "embstore serve: cluster: shard '%s' failed its check (%s); dropped\n",
                     t.name.c_str(), st.message().c_str());
        (void)store_->DropTable(t.name);
      }
    }
  }
  NodeInfo node;
  node.address = options_.advertise;
  if (node.address.empty()) {
    if (listen_host == "0.0.0.0" || listen_host == "::" || listen_host.empty()) {
      return Status::InvalidArgument(
          "--listen " + options_.listen +
          " binds every address: give --advertise HOST:PORT, where the cluster's clients reach "
          "this node");
    }
    const std::string h =
        listen_host.find(':') != std::string::npos ? "[" + listen_host + "]" : listen_host;
    node.address = h + ":" + std::to_string(port_);
  }
  node.name = options_.node;
  if (node.name.empty()) {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    node.name = std::string(host) + "-" + std::to_string(port_);
  }
  if (Status st = ValidateTableName(node.name); !st.ok() || node.name.size() > 64) {
    return Status::InvalidArgument("--node '" + node.name +
                                   "': 1..64 characters of [A-Za-z0-9_.-], not starting with '.'");
  }
  node.started_unix = static_cast<int64_t>(std::time(nullptr));
  ClusterKeys keys;
  keys.prefix = options_.cluster_prefix;
  EMBSTORE_ASSIGN_OR_RETURN(
      member_, ClusterMember::Join(options_.cluster, keys, node, options_.lease_ttl_s));
  EMBSTORE_ASSIGN_OR_RETURN(gc_etcd_, Etcd::Connect(options_.cluster, std::chrono::seconds(5)));
  gc_thread_ = std::thread([this] { ShardGcLoop(); });
  return Status::OK();
}

void ServerImpl::ShardGcLoop() {
  using std::chrono::milliseconds;
  const milliseconds grace = options_.shard_gc_grace;
  const milliseconds period =
      std::max(milliseconds(200), std::min<milliseconds>(milliseconds(5000), grace / 4));
  ClusterKeys keys;
  keys.prefix = options_.cluster_prefix;
  std::map<std::string, Clock::time_point> orphan_since;  // shard table -> first seen orphaned
  for (;;) {
    {
      MutexLock lock(&gc_mu_);
      if (!gc_stop_) gc_cv_.WaitFor(&gc_mu_, period);
      if (gc_stop_) return;
    }
    // The versions the cluster still names: every manifest key, whatever
    // its state (a publish in progress has its manifest from the start).
    auto kvs = gc_etcd_->List(keys.Tables());
    if (!kvs.ok()) continue;      // etcd unreadable: never drop on a guess
    std::set<std::string> named;  // "TABLE.vVERSION"
    for (const EtcdKeyValue& kv : *kvs) {
      const std::string rest = kv.key.substr(keys.Tables().size());
      const size_t at = rest.find("/versions/");
      if (at == std::string::npos) continue;
      const std::string v = rest.substr(at + std::string("/versions/").size());
      if (v.empty() || v.size() > 19 || v.find_first_not_of("0123456789") != std::string::npos)
        continue;
      named.insert(rest.substr(0, at) + ".v" + std::to_string(std::stoull(v)));
    }
    auto tables = store_->ListTables();
    if (!tables.ok()) continue;
    std::set<std::string> present;
    for (const embstore::TableInfo& t : *tables) {
      if (!IsShardName(t.name)) continue;
      present.insert(t.name);
      const std::string version = t.name.substr(0, t.name.rfind(".s"));
      if (named.count(version)) {
        orphan_since.erase(t.name);
        continue;
      }
      const Clock::time_point now = Clock::now();
      const Clock::time_point since = orphan_since.emplace(t.name, now).first->second;
      if (now - since < grace) continue;
      if (Status st = store_->DropTable(t.name); st.ok()) {
        std::fprintf(stderr,
                     "embstore serve: cluster: shard '%s' belongs to no version in the cluster "
                     "any more; dropped\n",
                     t.name.c_str());
      } else {
        std::fprintf(stderr, "embstore serve: cluster: dropping retired shard '%s': %s\n",
                     t.name.c_str(), st.message().c_str());
      }
      orphan_since.erase(t.name);
    }
    for (auto it = orphan_since.begin(); it != orphan_since.end();) {
      it = present.count(it->first) ? std::next(it) : orphan_since.erase(it);
    }
  }
}

void ServerImpl::PostCalls(Poller* p) {
  using S = v1::Embstore::AsyncService;
  using H = grpc::health::v1::Health::AsyncService;
  auto post = [p](UnaryCall* c, int n) {
    for (int i = 0; i < n; ++i) {
      UnaryCall* fresh = i + 1 < n ? c->Fresh() : c;
      if (!StartOp(p, [fresh] { fresh->Post(); })) delete fresh;
    }
  };
  post(new Unary<S, v1::EmbeddingBagRequest, v1::PooledReply>(
           this, p, static_cast<int>(Method::kEmbeddingBag), &service_, &S::RequestEmbeddingBag,
           &HandleEmbeddingBag),
       kPoolingSlots);
  post(new Unary<S, v1::BatchedEmbeddingBagRequest, v1::PooledReply>(
           this, p, static_cast<int>(Method::kBatchedEmbeddingBag), &service_,
           &S::RequestBatchedEmbeddingBag, &HandleBatchedEmbeddingBag),
       kPoolingSlots);
  post(new Unary<S, v1::FmScoreRequest, v1::FmScoreReply>(
           this, p, static_cast<int>(Method::kFmScore), &service_, &S::RequestFmScore,
           &HandleFmScore),
       kPoolingSlots);
  post(new Unary<S, v1::ListTablesRequest, v1::ListTablesReply>(
           this, p, static_cast<int>(Method::kListTables), &service_, &S::RequestListTables,
           &HandleListTables),
       kOtherSlots);
  post(new Unary<S, v1::TableInfoRequest, v1::TableMeta>(
           this, p, static_cast<int>(Method::kTableInfo), &service_, &S::RequestTableInfo,
           &HandleTableInfo),
       kOtherSlots);
  post(new Unary<S, v1::PoolPartialRequest, v1::PartialReply>(
           this, p, static_cast<int>(Method::kPoolPartial), &service_, &S::RequestPoolPartial,
           &HandlePoolPartial),
       kPoolingSlots);
  post(new Unary<S, v1::PutShardRowsRequest, v1::PutShardRowsReply>(
           this, p, static_cast<int>(Method::kPutShardRows), &service_, &S::RequestPutShardRows,
           &HandlePutShardRows),
       kOtherSlots);
  post(new Unary<S, v1::CommitShardRequest, v1::CommitShardReply>(
           this, p, static_cast<int>(Method::kCommitShard), &service_, &S::RequestCommitShard,
           &HandleCommitShard),
       kOtherSlots);
  post(new Unary<S, v1::GetShardRowsRequest, v1::GetShardRowsReply>(
           this, p, static_cast<int>(Method::kGetShardRows), &service_, &S::RequestGetShardRows,
           &HandleGetShardRows),
       kOtherSlots);
  post(new Unary<S, v1::ListShardsRequest, v1::ListShardsReply>(
           this, p, static_cast<int>(Method::kListShards), &service_, &S::RequestListShards,
           &HandleListShards),
       kOtherSlots);
  post(new Unary<H, HealthCheckRequest, HealthCheckResponse>(this, p, -1, &health_service_,
                                                             &H::RequestCheck, &HandleCheck),
       kOtherSlots);
  for (int i = 0; i < kOtherSlots; ++i) {
    auto* w = new WatchCall(this, p, &health_service_);
    if (!StartOp(p, [w] { w->Post(); })) delete w;
  }
}

void ServerImpl::Admit(UnaryCall* call) {
  int64_t now_inflight = inflight_.load(std::memory_order_relaxed);
  do {
    if (now_inflight >= max_inflight_) {
      call->Refuse(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                "the server is busy: " + std::to_string(max_inflight_) +
                                    " requests in flight (--max-inflight); retry later"));
      return;
    }
  } while (!inflight_.compare_exchange_weak(now_inflight, now_inflight + 1));
  // Counted first, then the check: Shutdown sets draining_ and then waits
  // for the count to reach 0, so a request is either refused here or waited
  // for there.
  if (draining_.load()) {
    call->Refuse(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
    Release();
    return;
  }
  MutexLock lock(&ready_mu_);
  ready_.push_back(call);
  ready_count_.fetch_add(1);
}

UnaryCall* ServerImpl::PopReady() {
  if (ready_count_.load() == 0) return nullptr;
  MutexLock lock(&ready_mu_);
  if (ready_.empty()) return nullptr;
  UnaryCall* c = ready_.front();
  ready_.pop_front();
  ready_count_.fetch_sub(1);
  return c;
}

void ServerImpl::WakeOne() {
  for (auto& p : pollers_) {
    if (!p->blocked.load() || p->wake_armed.exchange(true)) continue;
    auto* wake = new Wake(p.get());
    if (!StartOp(p.get(), [wake] { wake->Set(); })) {
      delete wake;
      p->wake_armed.store(false);
    }
    return;
  }
}

void ServerImpl::Serve(Poller* p) {
  grpc::CompletionQueue* cq = p->cq.get();
  Clock::time_point idle_since = Clock::now();
  for (;;) {
    // Whatever completed, without waiting: arrivals are admitted and
    // queued, replies sent are freed.
    void* tag = nullptr;
    bool ok = false;
    grpc::CompletionQueue::NextStatus got;
    while ((got = cq->AsyncNext(&tag, &ok, gpr_time_0(GPR_CLOCK_MONOTONIC))) ==
           grpc::CompletionQueue::GOT_EVENT) {
      static_cast<Tag*>(tag)->Done(ok);
    }
    if (got == grpc::CompletionQueue::SHUTDOWN) return;
    if (UnaryCall* call = PopReady()) {
      if (ready_count_.load() > 0) WakeOne();  // more waiting than this thread takes
      call->Run();
      idle_since = Clock::now();
      continue;
    }
    // Nothing to run: keep polling for busy_poll (no sleep and wake-up
    // between a request's arrival and its pooling), then wait.
    if (busy_poll_.count() > 0 && Clock::now() - idle_since < busy_poll_) continue;
    p->blocked.store(true);
    if (ready_count_.load() > 0) {  // queued before `blocked` was seen
      p->blocked.store(false);
      continue;
    }
    const bool open = cq->Next(&tag, &ok);
    p->blocked.store(false);
    if (!open) return;
    static_cast<Tag*>(tag)->Done(ok);
    idle_since = Clock::now();
  }
}

}  // namespace

Server::~Server() = default;

Result<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  auto server = std::make_unique<ServerImpl>();
  EMBSTORE_RETURN_IF_ERROR(server->Init(options));
  return std::unique_ptr<Server>(std::move(server));
}

}  // namespace embstore::serve
