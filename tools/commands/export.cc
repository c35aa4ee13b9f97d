// embstore export: a table as a .npy file.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "checkpoint/npy.h"
#include "codec/row_codec.h"
#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class ExportCommand : public Command {
 public:
  ExportCommand()
      : Command("export", "write a table to a .npy file",
                "Write a table to a .npy file: f32 as <f4, f16 as <f2, bf16 and int8 dequantized "
                "to <f4.") {
    AddValue("db", "Store directory", Need::kRequired);
    AddValue("table", "Table name", Need::kRequired);
    AddValue("out", "Output .npy path", Need::kRequired);
  }

 private:
  int Run() override {
    const std::string db = Str("db"), table = Str("table"), out = Str("out");
    if (Status st = CheckOutputOutsideStore(db, out); !st.ok()) return Fail(st);
    auto store = OpenStore(db, false);
    if (!store.ok()) return Fail(store.status());
    auto snap = (*store)->GetSnapshot(table);
    if (!snap.ok()) return Fail(snap.status());
    const TableView v = snap->view();
    const bool raw_f16 = v.dtype == DType::kF16;
    const size_t out_item = raw_f16 ? 2 : 4;
    std::vector<int64_t> shape = {v.rows, v.dim};
    storage::NpyWriter w;
    Status st = w.Open(out, raw_f16 ? "<f2" : "<f4", shape);
    if (!st.ok()) return Fail(st);
    const int64_t chunk = std::max<int64_t>(1, (int64_t{8} << 20) / (v.dim * 4));
    std::vector<uint8_t> buf;
    ProgressBar bar("exporting " + table);
    for (int64_t first = 0; first < v.rows; first += chunk) {
      const int64_t n = std::min(chunk, v.rows - first);
      buf.resize(static_cast<size_t>(n * v.dim) * out_item);
      for (int64_t i = 0; i < n; ++i) {
        uint8_t* dst = buf.data() + static_cast<size_t>(i * v.dim) * out_item;
        if (raw_f16 || v.dtype == DType::kF32) {
          std::memcpy(dst, v.Row(first + i), static_cast<size_t>(v.dim) * out_item);
        } else {
          codec::DecodeRow(v.Row(first + i), v.dim, v.dtype, reinterpret_cast<float*>(dst));
        }
      }
      st = w.Append(buf);
      if (!st.ok()) return Fail(st);
      bar.Update(first + n, v.rows);
    }
    st = w.Commit();
    if (!st.ok()) return Fail(st);
    std::printf("exported %s (%" PRId64 " x %" PRId64 ", %s) to %s\n", table.c_str(), v.rows, v.dim,
                raw_f16 ? "<f2" : "<f4", out.c_str());
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewExportCommand() { return std::make_unique<ExportCommand>(); }

}  // namespace embstore::cli
