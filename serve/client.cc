#include "serve/client.h"

#include <grpcpp/grpcpp.h>

#include <fstream>
#include <sstream>

#include "embstore/v1/embstore.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "serve/convert.h"

namespace embstore::serve {
namespace {

Result<std::string> ReadFile(const std::string& path, const std::string& flag) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::NotFound(flag + ": cannot read '" + path + "'");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

Result<DType> ParseDTypeName(const std::string& name) {
  if (std::optional<DType> d = ParseDType(name)) return *d;
  return Status::InvalidArgument("the server named an unknown dtype '" + name + "'");
}

class GrpcClient final : public Client {
 public:
  GrpcClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
      : options_(std::move(options)),
        stub_(v1::Embstore::NewStub(channel)),
        health_(grpc::health::v1::Health::NewStub(channel)) {}

  Result<RemoteResult> EmbeddingBag(const std::string& table, const BagRequest& request,
                                    const QueryOptions& options, uint64_t version) override {
    v1::EmbeddingBagRequest req;
    req.set_table(table);
    req.set_version(version);
    WriteBagRequest(request, options, &req);
    v1::PooledReply reply;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    EMBSTORE_RETURN_IF_ERROR(Check(stub_->EmbeddingBag(&ctx, req, &reply)));
    return Read(reply);
  }
  Result<RemoteResult> BatchedEmbeddingBag(const std::string& table,
                                           const BatchedBagRequest& request,
                                           const QueryOptions& options, uint64_t version) override {
    v1::BatchedEmbeddingBagRequest req;
    req.set_table(table);
    req.set_version(version);
    WriteBatchedRequest(request, options, &req);
    v1::PooledReply reply;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    EMBSTORE_RETURN_IF_ERROR(Check(stub_->BatchedEmbeddingBag(&ctx, req, &reply)));
    return Read(reply);
  }
  Result<std::vector<TableInfo>> ListTables() override {
    v1::ListTablesReply reply;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    EMBSTORE_RETURN_IF_ERROR(Check(stub_->ListTables(&ctx, v1::ListTablesRequest(), &reply)));
    std::vector<TableInfo> out;
    for (const v1::TableMeta& m : reply.tables()) {
      TableInfo t;
      t.name = m.name();
      t.version = m.version();
      t.rows = m.rows();
      t.dim = m.dim();
      EMBSTORE_ASSIGN_OR_RETURN(t.dtype, ParseDTypeName(m.dtype()));
      t.row_stride = m.row_stride();
      t.data_bytes = m.data_bytes();
      t.checksum = m.checksum();
      t.source = m.source();
      t.created_unix = m.created_unix();
      out.push_back(std::move(t));
    }
    return out;
  }
  Result<bool> Healthy(const std::string& service) override {
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse reply;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    EMBSTORE_RETURN_IF_ERROR(Check(health_->Check(&ctx, req, &reply)));
    return reply.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  }

 private:
  void SetDeadline(grpc::ClientContext* ctx) const {
    if (options_.deadline) ctx->set_deadline(std::chrono::system_clock::now() + *options_.deadline);
  }
  Status Check(const grpc::Status& st) const {
    return FromGrpc(st, "the server at " + options_.target);
  }
  static Result<RemoteResult> Read(const v1::PooledReply& reply) {
    RemoteResult r;
    EMBSTORE_ASSIGN_OR_RETURN(r.output, ReadPooledReply(reply));
    r.version = reply.version();
    return r;
  }

  ClientOptions options_;
  std::unique_ptr<v1::Embstore::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

}  // namespace

Client::~Client() = default;

Result<std::shared_ptr<grpc::Channel>> OpenChannel(const ClientOptions& options) {
  if (options.target.empty()) return Status::InvalidArgument("--server must be HOST:PORT");
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return Status::InvalidArgument("--tls-cert and --tls-key go together");
  }
  if (!options.tls_cert.empty() && options.tls_ca.empty()) {
    return Status::InvalidArgument("--tls-cert and --tls-key need --tls-ca (the server's CA)");
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!options.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    EMBSTORE_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFile(options.tls_ca, "--tls-ca"));
    if (!options.tls_cert.empty()) {
      EMBSTORE_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadFile(options.tls_cert, "--tls-cert"));
      EMBSTORE_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadFile(options.tls_key, "--tls-key"));
    }
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);  // the server bounds its replies
  args.SetMaxSendMessageSize(-1);     // ... and its requests
  return grpc::CreateCustomChannel(options.target, creds, args);
}

Result<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  EMBSTORE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, OpenChannel(options));
  return std::unique_ptr<Client>(new GrpcClient(std::move(channel), options));
}

}  // namespace embstore::serve
