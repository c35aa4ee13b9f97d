#include "serve/convert.h"

#include <bit>
#include <cstring>

namespace embstore::serve {
namespace {

static_assert(std::endian::native == std::endian::little,
              "PooledReply.values is little-endian float32, copied as it is in memory");

template <typename T>
std::span<const T> Span(const google::protobuf::RepeatedField<T>& field) {
  return {field.data(), static_cast<size_t>(field.size())};
}

}  // namespace

grpc::Status ToGrpc(const Status& status) {
  using C = grpc::StatusCode;
  C code = C::INTERNAL;
  switch (status.code()) {
    case Status::Code::kOk:
      return grpc::Status::OK;
    case Status::Code::kInvalidArgument:
      code = C::INVALID_ARGUMENT;
      break;
    case Status::Code::kNotFound:
      code = C::NOT_FOUND;
      break;
    case Status::Code::kAlreadyExists:
      code = C::ALREADY_EXISTS;
      break;
    case Status::Code::kNotSupported:
      code = C::FAILED_PRECONDITION;
      break;
    case Status::Code::kIOError:
      code = C::UNAVAILABLE;
      break;
    case Status::Code::kCorruption:
      code = C::DATA_LOSS;
      break;
    case Status::Code::kInternal:
      code = C::INTERNAL;
      break;
  }
  return grpc::Status(code, status.message());
}

const char* GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    default:
      return "UNKNOWN";
  }
}

Status FromGrpc(const grpc::Status& status, const std::string& what) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return Status::OK();
    case grpc::StatusCode::INVALID_ARGUMENT:
      return Status::InvalidArgument(status.error_message());
    case grpc::StatusCode::NOT_FOUND:
      return Status::NotFound(status.error_message());
    case grpc::StatusCode::FAILED_PRECONDITION:  // the library's NotSupported
      return Status::NotSupported(status.error_message());
    case grpc::StatusCode::DATA_LOSS:  // the library's Corruption
      return Status::Corruption(status.error_message());
    default:
      return Status::IOError(what + ": " + GrpcCodeName(status.error_code()) + ": " +
                             status.error_message());
  }
}

Status ReadPoolOptions(const v1::PoolOptions& in, QueryOptions* out) {
  switch (in.mode()) {
    case v1::POOLING_MODE_MEAN:
      out->mode = PoolingMode::kMean;
      break;
    case v1::POOLING_MODE_SUM:
      out->mode = PoolingMode::kSum;
      break;
    case v1::POOLING_MODE_MAX:
      out->mode = PoolingMode::kMax;
      break;
    default:
      return Status::InvalidArgument("mode must be POOLING_MODE_SUM, _MEAN or _MAX (got " +
                                     std::to_string(static_cast<int>(in.mode())) + ")");
  }
  if (in.has_padding_idx()) out->padding_idx = in.padding_idx();
  if (in.has_max_norm()) out->max_norm = in.max_norm();
  out->norm_type = in.has_norm_type() ? in.norm_type() : 2.0;
  if (in.max_threads() < 0) {
    return Status::InvalidArgument("max_threads must be >= 0 (got " +
                                   std::to_string(in.max_threads()) + ")");
  }
  out->max_threads = in.max_threads();
  return Status::OK();
}

void WritePoolOptions(const QueryOptions& in, v1::PoolOptions* out) {
  switch (in.mode) {
    case PoolingMode::kMean:
      out->set_mode(v1::POOLING_MODE_MEAN);
      break;
    case PoolingMode::kSum:
      out->set_mode(v1::POOLING_MODE_SUM);
      break;
    case PoolingMode::kMax:
      out->set_mode(v1::POOLING_MODE_MAX);
      break;
  }
  if (in.padding_idx) out->set_padding_idx(*in.padding_idx);
  if (in.max_norm) out->set_max_norm(*in.max_norm);
  out->set_norm_type(in.norm_type);
  out->set_max_threads(in.max_threads);
}

Status ReadBagRequest(const v1::EmbeddingBagRequest& in, BagRequest* request,
                      QueryOptions* options) {
  EMBSTORE_RETURN_IF_ERROR(ReadPoolOptions(in.options(), options));
  options->include_last_offset = in.include_last_offset();
  request->indices = Span(in.indices());
  request->indices_shape.assign(in.indices_shape().begin(), in.indices_shape().end());
  if (request->indices_shape.empty()) request->indices_shape = {in.indices_size()};
  if (in.has_offsets()) request->offsets = IndexArray(Span(in.offsets().values()));
  if (in.has_per_sample_weights()) request->weights = Span(in.per_sample_weights().values());
  return Status::OK();
}

Status ReadBatchedRequest(const v1::BatchedEmbeddingBagRequest& in, BatchedBagRequest* request,
                          QueryOptions* options) {
  EMBSTORE_RETURN_IF_ERROR(ReadPoolOptions(in.options(), options));
  request->indices = Span(in.indices());
  request->ends = Span(in.ends());
  request->batch = in.batch();
  request->items = in.items();
  request->bags_per_sample = in.bags_per_sample();
  if (in.has_per_sample_weights()) request->weights = Span(in.per_sample_weights().values());
  return Status::OK();
}

Status ReadFmRequest(const v1::FmScoreRequest& in, FmModel* model, FmRequest* request,
                     QueryOptions* options) {
  switch (in.model()) {
    case v1::FM_MODEL_FM:
      *model = FmModel::kFm;
      break;
    case v1::FM_MODEL_FFM:
      *model = FmModel::kFfm;
      break;
    default:
      return Status::InvalidArgument("model must be FM_MODEL_FM or FM_MODEL_FFM (got " +
                                     std::to_string(static_cast<int>(in.model())) + ")");
  }
  EMBSTORE_RETURN_IF_ERROR(ReadPoolOptions(in.options(), options));
  options->mode = PoolingMode::kSum;  // FM pools by (weighted) sum
  BatchedBagRequest& bags = request->bags;
  bags.indices = Span(in.indices());
  bags.ends = Span(in.ends());
  bags.batch = in.batch();
  bags.items = in.items();
  bags.bags_per_sample = in.bags_per_sample();
  if (in.has_per_sample_weights()) bags.weights = Span(in.per_sample_weights().values());
  if (in.has_fields()) request->fields = IndexArray(Span(in.fields().values()));
  request->num_fields = in.num_fields();
  request->bias = in.bias();
  return Status::OK();
}

namespace {

void CopyIds(const IndexArray& ids, google::protobuf::RepeatedField<int64_t>* out) {
  out->Resize(static_cast<int>(ids.size), 0);
  int64_t* dst = out->mutable_data();
  if (ids.type == IndexType::kInt64) {
    if (ids.size > 0) {
      std::memcpy(dst, ids.data, static_cast<size_t>(ids.size) * sizeof(int64_t));
    }
  } else {
    const auto* src = static_cast<const int32_t*>(ids.data);
    for (int64_t i = 0; i < ids.size; ++i) dst[i] = src[i];
  }
}

void CopyWeights(std::span<const float> w, v1::FloatList* out) {
  out->mutable_values()->Resize(static_cast<int>(w.size()), 0.0f);
  if (!w.empty()) std::memcpy(out->mutable_values()->mutable_data(), w.data(), w.size_bytes());
}

}  // namespace

void WriteBagRequest(const BagRequest& request, const QueryOptions& options,
                     v1::EmbeddingBagRequest* out) {
  CopyIds(request.indices, out->mutable_indices());
  if (request.indices_shape.size() == 2) {
    out->add_indices_shape(request.indices_shape[0]);
    out->add_indices_shape(request.indices_shape[1]);
  } else if (request.indices_shape.size() > 2) {
    for (int64_t d : request.indices_shape) out->add_indices_shape(d);
  }
  if (request.offsets) CopyIds(*request.offsets, out->mutable_offsets()->mutable_values());
  if (request.weights) CopyWeights(*request.weights, out->mutable_per_sample_weights());
  WritePoolOptions(options, out->mutable_options());
  out->set_include_last_offset(options.include_last_offset);
}

void WriteBatchedRequest(const BatchedBagRequest& request, const QueryOptions& options,
                         v1::BatchedEmbeddingBagRequest* out) {
  CopyIds(request.indices, out->mutable_indices());
  CopyIds(request.ends, out->mutable_ends());
  out->set_batch(request.batch);
  out->set_items(request.items);
  out->set_bags_per_sample(request.bags_per_sample);
  if (request.weights) CopyWeights(*request.weights, out->mutable_per_sample_weights());
  WritePoolOptions(options, out->mutable_options());
}

void WriteTableMeta(const TableInfo& info, v1::TableMeta* out) {
  out->set_name(info.name);
  out->set_version(info.version);
  out->set_rows(info.rows);
  out->set_dim(info.dim);
  out->set_dtype(DTypeName(info.dtype));
  out->set_row_stride(info.row_stride);
  out->set_data_bytes(info.data_bytes);
  out->set_checksum(info.checksum);
  out->set_source(info.source);
  out->set_created_unix(info.created_unix);
}

Result<PooledOutput> ReadPooledReply(const v1::PooledReply& reply) {
  PooledOutput out;
  int64_t count = 1;
  for (int64_t d : reply.shape()) {
    if (d < 0 || (d > 0 && count > (int64_t{1} << 40) / d)) {
      return Status::InvalidArgument("the server's reply has a bad shape");
    }
    count *= d;
    out.shape.push_back(d);
  }
  if (reply.shape_size() == 0 ||
      static_cast<uint64_t>(count) * sizeof(float) != reply.values().size()) {
    return Status::InvalidArgument("the server's reply has " +
                                   std::to_string(reply.values().size()) +
                                   " bytes of values for its shape");
  }
  out.values.resize(static_cast<size_t>(count));
  if (count > 0) std::memcpy(out.values.data(), reply.values().data(), reply.values().size());
  return out;
}

}  // namespace embstore::serve
