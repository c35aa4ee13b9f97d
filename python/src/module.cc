// embstore._embstore: the Python face of the library (python/embstore/ is the
// package around it). Store, Table (a snapshot of one version), TableInfo,
// fm_score and inspect; torch's argument names and defaults for pooling.
//
// The GIL is released while the library works (planning, pooling, imports,
// verify), so Python threads query concurrently. Results are new float32
// numpy arrays (or the caller's `out`); Table.numpy() is a read-only view of
// the mapped rows themselves.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "codec/row_codec.h"
#include "embstore/checkpoint.h"
#include "embstore/fm.h"
#include "embstore/query.h"
#include "embstore/store.h"
#include "embstore/version.h"
#include "engine/kernels_ref.h"
#include "engine/partial.h"
#include "engine/plan.h"
#include "engine/pool.h"
#include "python/src/convert.h"

namespace embstore::python {
namespace {

using py::arg;

// A request read from Python arguments as Table.embedding_bag (or
// batched_embedding_bag) reads them and planned against `table`: the
// library's checks and messages. The arrays own what the plan points into.
struct PlannedBags {
  IdArray ids;
  std::optional<IdArray> offsets;  // or the bag ends
  std::optional<WeightArray> weights;
  engine::BagPlan plan;
  std::vector<const py::array*> inputs() const {
    return {&ids.array, offsets ? &offsets->array : nullptr, weights ? &weights->array : nullptr};
  }
};

// Runs `plan` (the library's planning) with the GIL released; its error
// raised as the Python exception.
template <class F>
engine::BagPlan PlanWithoutGil(const F& plan) {
  Result<engine::BagPlan> result = Status::Internal("not planned");
  {
    py::gil_scoped_release unlocked;
    result = plan();
  }
  Check(result.status());
  return std::move(result).value();
}

PlannedBags PlanBagsPy(const TableView& table, py::handle input, py::handle offsets,
                       py::handle per_sample_weights, const QueryOptions& options) {
  PlannedBags p;
  p.ids = ToIds(input, "input");
  if (p.ids.shape.size() != 1 && p.ids.shape.size() != 2) {
    RaiseValueError("input must be 1-D (with offsets) or 2-D [B, N], not " +
                    std::to_string(p.ids.shape.size()) + "-D");
  }
  BagRequest request;
  request.indices = p.ids.view;
  request.indices_shape = p.ids.shape;
  if (!offsets.is_none()) {
    p.offsets = ToIds(offsets, "offsets");
    if (p.offsets->shape.size() != 1) RaiseValueError("offsets must be 1-D");
    request.offsets = p.offsets->view;
  }
  p.weights = OptionalWeights(per_sample_weights, p.ids.shape);
  if (p.weights) request.weights = p.weights->values;
  p.plan = PlanWithoutGil([&] { return engine::PlanBags(table, request, options); });
  return p;
}

PlannedBags PlanBatchedPy(const TableView& table, py::handle input, py::handle bag_ends,
                          py::handle per_sample_weights, const QueryOptions& options) {
  BatchedIds b = ToBatchedIds(input, bag_ends);
  BatchedBagRequest request;
  request.indices = b.ids.view;
  request.ends = b.ends.view;
  request.batch = b.batch();
  request.items = b.items();
  request.bags_per_sample = b.bags_per_sample();
  PlannedBags p;
  p.weights = OptionalWeights(per_sample_weights, b.ids.shape);
  if (p.weights) request.weights = p.weights->values;
  p.plan = PlanWithoutGil([&] { return engine::PlanBatchedBags(table, request, options); });
  p.ids = std::move(b.ids);
  p.offsets = std::move(b.ends);
  return p;
}

// One version of one table: a snapshot, valid however the table changes.
class Table {
 public:
  explicit Table(TableSnapshot snapshot) : snap_(std::move(snapshot)) {}

  const TableInfo& info() const { return snap_.info(); }
  TableView view() const { return snap_.view(); }

  py::array EmbeddingBag(py::handle input, py::handle offsets, py::handle max_norm,
                         double norm_type, const std::string& mode, py::handle per_sample_weights,
                         bool include_last_offset, py::handle padding_idx, py::handle out,
                         bool reference) const {
    const QueryOptions options =
        ToQueryOptions(mode, max_norm, norm_type, padding_idx, include_last_offset);
    const TableView table = view();
    const PlannedBags p = PlanBagsPy(table, input, offsets, per_sample_weights, options);
    return Pool(table, p.plan, options, out, reference, p.inputs());
  }

  py::array BatchedEmbeddingBag(py::handle input, py::handle bag_ends,
                                py::handle per_sample_weights, const std::string& mode,
                                py::handle padding_idx, py::handle max_norm, double norm_type,
                                py::handle out, bool reference) const {
    const QueryOptions options = ToQueryOptions(mode, max_norm, norm_type, padding_idx, false);
    const TableView table = view();
    const PlannedBags p = PlanBatchedPy(table, input, bag_ends, per_sample_weights, options);
    return Pool(table, p.plan, options, out, reference, p.inputs());
  }

  // The rows themselves, read-only, for f32 and f16 tables.
  py::array Numpy(py::handle self) const {
    const TableView v = view();
    if (v.dtype != DType::kF32 && v.dtype != DType::kF16) {
      RaiseValueError("table '" + info().name + "' is stored as " + DTypeName(v.dtype) +
                      ", which numpy cannot view: use .dequantize(), which makes a float32 copy");
    }
    const py::dtype dt = v.dtype == DType::kF32 ? py::dtype::of<float>() : py::dtype("float16");
    const auto elem = static_cast<py::ssize_t>(dt.itemsize());
    py::array a(dt, {static_cast<py::ssize_t>(v.rows), static_cast<py::ssize_t>(v.dim)},
                {static_cast<py::ssize_t>(v.row_stride), elem}, v.data, self);
    py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    return a;
  }

  // Every row decoded to float32: a new [rows, dim] array.
  py::array_t<float> Dequantize() const {
    const TableView v = view();
    py::array_t<float> out({v.rows, v.dim});
    float* dst = out.mutable_data();
    {
      py::gil_scoped_release unlocked;
      for (int64_t r = 0; r < v.rows; ++r)
        codec::DecodeRow(v.Row(r), v.dim, v.dtype, dst + r * v.dim);
    }
    return out;
  }

 private:
  // Pools with the fast kernels, or with their plain reference twin
  // (engine/kernels_ref.h; the tests compare the two through Python).
  py::array Pool(const TableView& table, const engine::BagPlan& plan, const QueryOptions& options,
                 py::handle out, bool reference,
                 const std::vector<const py::array*>& inputs) const {
    py::array_t<float> result = OutputArray(out, plan.OutputShape(table.dim));
    if (!out.is_none()) CheckNoOverlap(result, inputs);
    const std::span<float> values = Values(result);
    Status st;
    {
      py::gil_scoped_release unlocked;
      st = reference ? engine::PoolPlanRef(table, plan, options, values)
                     : engine::PoolPlan(table, plan, options, values);
    }
    Check(st);
    return result;
  }

  TableSnapshot snap_;
};

// embstore.Cluster's arithmetic (python/embstore/cluster.py does the
// routing and the calls): a request checked as the local Table checks it
// (same exceptions, same messages) against a cluster table's shape, split by
// row shard (engine/partial.h), and the nodes' partials merged exactly as
// the C++ cluster client merges them.
class ShardedRequest {
 public:
  ShardedRequest(PlannedBags planned, int64_t dim, PoolingMode mode,
                 const std::vector<int64_t>& begins)
      : planned_(std::move(planned)), dim_(dim), mode_(mode) {
    py::gil_scoped_release unlocked;
    parts_ = engine::SplitByShard(planned_.plan, begins);
  }

  std::vector<int64_t> shape() const { return planned_.plan.OutputShape(dim_); }
  int64_t bags() const { return planned_.plan.num_bags(); }
  size_t shards() const { return parts_.size(); }
  bool weighted() const { return planned_.plan.weights != nullptr; }

  // Shard s's share: (ids, offsets, weights or None) as new arrays, or None
  // when no bag has an id there.
  py::object Part(size_t s) const {
    if (s >= parts_.size())
      throw py::index_error("shard " + std::to_string(s) + " of " + std::to_string(parts_.size()));
    const engine::ShardPart& p = parts_[s];
    if (!p.any) return py::none();
    auto copy = [](const auto& v) {
      using T = typename std::decay_t<decltype(v)>::value_type;
      py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
      if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
      return a;
    };
    return py::make_tuple(copy(p.ids), copy(p.offsets),
                          weighted() ? py::object(copy(p.weights)) : py::object(py::none()));
  }

  // partials[s]: None for a shard without ids, else (values, counts,
  // max_positions, nan_cells, nan_bits): little-endian float32 bytes, int64
  // counts, int32 bytes (MAX; b"" otherwise), int64 cells, uint32 bits.
  py::array Merge(const py::list& partials, py::handle out) const {
    if (partials.size() != parts_.size()) {
      throw py::value_error(std::to_string(partials.size()) + " partials for " +
                            std::to_string(parts_.size()) + " shards");
    }
    struct Held {
      std::vector<float> values;
      std::vector<int64_t> counts, nan_cells;
      std::vector<int32_t> positions;
      std::vector<uint32_t> nan_bits;
    };
    std::vector<Held> held(parts_.size());
    std::vector<engine::Partial> views(parts_.size());
    for (size_t s = 0; s < parts_.size(); ++s) {
      if (!parts_[s].any) continue;
      const py::tuple t = partials[s].cast<py::tuple>();
      if (t.size() != 5)
        throw py::value_error("a partial is (values, counts, positions, cells, bits)");
      Held& h = held[s];
      CopyBytes(t[0], &h.values);
      CopyBytes(t[2], &h.positions);
      h.counts = t[1].cast<std::vector<int64_t>>();
      h.nan_cells = t[3].cast<std::vector<int64_t>>();
      h.nan_bits = t[4].cast<std::vector<uint32_t>>();
      views[s] = engine::Partial{h.values, h.counts, h.positions, h.nan_cells, h.nan_bits};
    }
    py::array_t<float> result = OutputArray(out, shape());
    if (!out.is_none()) CheckNoOverlap(result, planned_.inputs());
    const std::span<float> values = Values(result);
    Status st;
    {
      py::gil_scoped_release unlocked;
      st = engine::MergePartials(parts_, views, bags(), dim_, mode_, values);
    }
    if (!st.ok()) throw py::value_error("a node's partial: " + st.message());
    return result;
  }

 private:
  template <class T>
  static void CopyBytes(py::handle obj, std::vector<T>* dst) {
    const py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request();
    const auto bytes = static_cast<size_t>(info.size * info.itemsize);
    if (bytes % sizeof(T) != 0) throw py::value_error("a partial's bytes are not whole values");
    dst->resize(bytes / sizeof(T));
    if (bytes > 0) std::memcpy(dst->data(), info.ptr, bytes);
  }

  PlannedBags planned_;
  int64_t dim_;
  PoolingMode mode_;
  std::vector<engine::ShardPart> parts_;
};

// The shape a cluster manifest gives a table, as a view with no rows to
// read: planning checks ids against `rows` and never reads a row.
TableView ShapeOnly(int64_t rows, int64_t dim, const std::string& dtype, const std::string& name) {
  static const uint8_t kNoRows[64] = {};
  const std::optional<DType> d = ParseDType(dtype);
  if (!d) throw py::value_error("unknown dtype '" + dtype + "'");
  if (rows < 0 || dim < 1) throw py::value_error("a table shape needs rows >= 0 and dim >= 1");
  TableView v;
  v.data = kNoRows;
  v.rows = rows;
  v.dim = dim;
  v.dtype = *d;
  v.row_stride = RowStrideBytes(*d, dim);
  v.name = name;
  return v;
}

std::vector<int64_t> ShardBegins(const std::vector<int64_t>& begins, int64_t rows) {
  if (begins.empty() || begins[0] != 0) throw py::value_error("shard_begins must start at 0");
  for (size_t i = 1; i < begins.size(); ++i) {
    if (begins[i] < begins[i - 1] || begins[i] > rows)
      throw py::value_error("shard_begins must be increasing, within the rows");
  }
  return begins;
}

class PyStore {
 public:
  PyStore(const std::string& path, bool create) {
    StoreOptions options;
    options.create_if_missing = create;
    Result<std::unique_ptr<Store>> s = Status::Internal("not opened");
    {
      py::gil_scoped_release unlocked;
      s = Store::Open(path, options);
    }
    Check(s.status(), /*missing_is_file=*/true);
    store_ = std::move(s).value();
  }

  std::vector<std::string> Tables() {
    Result<std::vector<TableInfo>> list = Status::Internal("not listed");
    {
      py::gil_scoped_release unlocked;
      list = store_->ListTables();
    }
    Check(list.status());
    std::vector<std::string> names;
    for (const TableInfo& t : *list) names.push_back(t.name);
    return names;
  }

  TableInfo Info(const std::string& name) {
    Result<TableInfo> info = Status::Internal("not read");
    {
      py::gil_scoped_release unlocked;
      info = store_->GetInfo(name);
    }
    Check(info.status());
    return *info;
  }

  TableInfo ImportFile(const std::string& name, const std::string& path, py::handle tensor,
                       py::handle dtype, bool replace) {
    ImportOptions options;
    if (!tensor.is_none()) options.tensor_key = tensor.cast<std::string>();
    if (!dtype.is_none()) {
      const std::string d = dtype.cast<std::string>();
      options.dtype = ParseDType(d);
      if (!options.dtype) {
        RaiseValueError("dtype must be 'f32', 'f16', 'bf16' or 'int8', not '" + d + "'");
      }
    }
    options.replace = replace;
    if (::access(path.c_str(), F_OK) != 0) {
      Raise(Status::NotFound("no such file: '" + path + "'"), /*missing_is_file=*/true);
    }
    Result<TableInfo> info = Status::Internal("not imported");
    {
      py::gil_scoped_release unlocked;
      info = store_->ImportFile(name, path, options);
    }
    Check(info.status());
    return *info;
  }

  // Writes wait for another writer (a thread's import, another process):
  // without the GIL.
  void Drop(const std::string& name) {
    Status st;
    {
      py::gil_scoped_release unlocked;
      st = store_->DropTable(name);
    }
    Check(st);
  }

  void Verify(py::handle name) {
    std::vector<std::string> names;
    if (name.is_none()) {
      Result<std::vector<TableEntry>> entries = Status::Internal("not listed");
      {
        py::gil_scoped_release unlocked;
        entries = store_->ListEntries();
      }
      Check(entries.status());
      for (const TableEntry& e : *entries) names.push_back(e.name);
    } else {
      names.push_back(name.cast<std::string>());
    }
    std::string problems;
    Status first;
    {
      py::gil_scoped_release unlocked;
      for (const std::string& n : names) {
        const Status st = store_->VerifyTable(n);
        if (st.ok()) continue;
        if (st.code() != Status::Code::kCorruption) {  // unknown table, I/O: as it is
          first = st;
          break;
        }
        problems += (problems.empty() ? "" : "; ") + st.message();
      }
    }
    Check(first);
    if (!problems.empty()) Raise(Status::Corruption(problems));
  }

  void Refresh() {
    Status st;
    {
      py::gil_scoped_release unlocked;
      st = store_->Refresh();
    }
    Check(st);
  }

  Table GetTable(const std::string& name) {
    Result<TableSnapshot> snap = Status::Internal("not opened");
    {
      py::gil_scoped_release unlocked;
      snap = store_->GetSnapshot(name);
    }
    Check(snap.status());
    return Table(std::move(snap).value());
  }

  Store& store() { return *store_; }

 private:
  std::unique_ptr<Store> store_;
};

py::array_t<float> FmScorePy(PyStore& store, const std::string& model, const std::string& vectors,
                             const std::string& biases, double bias, py::handle input,
                             py::handle bag_ends, py::handle per_sample_weights, py::handle fields,
                             int64_t num_fields) {
  FmModel m;
  if (model == "fm") {
    m = FmModel::kFm;
  } else if (model == "ffm") {
    m = FmModel::kFfm;
  } else {
    RaiseValueError("model must be 'fm' or 'ffm', not '" + model + "'");
  }
  Table v = store.GetTable(vectors);
  Table b = store.GetTable(biases);
  const BatchedIds bi = ToBatchedIds(input, bag_ends);
  FmRequest request;
  request.bags.indices = bi.ids.view;
  request.bags.ends = bi.ends.view;
  request.bags.batch = bi.batch();
  request.bags.items = bi.items();
  request.bags.bags_per_sample = bi.bags_per_sample();
  request.bias = bias;
  request.num_fields = num_fields;
  const std::optional<WeightArray> weights = OptionalWeights(per_sample_weights, bi.ids.shape);
  if (weights) request.bags.weights = weights->values;
  std::optional<IdArray> f;
  if (!fields.is_none()) {
    f = ToIds(fields, "fields");
    if (f->shape != bi.ends.shape) RaiseValueError("fields must have the shape of bag_ends");
    request.fields = f->view;
  }
  py::array_t<float> out(std::vector<int64_t>{request.bags.batch});
  const std::span<float> values = Values(out);
  const TableView vv = v.view(), bv = b.view();
  Status st;
  {
    py::gil_scoped_release unlocked;
    QueryOptions options;
    options.mode = PoolingMode::kSum;
    st = FmScore(m, vv, bv, request, options, values);
  }
  Check(st);
  return out;
}

// Table.embedding_bag / batched_embedding_bag, fast or reference.
template <bool kReference>
auto EmbeddingBagMethod() {
  return [](const Table& t, py::handle input, py::handle offsets, py::handle max_norm,
            double norm_type, const std::string& mode, py::handle per_sample_weights,
            bool include_last_offset, py::handle padding_idx, py::handle out) {
    return t.EmbeddingBag(input, offsets, max_norm, norm_type, mode, per_sample_weights,
                          include_last_offset, padding_idx, out, kReference);
  };
}
template <bool kReference>
auto BatchedMethod() {
  return [](const Table& t, py::handle input, py::handle bag_ends, py::handle per_sample_weights,
            const std::string& mode, py::handle padding_idx, py::handle max_norm, double norm_type,
            py::handle out) {
    return t.BatchedEmbeddingBag(input, bag_ends, per_sample_weights, mode, padding_idx, max_norm,
                                 norm_type, out, kReference);
  };
}

py::list Inspect(const std::string& path) {
  if (::access(path.c_str(), F_OK) != 0) {
    Raise(Status::NotFound("no such file: '" + path + "'"), /*missing_is_file=*/true);
  }
  Result<std::vector<TensorEntry>> entries = Status::Internal("not read");
  {
    py::gil_scoped_release unlocked;
    entries = InspectCheckpoint(path);
  }
  Check(entries.status());
  py::list out;
  for (const TensorEntry& e : *entries) {
    py::tuple shape(e.shape.size());
    for (size_t i = 0; i < e.shape.size(); ++i) shape[i] = e.shape[i];
    out.append(py::make_tuple(e.key, e.dtype, shape));
  }
  return out;
}

}  // namespace
}  // namespace embstore::python

PYBIND11_MODULE(_embstore, m) {
  using namespace embstore;          // NOLINT(google-build-using-namespace)
  using namespace embstore::python;  // NOLINT(google-build-using-namespace)
  using py::arg;
  m.doc() = "embstore: embedding tables served from memory-mapped files (the C++ extension)";
  m.attr("__version__") = Version().string;
  RegisterExceptions(m);

  py::class_<TableInfo>(m, "TableInfo", "What the catalog knows of one table version.")
      .def_readonly("name", &TableInfo::name)
      .def_readonly("rows", &TableInfo::rows)
      .def_readonly("dim", &TableInfo::dim)
      .def_property_readonly("dtype", [](const TableInfo& t) { return DTypeName(t.dtype); })
      .def_readonly("version", &TableInfo::version)
      .def_readonly("bytes", &TableInfo::file_bytes, "bytes of the table file")
      .def_readonly("data_bytes", &TableInfo::data_bytes)
      .def_readonly("row_stride", &TableInfo::row_stride)
      .def_readonly("checksum", &TableInfo::checksum, "xxh64 of the data region")
      .def_readonly("source", &TableInfo::source)
      .def_readonly("file", &TableInfo::file)
      .def_readonly("created", &TableInfo::created_unix, "seconds since the epoch")
      .def("__repr__", [](const TableInfo& t) {
        return "TableInfo(name='" + t.name + "', rows=" + std::to_string(t.rows) +
               ", dim=" + std::to_string(t.dim) + ", dtype='" + DTypeName(t.dtype) +
               "', version=" + std::to_string(t.version) + ")";
      });

  py::class_<Table>(m, "Table",
                    "One version of one table: a snapshot. It keeps reading its version "
                    "however the table is replaced or dropped later.")
      .def_property_readonly("name", [](const Table& t) { return t.info().name; })
      .def_property_readonly(
          "shape", [](const Table& t) { return py::make_tuple(t.info().rows, t.info().dim); })
      .def_property_readonly("dtype", [](const Table& t) { return DTypeName(t.info().dtype); })
      .def_property_readonly("version", [](const Table& t) { return t.info().version; })
      .def_property_readonly("info", [](const Table& t) { return t.info(); })
      .def("embedding_bag", EmbeddingBagMethod<false>(), arg("input"), arg("offsets") = py::none(),
           arg("max_norm") = py::none(), arg("norm_type") = 2.0, arg("mode") = "mean",
           arg("per_sample_weights") = py::none(), arg("include_last_offset") = false,
           arg("padding_idx") = py::none(), arg("out") = py::none(),
           "torch.nn.functional.embedding_bag over this table: a float32 [B, dim] array.\n"
           "max_norm never modifies the table; weighted mean and max are allowed.")
      .def("_embedding_bag_reference", EmbeddingBagMethod<true>(), arg("input"),
           arg("offsets") = py::none(), arg("max_norm") = py::none(), arg("norm_type") = 2.0,
           arg("mode") = "mean", arg("per_sample_weights") = py::none(),
           arg("include_last_offset") = false, arg("padding_idx") = py::none(),
           arg("out") = py::none(), "embedding_bag with the plain reference kernels (tests).")
      .def("batched_embedding_bag", BatchedMethod<false>(), arg("input"), arg("bag_ends"),
           arg("per_sample_weights") = py::none(), arg("mode") = "sum",
           arg("padding_idx") = py::none(), arg("max_norm") = py::none(), arg("norm_type") = 2.0,
           arg("out") = py::none(),
           "Batched bags with inclusive end offsets: input [B, N], bag_ends [B, K] -> "
           "[B, K, dim]. Bag m of sample b holds items k with bag_ends[b, m-1] < k <= "
           "bag_ends[b, m].")
      .def("_batched_embedding_bag_reference", BatchedMethod<true>(), arg("input"), arg("bag_ends"),
           arg("per_sample_weights") = py::none(), arg("mode") = "sum",
           arg("padding_idx") = py::none(), arg("max_norm") = py::none(), arg("norm_type") = 2.0,
           arg("out") = py::none(), "batched_embedding_bag with the reference kernels (tests).")
      .def(
          "numpy", [](py::object self) { return self.cast<const Table&>().Numpy(self); },
          "The rows as a read-only numpy view [rows, dim] of the mapped file (no copy), for "
          "f32 and f16 tables.")
      .def("dequantize", &Table::Dequantize, "Every row as float32: a new [rows, dim] array.")
      .def("__repr__", [](const Table& t) {
        return "Table('" + t.info().name + "', shape=(" + std::to_string(t.info().rows) + ", " +
               std::to_string(t.info().dim) + "), dtype='" + DTypeName(t.info().dtype) +
               "', version=" + std::to_string(t.info().version) + ")";
      });

  py::class_<PyStore>(m, "Store",
                      "A store directory. Many processes may read it; one writes at a time. "
                      "Versions another process publishes appear within 100 ms, or at once "
                      "after refresh().")
      .def(py::init<const std::string&, bool>(), arg("path"), arg("create") = true)
      .def("tables", &PyStore::Tables, "The names of the tables.")
      .def("info", &PyStore::Info, arg("name"),
           "The current version's TableInfo (rows, dim, dtype, version, bytes, checksum, "
           "source).")
      .def("import_file", &PyStore::ImportFile, arg("name"), arg("path"),
           arg("tensor") = py::none(), arg("dtype") = py::none(), arg("replace") = false,
           "Imports one tensor of a checkpoint (.npy, .npz, .safetensors, .pt) as table "
           "`name`, published atomically; returns its TableInfo.")
      .def("drop", &PyStore::Drop, arg("name"))
      .def("verify", &PyStore::Verify, arg("name") = py::none(),
           "Recomputes checksums (of one table, or all); raises CorruptionError naming what is "
           "damaged.")
      .def("refresh", &PyStore::Refresh, "Reads the catalog now (another process's writes).")
      .def("table", &PyStore::GetTable, arg("name"),
           "The current version of `name` as a Table (a snapshot).");

  py::class_<ShardedRequest>(m, "_ShardedRequest",
                             "A request split by row shard, for embstore.Cluster (internal).")
      .def_property_readonly("shape", &ShardedRequest::shape)
      .def_property_readonly("bags", &ShardedRequest::bags)
      .def_property_readonly("shards", &ShardedRequest::shards)
      .def("part", &ShardedRequest::Part, arg("shard"))
      .def("merge", &ShardedRequest::Merge, arg("partials"), arg("out") = py::none());
  m.def(
      "_shard_bags",
      [](int64_t rows, int64_t dim, const std::string& dtype, const std::string& name,
         const std::vector<int64_t>& shard_begins, py::handle input, py::handle offsets,
         py::handle max_norm, double norm_type, const std::string& mode,
         py::handle per_sample_weights, bool include_last_offset, py::handle padding_idx) {
        const TableView view = ShapeOnly(rows, dim, dtype, name);
        const QueryOptions options =
            ToQueryOptions(mode, max_norm, norm_type, padding_idx, include_last_offset);
        return ShardedRequest(PlanBagsPy(view, input, offsets, per_sample_weights, options), dim,
                              options.mode, ShardBegins(shard_begins, rows));
      },
      arg("rows"), arg("dim"), arg("dtype"), arg("name"), arg("shard_begins"), arg("input"),
      arg("offsets") = py::none(), arg("max_norm") = py::none(), arg("norm_type") = 2.0,
      arg("mode") = "mean", arg("per_sample_weights") = py::none(),
      arg("include_last_offset") = false, arg("padding_idx") = py::none(),
      "embedding_bag's request checked against a table's shape and split by row shard.");
  m.def(
      "_shard_batched_bags",
      [](int64_t rows, int64_t dim, const std::string& dtype, const std::string& name,
         const std::vector<int64_t>& shard_begins, py::handle input, py::handle bag_ends,
         py::handle per_sample_weights, const std::string& mode, py::handle padding_idx,
         py::handle max_norm, double norm_type) {
        const TableView view = ShapeOnly(rows, dim, dtype, name);
        const QueryOptions options = ToQueryOptions(mode, max_norm, norm_type, padding_idx, false);
        return ShardedRequest(PlanBatchedPy(view, input, bag_ends, per_sample_weights, options),
                              dim, options.mode, ShardBegins(shard_begins, rows));
      },
      arg("rows"), arg("dim"), arg("dtype"), arg("name"), arg("shard_begins"), arg("input"),
      arg("bag_ends"), arg("per_sample_weights") = py::none(), arg("mode") = "sum",
      arg("padding_idx") = py::none(), arg("max_norm") = py::none(), arg("norm_type") = 2.0,
      "batched_embedding_bag's request checked against a table's shape and split by row shard.");
  m.def("fm_score", &FmScorePy, arg("store"), py::kw_only(), arg("model") = "fm", arg("vectors"),
        arg("biases"), arg("bias") = 0.0, arg("input"), arg("bag_ends"),
        arg("per_sample_weights") = py::none(), arg("fields") = py::none(), arg("num_fields") = 0,
        "FM / FFM scores [B] over batched bags, as `embstore score`.");
  m.def("inspect", &Inspect, arg("path"),
        "The tensors of a checkpoint: a list of (key, dtype, shape).");
}
