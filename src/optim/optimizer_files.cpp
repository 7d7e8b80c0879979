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

namespace {

int64_t per_expert(const ParamEntry& e) { return e.numel() / e.shape[0]; }

// "4 experts" where `elements` is a whole number of an expert parameter's experts, else "20 elements".
std::string size_words(const ParamEntry& e, int64_t elements) {
  if (e.shard_class == ShardClass::kExpert && elements % per_expert(e) == 0)
    return str_cat(elements / per_expert(e), " experts");
  return str_cat(elements, " elements");
}

bool is_pair(const Json& v) {
  return v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer();
}

}  // namespace

std::map<std::string, ElementRange> parse_optimizer_shards(const std::string& text, const std::string& where,
                                                           const ParameterSet& params) {
  const Json doc = parse_json(text, where);
  const bool v1 = doc.is_object() && doc.value("format", Json()) == 1 && doc.contains("expert_parameters") &&
                  doc["expert_parameters"].is_object();
  const bool v2 = doc.is_object() && doc.value("format", Json()) == 2 && doc.contains("parameters") &&
                  doc["parameters"].is_object();
  MF_CHECK(v1 || v2, kFormat, where, ": expected {\"format\": 2, \"parameters\": {...}} (or format 1's \"expert_parameters\")");
  std::map<std::string, const ParamEntry*> by_name;
  for (const ParamEntry& e : params.entries()) by_name[e.name] = &e;
  const char* range_key = v1 ? "experts" : "elements";
  std::map<std::string, ElementRange> ranges;
  for (const auto& [name, s] : doc[v1 ? "expert_parameters" : "parameters"].items()) {
    const bool well_formed = s.is_object() && s.contains(range_key) && is_pair(s[range_key]) && s.contains("of") &&
                             s["of"].is_number_integer();
    MF_CHECK(well_formed, kFormat, where, ": the entry of ", name, " is not {\"", range_key, "\": [first, end], \"of\": N}");
    ElementRange r{s[range_key][0], s[range_key][1], s["of"]};
    MF_CHECK(0 <= r.begin && r.begin < r.end && r.end <= r.of, kFormat, where, ": ", name, " holds ", range_key, " [",
             r.begin, ", ", r.end, ") of ", r.of);
    if (v1) {
      // Expert ranges of a parameter this model lacks cannot be converted; load_state names it.
      const auto e = by_name.find(name);
      if (e == by_name.end() || e->second->shard_class != ShardClass::kExpert) continue;
      const int64_t n = per_expert(*e->second);
      r = {r.begin * n, r.end * n, r.of * n};
    }
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

std::map<std::string, Tensor> read_optimizer_state(const fs::path& checkpoint, const ParameterSet& params,
                                                   const std::map<std::string, ElementRange>& wanted) {
  std::map<std::string, const ParamEntry*> by_name;
  for (const ParamEntry& e : params.entries())
    if (e.shard_class != ShardClass::kFrozen) by_name[e.name] = &e;
  std::map<std::string, Tensor> state;
  std::map<std::string, int64_t> elements_found;  // per key
  for (const fs::path& path : optimizer_files(checkpoint)) {
    const SafetensorsFile file = SafetensorsFile::open(path);
    std::map<std::string, ElementRange> ranges;
    if (auto it = file.metadata().find(kOptimizerShardsKey); it != file.metadata().end())
      ranges = parse_optimizer_shards(it->second, str_cat(path.string(), ": metadata '", kOptimizerShardsKey, "'"), params);
    for (const std::string& key : file.names()) {
      const std::string name = key.substr(0, key.rfind('.'));
      const auto param = by_name.find(name);
      if (param == by_name.end()) {
        if (!state.count(key)) state[key] = file.get(key).clone();
        continue;
      }
      const auto want = wanted.find(name);
      if (want == wanted.end()) continue;  // this process keeps no state of it
      const ParamEntry& e = *param->second;
      const Tensor src = file.get(key);
      // Files written before the metadata existed, and format 1's replicated parameters, hold whole ones.
      const auto range = ranges.find(name);
      const ElementRange r = range != ranges.end() ? range->second : ElementRange{0, src.numel(), src.numel()};
      MF_CHECK(r.of == e.whole_numel(), kFormat, path.string(), ": ", name, " was saved with ", size_words(e, r.of),
               ", the model has ", size_words(e, e.whole_numel()));
      MF_CHECK(src.numel() == r.end - r.begin, kShape, path.string(), ": ", key, " has shape ", shape_str(src.shape()),
               " for elements [", r.begin, ", ", r.end, ")");
      const ElementRange& w = want->second;
      const int64_t lo = std::max(r.begin, w.begin), hi = std::min(r.end, w.end);
      if (lo >= hi) continue;
      Tensor& dst = state[key];
      if (!dst.defined()) dst = Tensor::zeros({w.end - w.begin}, src.dtype(), Device::kCPU, "optimizer state");
      MF_CHECK(src.dtype() == dst.dtype(), kFormat, path.string(), ": ", key, " is ", dtype_torch_name(src.dtype()),
               " here and ", dtype_torch_name(dst.dtype()), " in another file");
      dst.slice(0, lo - w.begin, hi - w.begin)
          .copy_from(src.contiguous().view({src.numel()}).slice(0, lo - r.begin, hi - r.begin).contiguous());
      elements_found[key] += hi - lo;
    }
  }
  for (const auto& [key, found] : elements_found) {
    const std::string name = key.substr(0, key.rfind('.'));
    const ParamEntry& e = *by_name.at(name);
    const ElementRange& w = wanted.at(name);
    MF_CHECK(found == w.end - w.begin, kFormat, checkpoint.string(), ": the optimizer files hold ", found, " of the ",
             w.end - w.begin, " elements of ", key, " this process needs ([", w.begin, ", ", w.end, ") of ", w.of, ")");
    if (found == e.numel()) state[key] = state[key].view(e.shape);
  }
  return state;
}

}  // namespace moeforge
