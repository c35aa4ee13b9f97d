// Between the gRPC API (proto/embstore/v1/embstore.proto) and the library:
// requests to BagRequest/QueryOptions (spans into the message, no copies),
// library Status to gRPC status and back.
#ifndef EMBSTORE_SERVE_CONVERT_H_
#define EMBSTORE_SERVE_CONVERT_H_

#include <grpcpp/support/status.h>

#include <string>

#include "embstore/fm.h"
#include "embstore/query.h"
#include "embstore/status.h"
#include "embstore/store.h"
#include "embstore/v1/embstore.pb.h"

namespace embstore::serve {

// The library's code as a gRPC code, with the library's message:
// InvalidArgument -> INVALID_ARGUMENT, NotFound -> NOT_FOUND, IOError ->
// UNAVAILABLE, Corruption -> DATA_LOSS, NotSupported -> FAILED_PRECONDITION,
// AlreadyExists -> ALREADY_EXISTS, Internal -> INTERNAL.
grpc::Status ToGrpc(const Status& status);

// A client's view of a failed call: INVALID_ARGUMENT, NOT_FOUND,
// FAILED_PRECONDITION and DATA_LOSS become the library's InvalidArgument,
// NotFound, NotSupported and Corruption with the server's message as it is
// (so a remote query fails as a local one would, exit code included); other
// codes become IOError "<what>: <CODE>: <message>".
Status FromGrpc(const grpc::Status& status, const std::string& what);

// The name of a gRPC code, as in the gRPC docs ("OK", "INVALID_ARGUMENT", ...).
const char* GrpcCodeName(grpc::StatusCode code);

// PoolOptions -> QueryOptions (mode, padding_idx, max_norm, norm_type
// (absent: 2), max_threads); an unknown mode is INVALID_ARGUMENT.
Status ReadPoolOptions(const v1::PoolOptions& in, QueryOptions* out);
void WritePoolOptions(const QueryOptions& in, v1::PoolOptions* out);

// The request as the library's, pointing into `in` (which must outlive it).
Status ReadBagRequest(const v1::EmbeddingBagRequest& in, BagRequest* request,
                      QueryOptions* options);
Status ReadBatchedRequest(const v1::BatchedEmbeddingBagRequest& in, BatchedBagRequest* request,
                          QueryOptions* options);
Status ReadFmRequest(const v1::FmScoreRequest& in, FmModel* model, FmRequest* request,
                     QueryOptions* options);

// The other way, for clients (copies the ids: int32 ids become int64).
void WriteBagRequest(const BagRequest& request, const QueryOptions& options,
                     v1::EmbeddingBagRequest* out);
void WriteBatchedRequest(const BatchedBagRequest& request, const QueryOptions& options,
                         v1::BatchedEmbeddingBagRequest* out);

void WriteTableMeta(const TableInfo& info, v1::TableMeta* out);

// A reply's values as floats (the shape's product of them), or
// InvalidArgument when the reply is malformed.
Result<PooledOutput> ReadPooledReply(const v1::PooledReply& reply);

}  // namespace embstore::serve

#endif  // EMBSTORE_SERVE_CONVERT_H_
