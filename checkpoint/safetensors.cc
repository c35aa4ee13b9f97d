// .safetensors: an 8-byte little-endian header length N, N bytes of JSON
// ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}),
// then the raw little-endian, C-order tensor bytes (offsets relative to 8 + N).
#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>

#include "checkpoint/checkpoint_internal.h"

namespace embstore::storage::ckpt {
namespace {

// Larger headers are refused outright (real ones are at most a few MB).
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;
constexpr int kMaxJsonDepth = 32;

struct DTypeInfo {
  const char* safetensors_name;
  const char* name;
  int64_t size;
  SourceDType dtype;
};
constexpr DTypeInfo kDTypes[] = {
    {"F32", "f32", 4, SourceDType::kF32},           {"F64", "f64", 8, SourceDType::kF64},
    {"F16", "f16", 2, SourceDType::kF16},           {"BF16", "bf16", 2, SourceDType::kBF16},
    {"I64", "int64", 8, SourceDType::kOther},       {"I32", "int32", 4, SourceDType::kOther},
    {"I16", "int16", 2, SourceDType::kOther},       {"I8", "int8", 1, SourceDType::kOther},
    {"U64", "uint64", 8, SourceDType::kOther},      {"U32", "uint32", 4, SourceDType::kOther},
    {"U16", "uint16", 2, SourceDType::kOther},      {"U8", "uint8", 1, SourceDType::kOther},
    {"BOOL", "bool", 1, SourceDType::kOther},       {"F8_E4M3", "f8_e4m3", 1, SourceDType::kOther},
    {"F8_E5M2", "f8_e5m2", 1, SourceDType::kOther}, {"C64", "complex64", 8, SourceDType::kOther},
};

// Nesting depth of a JSON text (brackets outside strings), checked before
// parsing so that a hostile header cannot make the parser build a deep tree.
int JsonDepth(std::string_view s) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

class SafetensorsFile final : public CheckpointFile {
 public:
  static Result<std::unique_ptr<CheckpointFile>> Open(const std::string& path) {
    EMBSTORE_ASSIGN_OR_RETURN(std::shared_ptr<File> file, File::Open(path));
    std::unique_ptr<SafetensorsFile> st(new SafetensorsFile(path, std::move(file)));
    EMBSTORE_RETURN_IF_ERROR(st->ParseHeader());
    return std::unique_ptr<CheckpointFile>(std::move(st));
  }

  const std::vector<TensorEntry>& tensors() const override { return entries_; }

  Result<std::unique_ptr<TensorReader>> OpenTensor(size_t index) override {
    const Tensor& t = tensors_[index];
    int64_t rows, dim;
    EMBSTORE_RETURN_IF_ERROR(CheckImportable(entries_[index], &rows, &dim));
    TensorLayout layout;
    layout.dtype = t.dtype;
    layout.rows = rows;
    layout.dim = dim;
    layout.row_stride = dim;
    layout.col_stride = 1;
    const std::string name = path_ + ":" + entries_[index].key;
    EMBSTORE_RETURN_IF_ERROR(ValidateLayout(layout, t.end - t.begin, name));
    return std::unique_ptr<TensorReader>(std::make_unique<StridedTensorReader>(
        name, layout, MakeFileRegionSource(file_, data_start_ + t.begin, t.end - t.begin)));
  }

  Result<double> ReadTensorScalar(size_t index) override {
    const Tensor& t = tensors_[index];
    auto source = MakeFileRegionSource(file_, data_start_ + t.begin, t.end - t.begin);
    return ReadElement(*source, entries_[index].dtype, 0);
  }

 private:
  struct Tensor {
    SourceDType dtype;
    uint64_t begin, end;  // relative to data_start_
  };

  SafetensorsFile(std::string path, std::shared_ptr<File> file)
      : path_(std::move(path)), file_(std::move(file)) {}

  Status Bad(const std::string& what) const {
    return Status::Corruption("'" + path_ + "' is not a valid .safetensors file: " + what);
  }

  Status ParseHeader() {
    const uint64_t size = file_->size();
    if (size < 8) return Bad("shorter than its 8-byte header length");
    uint8_t len_bytes[8];
    EMBSTORE_RETURN_IF_ERROR(file_->ReadAt(0, len_bytes, 8));
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    if (n > size - 8) {
      return Bad("header length " + std::to_string(n) + " exceeds the file size " +
                 std::to_string(size) + " (truncated?)");
    }
    if (n > kMaxHeaderBytes)
      return Bad("header length " + std::to_string(n) + " is implausibly large");
    std::string header(static_cast<size_t>(n), '\0');
    EMBSTORE_RETURN_IF_ERROR(file_->ReadAt(8, header.data(), header.size()));
    data_start_ = 8 + n;
    const uint64_t data_size = size - data_start_;
    if (header.empty() || header[0] != '{') return Bad("the header does not start with '{'");
    if (JsonDepth(header) > kMaxJsonDepth) return Bad("the JSON header is nested too deeply");
    // Exceptions stay inside this function (STYLE: Status at boundaries).
    try {
      // A key given twice would be resolved silently to one of them: refused.
      std::set<std::string> keys;
      std::string duplicate;
      const nlohmann::ordered_json::parser_callback_t on_key =
          [&](int depth, nlohmann::ordered_json::parse_event_t event,
              nlohmann::ordered_json& parsed) {
            if (depth == 1 && event == nlohmann::ordered_json::parse_event_t::key &&
                parsed.is_string() && !keys.insert(parsed.get<std::string>()).second &&
                duplicate.empty()) {
              duplicate = parsed.get<std::string>();
            }
            return true;
          };
      nlohmann::ordered_json j =
          nlohmann::ordered_json::parse(header, on_key, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object()) return Bad("the header is not a JSON object");
      if (!duplicate.empty()) return Bad("tensor '" + duplicate + "' is named twice");
      for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& key = it.key();
        if (key == "__metadata__") continue;
        const auto& v = it.value();
        const std::string what = "tensor '" + key + "'";
        if (!v.is_object()) return Bad(what + " is not an object");
        auto dt = v.find("dtype"), sh = v.find("shape"), off = v.find("data_offsets");
        if (dt == v.end() || !dt->is_string() || sh == v.end() || !sh->is_array() ||
            off == v.end() || !off->is_array() || off->size() != 2) {
          return Bad(what + " needs dtype, shape and data_offsets [begin, end]");
        }
        TensorEntry entry;
        entry.key = key;
        const std::string st_dtype = dt->get<std::string>();
        const DTypeInfo* info = nullptr;
        for (const DTypeInfo& d : kDTypes) {
          if (st_dtype == d.safetensors_name) info = &d;
        }
        entry.dtype = info != nullptr ? info->name : st_dtype;
        for (const auto& d : *sh) {
          if (!d.is_number_unsigned())
            return Bad(what + " has a shape entry that is not a non-negative integer");
          const uint64_t u = d.get<uint64_t>();
          if (u > static_cast<uint64_t>(INT64_MAX)) return Bad(what + " has an absurd shape");
          entry.shape.push_back(static_cast<int64_t>(u));
        }
        if (!(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) {
          return Bad(what + " has data_offsets that are not non-negative integers");
        }
        Tensor t;
        t.begin = (*off)[0].get<uint64_t>();
        t.end = (*off)[1].get<uint64_t>();
        t.dtype = info != nullptr ? info->dtype : SourceDType::kOther;
        if (t.begin > t.end || t.end > data_size) {
          return Bad(what + " has data_offsets [" + std::to_string(t.begin) + ", " +
                     std::to_string(t.end) + ") outside the " + std::to_string(data_size) +
                     " data bytes (truncated?)");
        }
        const std::optional<int64_t> numel = NumElements(entry.shape);
        if (!numel) return Bad(what + " has an absurd shape " + ShapeString(entry.shape));
        if (info != nullptr) {
          const __int128 need = static_cast<__int128>(*numel) * info->size;
          if (need != static_cast<__int128>(t.end - t.begin)) {
            return Bad(what + ": shape " + ShapeString(entry.shape) + " of " + st_dtype +
                       " needs " +
                       (need > INT64_MAX ? std::string("too many")
                                         : std::to_string(static_cast<int64_t>(need))) +
                       " bytes but data_offsets span " + std::to_string(t.end - t.begin));
          }
        }
        entries_.push_back(std::move(entry));
        tensors_.push_back(t);
      }
    } catch (const std::exception& e) {
      return Bad(std::string("malformed header: ") + e.what());
    }
    // Tensors may not share bytes: a writer never emits that, and a reader
    // would import one tensor's bytes as another's.
    std::vector<size_t> order(tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return tensors_[a].begin < tensors_[b].begin; });
    size_t last = SIZE_MAX;  // the non-empty tensor ending furthest so far
    for (size_t i : order) {
      if (tensors_[i].begin == tensors_[i].end) continue;
      if (last != SIZE_MAX && tensors_[i].begin < tensors_[last].end) {
        return Bad("tensors '" + entries_[last].key + "' and '" + entries_[i].key +
                   "' overlap in the data");
      }
      if (last == SIZE_MAX || tensors_[i].end > tensors_[last].end) last = i;
    }
    return Status::OK();
  }

  std::string path_;
  std::shared_ptr<File> file_;
  uint64_t data_start_ = 0;
  std::vector<TensorEntry> entries_;
  std::vector<Tensor> tensors_;
};

}  // namespace

Result<std::unique_ptr<CheckpointFile>> OpenSafetensorsFile(const std::string& path) {
  return SafetensorsFile::Open(path);
}

}  // namespace embstore::storage::ckpt
