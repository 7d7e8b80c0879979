#include "optim/optimizer_files.h"

#include <cstdio>
#include <cstring>
#include <regex>

#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "optim/adamw.h"

namespace moeforge {

namespace fs = std::filesystem;

std::string optimizer_file_name(int rank, int ranks) {
  if (ranks == 1) return "optimizer.safetensors";
  char name[64];
  std::snprintf(name, sizeof name, "optimizer-%05d-of-%05d.safetensors", rank + 1, ranks);
  return name;
}

std::map<std::string, ExpertRange> parse_optimizer_shards(const std::string& text, const std::string& where) {
  const Json doc = parse_json(text, where);
  MF_CHECK(doc.is_object() && doc.contains("format") && doc["format"] == 1 && doc.contains("expert_parameters") &&
               doc["expert_parameters"].is_object(),
           kFormat, where, ": expected {\"format\": 1, \"expert_parameters\": {...}}");
  std::map<std::string, ExpertRange> ranges;
  for (const auto& [name, s] : doc["expert_parameters"].items()) {
    const bool well_formed = s.is_object() && s.contains("experts") && s["experts"].is_array() &&
                             s["experts"].size() == 2 && s["experts"][0].is_number_integer() &&
                             s["experts"][1].is_number_integer() && s.contains("of") && s["of"].is_number_integer();
    MF_CHECK(well_formed, kFormat, where, ": the entry of ", name, " is not {\"experts\": [first, end], \"of\": E}");
    const ExpertRange r{s["experts"][0], s["experts"][1], s["of"]};
    MF_CHECK(0 <= r.first && r.first < r.end && r.end <= r.of, kFormat, where, ": ", name, " holds experts [", r.first,
             ", ", r.end, ") of ", r.of);
    ranges[name] = r;
  }
  return ranges;
}

namespace {

// The checkpoint's optimizer files: optimizer.safetensors, or every optimizer-RRRRR-of-NNNNN.
std::vector<fs::path> optimizer_files(const fs::path& checkpoint) {
  if (fs::exists(checkpoint / optimizer_file_name(0, 1))) return {checkpoint / optimizer_file_name(0, 1)};
  static const std::regex pattern(R"(optimizer-(\d{5})-of-(\d{5})\.safetensors)");
  int ranks = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(checkpoint, ec)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, m, pattern)) ranks = std::stoi(m[2]);
  }
  MF_CHECK(ranks > 0, kNotFound, checkpoint.string(),
           ": no optimizer state (optimizer.safetensors or optimizer-RRRRR-of-NNNNN.safetensors)");
  std::vector<fs::path> files;
  for (int r = 0; r < ranks; ++r) {
    files.push_back(checkpoint / optimizer_file_name(r, ranks));
    MF_CHECK(fs::exists(files.back()), kFormat, checkpoint.string(), ": ", files.back().filename().string(),
             " is missing (the checkpoint was written by ", ranks, " processes)");
  }
  return files;
}

}  // namespace

std::map<std::string, Tensor> read_optimizer_state(const fs::path& checkpoint, const ParameterSet& params) {
  std::map<std::string, const ParamEntry*> experts;
  for (const ParamEntry& e : params.entries())
    if (e.shard_class == ShardClass::kExpert) experts[e.name] = &e;
  std::map<std::string, Tensor> state;
  std::map<std::string, int64_t> rows_found;  // per expert key
  for (const fs::path& path : optimizer_files(checkpoint)) {
    const SafetensorsFile file = SafetensorsFile::open(path);
    std::map<std::string, ExpertRange> ranges;
    if (auto it = file.metadata().find(kOptimizerShardsKey); it != file.metadata().end())
      ranges = parse_optimizer_shards(it->second, str_cat(path.string(), ": metadata '", kOptimizerShardsKey, "'"));
    for (const std::string& key : file.names()) {
      const auto expert = experts.find(key.substr(0, key.rfind('.')));
      if (expert == experts.end()) {
        if (!state.count(key)) state[key] = file.get(key).clone();
        continue;
      }
      const ParamEntry& e = *expert->second;
      const Tensor src = file.get(key);
      // Files written before the metadata existed hold every expert.
      const auto range = ranges.find(e.name);
      const ExpertRange r = range != ranges.end() ? range->second : ExpertRange{0, src.size(0), src.size(0)};
      const int64_t all = e.all_experts > 0 ? e.all_experts : e.shape[0];
      MF_CHECK(r.of == all, kFormat, path.string(), ": ", e.name, " was saved with ", r.of, " experts, the model has ",
               all);
      MF_CHECK(src.dim() == static_cast<int64_t>(e.shape.size()) && src.size(0) == r.end - r.first, kShape,
               path.string(), ": ", key, " has shape ", shape_str(src.shape()), " for experts [", r.first, ", ", r.end,
               ")");
      const int64_t lo = std::max(r.first, e.first_expert), hi = std::min(r.end, e.first_expert + e.shape[0]);
      if (lo >= hi) continue;
      Tensor& dst = state[key];
      if (!dst.defined()) dst = Tensor::zeros(e.shape, src.dtype(), Device::kCPU, "optimizer state");
      MF_CHECK(src.dtype() == dst.dtype(), kFormat, path.string(), ": ", key, " is ", dtype_torch_name(src.dtype()),
               " here and ", dtype_torch_name(dst.dtype()), " in another file");
      Tensor rows = dst.slice(0, lo - e.first_expert, hi - e.first_expert);
      rows.copy_from(src.slice(0, lo - r.first, hi - r.first).contiguous());
      rows_found[key] += hi - lo;
    }
  }
  for (const auto& [key, rows] : rows_found) {
    const ParamEntry& e = *experts.at(key.substr(0, key.rfind('.')));
    MF_CHECK(rows == e.shape[0], kFormat, checkpoint.string(), ": the optimizer files hold ", rows, " of the ",
             e.shape[0], " experts of ", key, " this process needs (from expert ", e.first_expert, ")");
  }
  return state;
}

}  // namespace moeforge
