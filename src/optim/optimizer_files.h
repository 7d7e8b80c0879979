// A checkpoint's optimizer state on disk: optimizer.safetensors from a single process, or one
// optimizer-RRRRR-of-NNNNN.safetensors per expert-parallel rank (its experts' state; the first
// rank's holds the replicated parameters' too). Each file's metadata (kOptimizerShardsKey, see
// AdamW::shard_metadata) names the experts it holds, so state saved at one expert-parallel size
// loads at any other: each expert parameter's rows are joined from the files that hold them.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "core/tensor.h"
#include "params/parameter_set.h"

namespace moeforge {

// The file rank `rank` of `ranks` writes: optimizer.safetensors when ranks is 1.
std::string optimizer_file_name(int rank, int ranks);

// An expert parameter's experts in a file: [first, end) of `of`.
struct ExpertRange {
  int64_t first = 0, end = 0, of = 0;
};
// Parses kOptimizerShardsKey metadata; kFormat naming `where` and the malformed entry.
std::map<std::string, ExpertRange> parse_optimizer_shards(const std::string& text, const std::string& where);

// The optimizer state of `params` (AdamW::load_state's map) from the checkpoint folder, whatever the
// number of processes that wrote it: every key of the replicated parameters, and each expert
// parameter's held experts gathered from the files whose ranges hold them. kNotFound when the
// folder has no optimizer state, kFormat naming the file and parameter when a file is missing or
// an expert count differs.
std::map<std::string, Tensor> read_optimizer_state(const std::filesystem::path& checkpoint, const ParameterSet& params);

}  // namespace moeforge
