// embstore score: factorization-machine (FM / FFM) scores over batched bags.
#include <cstdio>
#include <limits>
#include <optional>

#include "checkpoint/npy.h"
#include "embstore/checkpoint.h"
#include "embstore/fm.h"
#include "tools/bag_args.h"
#include "tools/commands/commands.h"

namespace embstore::cli {
namespace {

class ScoreCommand : public Command {
 public:
  ScoreCommand()
      : Command("score", "factorization-machine (FM / FFM) scores over batched bags",
                "Factorization-machine scores over batched bags: y[b] for each sample.\n"
                "Bags: --indices/--weights [B,N], --bag-ends [B,K] (inclusive end offsets).") {
    AddValue("db", "Store directory", Need::kRequired);
    AddValue("model", "fm | ffm", Need::kRequired);
    AddValue("vectors", "Vectors table [rows, D] (FFM: D = F * k)", Need::kRequired);
    AddValue("biases", "Biases table [rows, 1]", Need::kRequired);
    AddValue("bias", "Global bias (default 0)");
    AddValue("bias-from",
             "Read the global bias from a checkpoint scalar: FILE[:KEY] (KEY defaults to 'bias')");
    AddValue("fields", "FFM: field of each bag [B,K]: SPEC (default: bag m is field m)");
    AddInt64("num-fields", "FFM: number of fields F (default K)");
    AddValue("indices", "Row ids [B,N]: SPEC", Need::kRequired);
    AddValue("weights", "Weights [B,N]: SPEC (default all 1)");
    AddValue("bag-ends", "Inclusive bag ends [B,K]: SPEC", Need::kRequired);
    AddValue("padding-idx", "Skip items equal to this id");
    AddInt("threads", "Worker threads (0 = all cores)", "0");
    AddValue("out", "Write the [B] float32 scores to this .npy instead of printing");
  }

 private:
  int Run() override {
    FmModel model;
    const std::string model_name = Str("model");
    if (model_name == "fm") {
      model = FmModel::kFm;
    } else if (model_name == "ffm") {
      model = FmModel::kFfm;
    } else {
      return Usage("--model must be fm or ffm (got '" + model_name + "')");
    }
    FmRequest req;
    if (const int rc = ReadBias(&req.bias); rc != kExitOk) return rc;
    QueryOptions qo;
    qo.mode = PoolingMode::kSum;
    qo.max_threads = Int("threads");
    if (Has("padding-idx")) {
      auto p = Integer("padding-idx");
      if (!p.ok()) return Fail(p.status());
      qo.padding_idx = *p;
    }
    auto indices = ParseIntSpec(Str("indices"), "--indices");
    if (!indices.ok()) return Fail(indices.status());
    auto ends = ParseIntSpec(Str("bag-ends"), "--bag-ends");
    if (!ends.ok()) return Fail(ends.status());
    auto weights = FloatSpec("weights");
    if (!weights.ok()) return Fail(weights.status());
    if (Has("fields") && model != FmModel::kFfm)
      return Usage("--fields applies only to --model ffm");
    auto fields = IntSpec("fields");
    if (!fields.ok()) return Fail(fields.status());
    if (Has("num-fields")) {
      if (model != FmModel::kFfm) return Usage("--num-fields applies only to --model ffm");
      req.num_fields = Int64("num-fields");
      if (req.num_fields <= 0) return Usage("--num-fields must be >= 1");
    }
    auto bags = BatchedBags(*indices, *ends);
    if (!bags.ok()) return Fail(bags.status());
    req.bags = *bags;
    if (*fields) {
      const SampleShape fs = SamplesOf((*fields)->shape);
      if (fs.batch != req.bags.batch || fs.per_sample != req.bags.bags_per_sample) {
        return Fail(Status::InvalidArgument(
            "--fields has shape [" + std::to_string(fs.batch) + ", " +
            std::to_string(fs.per_sample) + "] but the bags are [B, K] = [" +
            std::to_string(req.bags.batch) + ", " + std::to_string(req.bags.bags_per_sample) +
            "]: K must match (one field per bag)"));
      }
      req.fields = (*fields)->view();
    }
    if (*weights) {
      const Status ws = CheckWeightsShape(**weights, indices->shape);
      if (!ws.ok()) return Fail(ws);
      req.bags.weights = (*weights)->values();
    }
    return Score(model, req, qo);
  }

  // --bias or --bias-from into *bias; kExitOk or the exit code of the error
  // printed.
  int ReadBias(double* bias) const {
    if (Has("bias") && Has("bias-from")) return Usage("give --bias or --bias-from, not both");
    if (Has("bias")) {
      auto b = Number("bias");
      if (!b.ok()) return Fail(b.status());
      *bias = *b;
    }
    if (Has("bias-from")) {
      const std::string spec = Str("bias-from");
      std::string file = spec, key = "bias";
      const size_t colon = spec.rfind(':');
      if (colon != std::string::npos && colon > 0) {
        file = spec.substr(0, colon);
        key = spec.substr(colon + 1);
      }
      auto b = ReadCheckpointScalar(file, key);
      if (!b.ok()) return Fail(b.status());
      *bias = *b;
    }
    return kExitOk;
  }

  int Score(FmModel model, const FmRequest& req, const QueryOptions& qo) {
    const std::string db = Str("db");
    if (const Status st = CheckOutOption(db); !st.ok()) return Fail(st);
    auto store = OpenStore(db, false);
    if (!store.ok()) return Fail(store.status());
    auto vs = (*store)->GetSnapshot(Str("vectors"));
    if (!vs.ok()) return Fail(vs.status());
    auto bs = (*store)->GetSnapshot(Str("biases"));
    if (!bs.ok()) return Fail(bs.status());
    auto scores = FmScore(model, vs->view(), bs->view(), req, qo);
    if (!scores.ok()) return Fail(scores.status());
    const int64_t batch = req.bags.batch;
    if (Has("out")) {
      const Status st = storage::WriteNpy(
          Str("out"), "<f4", {batch},
          {reinterpret_cast<const uint8_t*>(scores->data()), scores->size() * sizeof(float)});
      if (!st.ok()) return Fail(st);
    } else {
      for (float y : *scores) std::printf("%.8g\n", static_cast<double>(y));
    }
    return kExitOk;
  }
};

}  // namespace

std::unique_ptr<Command> NewScoreCommand() { return std::make_unique<ScoreCommand>(); }

}  // namespace embstore::cli
