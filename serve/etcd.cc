#include "serve/etcd.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <thread>

#include "etcd/rpc.grpc.pb.h"
#include "util/mutex.h"

namespace embstore::serve {
namespace {

namespace pb = etcdserverpb;

Status FromGrpc(const grpc::Status& st, const std::string& what, const std::string& endpoint) {
  const std::string m = "etcd at " + endpoint + ": " + what + ": " + st.error_message();
  switch (st.error_code()) {
    case grpc::StatusCode::NOT_FOUND:
      return Status::NotFound(m);
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
      return Status::InvalidArgument(m);
    default:
      return Status::IOError(m);
  }
}

// A gRPC code worth trying the next endpoint for.
bool Unreachable(const grpc::Status& st) {
  return st.error_code() == grpc::StatusCode::UNAVAILABLE ||
         st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
         st.error_code() == grpc::StatusCode::CANCELLED;
}

EtcdKeyValue FromPb(const pb::KeyValue& kv) {
  EtcdKeyValue out;
  out.key = kv.key();
  out.value = kv.value();
  out.create_revision = kv.create_revision();
  out.mod_revision = kv.mod_revision();
  out.lease = kv.lease();
  return out;
}

struct Endpoint {
  std::string url;  // as given
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::KV::Stub> kv;
  std::unique_ptr<pb::Lease::Stub> lease;
  std::unique_ptr<pb::Watch::Stub> watch;
};

class WatchImpl final : public EtcdWatch {
 public:
  ~WatchImpl() override {
    stop_.store(true);
    {
      MutexLock lock(&mu_);
      if (ctx_ != nullptr) ctx_->TryCancel();
    }
    if (thread_.joinable()) thread_.join();
  }
  std::atomic<bool> stop_{false};
  Mutex mu_;
  grpc::ClientContext* ctx_ GUARDED_BY(mu_) = nullptr;
  std::thread thread_;
};

class EtcdImpl final : public Etcd {
 public:
  EtcdImpl(std::string endpoints, std::vector<Endpoint> eps, std::chrono::milliseconds timeout)
      : Etcd(std::move(endpoints)), eps_(std::move(eps)), timeout_(timeout) {}

  // Runs `call` against each endpoint in turn (from the last one that
  // answered) until one answers.
  template <class F>
  Status Call(const std::string& what, F&& call) {
    const size_t n = eps_.size();
    const size_t first = preferred_.load();
    grpc::Status last;
    std::string last_url;
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (first + k) % n;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
      last = call(eps_[i], &ctx);
      last_url = eps_[i].url;
      if (last.ok()) {
        preferred_.store(i);
        return Status::OK();
      }
      if (!Unreachable(last)) break;
    }
    return FromGrpc(last, what, last_url);
  }

  Result<std::optional<EtcdKeyValue>> Get(const std::string& key) override {
    pb::RangeRequest req;
    req.set_key(key);
    pb::RangeResponse rep;
    EMBSTORE_RETURN_IF_ERROR(Call("get " + key, [&](Endpoint& e, grpc::ClientContext* ctx) {
      return e.kv->Range(ctx, req, &rep);
    }));
    if (rep.kvs_size() == 0) return std::optional<EtcdKeyValue>();
    return std::optional<EtcdKeyValue>(FromPb(rep.kvs(0)));
  }

  Result<std::vector<EtcdKeyValue>> List(const std::string& prefix, int64_t* revision) override {
    pb::RangeRequest req;
    req.set_key(prefix);
    req.set_range_end(PrefixEnd(prefix));
    pb::RangeResponse rep;
    EMBSTORE_RETURN_IF_ERROR(Call("list " + prefix, [&](Endpoint& e, grpc::ClientContext* ctx) {
      return e.kv->Range(ctx, req, &rep);
    }));
    std::vector<EtcdKeyValue> out;
    out.reserve(static_cast<size_t>(rep.kvs_size()));
    for (const pb::KeyValue& kv : rep.kvs()) out.push_back(FromPb(kv));
    if (revision != nullptr) *revision = rep.header().revision();
    return out;
  }

  Status Put(const std::string& key, const std::string& value, int64_t lease) override {
    pb::PutRequest req;
    req.set_key(key);
    req.set_value(value);
    req.set_lease(lease);
    pb::PutResponse rep;
    return Call("put " + key,
                [&](Endpoint& e, grpc::ClientContext* ctx) { return e.kv->Put(ctx, req, &rep); });
  }

  Result<bool> CompareAndPut(const std::string& key, const std::optional<std::string>& expected,
                             const std::string& value, int64_t lease) override {
    pb::TxnRequest req;
    pb::Compare* c = req.add_compare();
    c->set_key(key);
    c->set_result(pb::Compare::EQUAL);
    if (expected) {
      c->set_target(pb::Compare::VALUE);
      c->set_value(*expected);
    } else {  // absent: created at revision 0
      c->set_target(pb::Compare::CREATE);
      c->set_create_revision(0);
    }
    pb::PutRequest* put = req.add_success()->mutable_request_put();
    put->set_key(key);
    put->set_value(value);
    put->set_lease(lease);
    pb::TxnResponse rep;
    EMBSTORE_RETURN_IF_ERROR(
        Call("compare-and-put " + key,
             [&](Endpoint& e, grpc::ClientContext* ctx) { return e.kv->Txn(ctx, req, &rep); }));
    return rep.succeeded();
  }

  Status Delete(const std::string& key) override {
    pb::DeleteRangeRequest req;
    req.set_key(key);
    pb::DeleteRangeResponse rep;
    return Call("delete " + key, [&](Endpoint& e, grpc::ClientContext* ctx) {
      return e.kv->DeleteRange(ctx, req, &rep);
    });
  }

  Status DeletePrefix(const std::string& prefix) override {
    pb::DeleteRangeRequest req;
    req.set_key(prefix);
    req.set_range_end(PrefixEnd(prefix));
    pb::DeleteRangeResponse rep;
    return Call("delete " + prefix + "*", [&](Endpoint& e, grpc::ClientContext* ctx) {
      return e.kv->DeleteRange(ctx, req, &rep);
    });
  }

  Result<int64_t> GrantLease(int64_t ttl_s) override {
    pb::LeaseGrantRequest req;
    req.set_ttl(ttl_s);
    pb::LeaseGrantResponse rep;
    EMBSTORE_RETURN_IF_ERROR(Call("grant a lease", [&](Endpoint& e, grpc::ClientContext* ctx) {
      return e.lease->LeaseGrant(ctx, req, &rep);
    }));
    if (!rep.error().empty()) return Status::IOError("etcd: grant a lease: " + rep.error());
    return rep.id();
  }

  Status KeepAlive(int64_t lease) override {
    pb::LeaseKeepAliveResponse rep;
    EMBSTORE_RETURN_IF_ERROR(Call("keep lease alive", [&](Endpoint& e, grpc::ClientContext* ctx) {
      auto stream = e.lease->LeaseKeepAlive(ctx);
      pb::LeaseKeepAliveRequest req;
      req.set_id(lease);
      if (!stream->Write(req) || !stream->Read(&rep)) {
        stream->WritesDone();
        const grpc::Status st = stream->Finish();
        return st.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "keep-alive stream closed")
                       : st;
      }
      stream->WritesDone();
      ctx->TryCancel();  // the one answer is all we wait for
      (void)stream->Finish();
      return grpc::Status::OK;
    }));
    if (rep.ttl() <= 0) {
      return Status::NotFound("etcd: lease " + std::to_string(lease) + " has expired");
    }
    return Status::OK();
  }

  Status RevokeLease(int64_t lease) override {
    pb::LeaseRevokeRequest req;
    req.set_id(lease);
    pb::LeaseRevokeResponse rep;
    return Call("revoke a lease", [&](Endpoint& e, grpc::ClientContext* ctx) {
      return e.lease->LeaseRevoke(ctx, req, &rep);
    });
  }

  std::unique_ptr<EtcdWatch> Watch(
      const std::string& prefix, int64_t after_revision,
      std::function<void(const std::vector<EtcdEvent>&, int64_t)> on_events,
      std::function<void(const Status&)> on_error, std::chrono::milliseconds retry) override {
    auto w = std::make_unique<WatchImpl>();
    WatchImpl* raw = w.get();
    raw->thread_ = std::thread([this, raw, prefix, after_revision, on_events, on_error, retry] {
      int64_t seen = after_revision;
      size_t ep = preferred_.load();
      while (!raw->stop_.load()) {
        Endpoint& e = eps_[ep % eps_.size()];
        grpc::ClientContext ctx;
        {
          MutexLock lock(&raw->mu_);
          raw->ctx_ = &ctx;
        }
        if (!raw->stop_.load()) {
          auto stream = e.watch->Watch(&ctx);
          pb::WatchRequest req;
          pb::WatchCreateRequest* create = req.mutable_create_request();
          create->set_key(prefix);
          create->set_range_end(PrefixEnd(prefix));
          create->set_start_revision(seen + 1);
          pb::WatchResponse rep;
          bool created = false;
          if (stream->Write(req)) {
            while (!raw->stop_.load() && stream->Read(&rep)) {
              if (rep.created()) created = true;
              if (rep.canceled()) {
                on_error(Status::IOError("etcd at " + e.url + ": watch of " + prefix +
                                         " cancelled: " + rep.cancel_reason()));
                break;
              }
              if (rep.events_size() == 0) continue;
              std::vector<EtcdEvent> events;
              for (const pb::Event& ev : rep.events()) {
                EtcdEvent out;
                out.deleted = ev.type() == pb::Event::DELETE;
                out.kv = FromPb(ev.kv());
                events.push_back(std::move(out));
                seen = std::max(seen, ev.kv().mod_revision());
              }
              on_events(events, seen);
            }
          }
          ctx.TryCancel();
          const grpc::Status st = stream->Finish();
          if (!raw->stop_.load()) {
            on_error(Status::IOError("etcd at " + e.url + ": watch of " + prefix +
                                     (created ? " broke: " : " failed: ") + st.error_message()));
          }
        }
        {
          MutexLock lock(&raw->mu_);
          raw->ctx_ = nullptr;
        }
        ++ep;  // the next endpoint, after a pause
        for (auto t = std::chrono::milliseconds(0); t < retry && !raw->stop_.load();
             t += std::chrono::milliseconds(10)) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      }
    });
    return w;
  }

 private:
  std::vector<Endpoint> eps_;
  const std::chrono::milliseconds timeout_;
  std::atomic<size_t> preferred_{0};
};

}  // namespace

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    const unsigned char c = static_cast<unsigned char>(end.back());
    if (c < 0xff) {
      end.back() = static_cast<char>(c + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

Result<std::unique_ptr<Etcd>> Etcd::Connect(const std::string& endpoints,
                                            std::chrono::milliseconds timeout) {
  std::vector<Endpoint> eps;
  size_t p = 0;
  while (p <= endpoints.size()) {
    size_t q = endpoints.find(',', p);
    if (q == std::string::npos) q = endpoints.size();
    const std::string url = endpoints.substr(p, q - p);
    p = q + 1;
    if (url.empty()) continue;
    const std::string http = "http://";
    if (url.rfind("https://", 0) == 0) {
      return Status::InvalidArgument("--cluster: '" + url +
                                     "': TLS to etcd is not supported yet; give http:// "
                                     "endpoints (on a trusted network)");
    }
    if (url.rfind(http, 0) != 0 || url.size() == http.size()) {
      return Status::InvalidArgument("--cluster: '" + url +
                                     "' is not an etcd endpoint as etcd writes them "
                                     "(http://HOST:PORT)");
    }
    std::string hostport = url.substr(http.size());
    if (!hostport.empty() && hostport.back() == '/') hostport.pop_back();
    if (hostport.find('/') != std::string::npos || hostport.find(':') == std::string::npos) {
      return Status::InvalidArgument("--cluster: '" + url + "' must be http://HOST:PORT");
    }
    Endpoint e;
    e.url = url;
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    // Each Connect its own connections (watches and keep-alives of different
    // clients in one process do not share a stream's fate).
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    e.channel = grpc::CreateCustomChannel(hostport, grpc::InsecureChannelCredentials(), args);
    e.kv = pb::KV::NewStub(e.channel);
    e.lease = pb::Lease::NewStub(e.channel);
    e.watch = pb::Watch::NewStub(e.channel);
    eps.push_back(std::move(e));
  }
  if (eps.empty()) return Status::InvalidArgument("--cluster: no etcd endpoint given");
  return std::unique_ptr<Etcd>(new EtcdImpl(endpoints, std::move(eps), timeout));
}

}  // namespace embstore::serve
