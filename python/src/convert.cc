#include "python/src/convert.h"

#include <Python.h>

#include <cerrno>
#include <string>

namespace embstore::python {
namespace {

PyObject* g_corruption_error = nullptr;

std::string TypeName(py::handle obj) { return Py_TYPE(obj.ptr())->tp_name; }

std::string DTypeString(const py::dtype& dt) { return py::str(py::handle(dt)).cast<std::string>(); }

bool NativeOrder(const py::dtype& dt) { return dt.byteorder() != '>'; }

bool CContiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

// A torch tensor, recognized without importing torch (only embstore.torch
// imports it).
bool IsTorchTensor(py::handle obj) {
  return py::hasattr(obj, "detach") && py::hasattr(obj, "numpy") && py::hasattr(obj, "device") &&
         py::hasattr(obj, "requires_grad");
}

// Any accepted input as a numpy array, sharing memory where the input has
// one (numpy arrays, CPU tensors, buffer-protocol objects).
py::array AsArray(py::handle obj, const char* what) {
  if (py::isinstance<py::array>(obj)) return py::reinterpret_borrow<py::array>(obj);
  if (IsTorchTensor(obj)) {
    const std::string device = py::str(obj.attr("device").attr("type")).cast<std::string>();
    if (device != "cpu") {
      RaiseValueError(std::string(what) + " is a tensor on '" + device +
                      "'; embstore takes CPU tensors (move it with .cpu())");
    }
    try {
      return py::reinterpret_borrow<py::array>(obj.attr("detach")().attr("numpy")());
    } catch (py::error_already_set& e) {
      RaiseValueError(std::string(what) + ": " + e.what());
    }
  }
  py::array a = py::array::ensure(obj);  // lists, tuples, buffers; clears its error
  if (!a) {
    RaiseValueError(std::string(what) +
                    " must be a numpy array, a torch CPU tensor, a list or a buffer, not " +
                    TypeName(obj));
  }
  return a;
}

std::vector<int64_t> ShapeOf(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

}  // namespace

void RaiseValueError(const std::string& message) {
  PyErr_SetString(PyExc_ValueError, message.c_str());
  throw py::error_already_set();
}

void Raise(const Status& status, bool missing_is_file) {
  const std::string& msg = status.message();
  PyObject* type = PyExc_RuntimeError;
  switch (status.code()) {
    case Status::Code::kOk:
      PyErr_SetString(PyExc_SystemError, "embstore: an OK status raised");
      throw py::error_already_set();
    case Status::Code::kInvalidArgument:
      // "indices[17] = 1000 is out of range for table 'items' (1000 rows)"
      type = msg.find("] = ") != std::string::npos &&
                     msg.find(" is out of range for table ") != std::string::npos
                 ? PyExc_IndexError
                 : PyExc_ValueError;
      break;
    case Status::Code::kNotFound:
      if (missing_is_file) {
        py::object err = py::reinterpret_steal<py::object>(
            PyObject_CallFunction(PyExc_FileNotFoundError, "is", ENOENT, msg.c_str()));
        PyErr_SetObject(PyExc_FileNotFoundError, err.ptr());
        throw py::error_already_set();
      }
      type = PyExc_KeyError;
      break;
    case Status::Code::kAlreadyExists:
    case Status::Code::kNotSupported:
      type = PyExc_ValueError;
      break;
    case Status::Code::kIOError:
      type = PyExc_OSError;
      break;
    case Status::Code::kCorruption:
      type = g_corruption_error != nullptr ? g_corruption_error : PyExc_OSError;
      break;
    case Status::Code::kInternal:
      type = PyExc_RuntimeError;
      break;
  }
  PyErr_SetString(type, msg.c_str());
  throw py::error_already_set();
}

void RegisterExceptions(py::module_& m) {
  static py::exception<std::exception> corruption(m, "CorruptionError", PyExc_OSError);
  corruption.doc() =
      "A store's file failed a checksum or structural check (Store.verify, or a read "
      "that found damage). A subclass of OSError.";
  g_corruption_error = corruption.ptr();
}

IdArray ToIds(py::handle obj, const char* what) {
  if (obj.is_none()) RaiseValueError(std::string(what) + " is required");
  py::array a = AsArray(obj, what);
  const py::dtype dt = a.dtype();
  const char kind = dt.kind();
  if (a.size() > 0 && kind != 'i' && kind != 'u') {
    RaiseValueError(std::string(what) + " must hold integer ids (int32 or int64), not " +
                    DTypeString(dt));
  }
  const bool direct = kind == 'i' && (dt.itemsize() == 4 || dt.itemsize() == 8) &&
                      NativeOrder(dt) && CContiguous(a);
  if (!direct) {  // another integer type, a strided view, an empty list: one copy
    a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!a) RaiseValueError(std::string(what) + " cannot be read as int64 ids");
  }
  IdArray r;
  r.shape = ShapeOf(a);
  r.view.data = a.data();
  r.view.size = static_cast<int64_t>(a.size());
  r.view.type = a.dtype().itemsize() == 4 ? IndexType::kInt32 : IndexType::kInt64;
  r.array = std::move(a);
  return r;
}

WeightArray ToWeights(py::handle obj, const char* what) {
  py::array a = AsArray(obj, what);
  const py::dtype dt = a.dtype();
  if (a.size() > 0 && dt.kind() != 'f') {
    RaiseValueError(std::string(what) + " must be float32 (float64 is converted), not " +
                    DTypeString(dt));
  }
  const bool direct = dt.kind() == 'f' && dt.itemsize() == 4 && NativeOrder(dt) && CContiguous(a);
  if (!direct) {
    a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!a) RaiseValueError(std::string(what) + " cannot be read as float32");
  }
  WeightArray r;
  r.shape = ShapeOf(a);
  r.values = std::span<const float>(static_cast<const float*>(a.data()), a.size());
  r.array = std::move(a);
  return r;
}

std::optional<WeightArray> OptionalWeights(py::handle obj, const std::vector<int64_t>& ids_shape) {
  if (obj.is_none()) return std::nullopt;
  WeightArray w = ToWeights(obj, "per_sample_weights");
  if (w.shape != ids_shape) RaiseValueError("per_sample_weights must have the shape of input");
  return w;
}

BatchedIds ToBatchedIds(py::handle input, py::handle bag_ends) {
  BatchedIds b{ToIds(input, "input"), ToIds(bag_ends, "bag_ends")};
  if (b.ids.shape.size() != 2) RaiseValueError("input must be 2-D [B, N]");
  if (b.ends.shape.size() != 2) RaiseValueError("bag_ends must be 2-D [B, K]");
  if (b.ends.shape[0] != b.ids.shape[0]) {
    RaiseValueError("bag_ends has " + std::to_string(b.ends.shape[0]) + " samples but input has " +
                    std::to_string(b.ids.shape[0]));
  }
  return b;
}

py::array_t<float> OutputArray(py::handle out, const std::vector<int64_t>& shape) {
  if (out.is_none()) return py::array_t<float>(shape);
  py::array a = AsArray(out, "out");
  const py::dtype dt = a.dtype();
  if (dt.kind() != 'f' || dt.itemsize() != 4 || !NativeOrder(dt)) {
    RaiseValueError("out must be a float32 array, not " + DTypeString(dt));
  }
  if (!CContiguous(a)) RaiseValueError("out must be C-contiguous");
  if (!a.writeable()) RaiseValueError("out is read-only");
  if (ShapeOf(a) != shape) {
    std::string want = "[", got = "[";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
    for (py::ssize_t i = 0; i < a.ndim(); ++i) got += (i ? ", " : "") + std::to_string(a.shape(i));
    RaiseValueError("out has shape " + got + "] but the result is " + want + "]");
  }
  return py::reinterpret_borrow<py::array_t<float>>(a);
}

std::span<float> Values(py::array_t<float>& a) {
  return std::span<float>(a.mutable_data(), static_cast<size_t>(a.size()));
}

// A Python number as a double (numpy scalars included); ValueError otherwise.
double ToDouble(py::handle obj, const char* what) {
  const double v = PyFloat_AsDouble(obj.ptr());
  if (v == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    RaiseValueError(std::string(what) + " must be a number or None, not " + TypeName(obj));
  }
  return v;
}

// A Python integer (numpy integers included: operator.index) as an int64.
int64_t ToInt64(py::handle obj, const char* what) {
  py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!index) {
    PyErr_Clear();
    RaiseValueError(std::string(what) + " must be an int or None, not " + TypeName(obj));
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    RaiseValueError(std::string(what) + " is out of the int64 range");
  }
  return v;
}

QueryOptions ToQueryOptions(const std::string& mode, py::handle max_norm, double norm_type,
                            py::handle padding_idx, bool include_last_offset) {
  QueryOptions o;
  const std::optional<PoolingMode> m = ParsePoolingMode(mode);
  if (!m) RaiseValueError("mode must be 'sum', 'mean' or 'max', not '" + mode + "'");
  o.mode = *m;
  if (!max_norm.is_none()) o.max_norm = ToDouble(max_norm, "max_norm");
  o.norm_type = norm_type;
  if (!padding_idx.is_none()) o.padding_idx = ToInt64(padding_idx, "padding_idx");
  o.include_last_offset = include_last_offset;
  return o;
}

void CheckNoOverlap(const py::array& out, const std::vector<const py::array*>& inputs) {
  const auto* begin = static_cast<const char*>(out.data());
  const char* end = begin + out.nbytes();
  for (const py::array* in : inputs) {
    if (in == nullptr || !*in || in->nbytes() == 0) continue;
    // The engine's inputs are C-contiguous (ToIds / ToWeights copy others).
    const auto* b = static_cast<const char*>(in->data());
    const char* e = b + in->nbytes();
    if (b < end && begin < e) RaiseValueError("out must not share memory with the inputs");
  }
}

}  // namespace embstore::python
