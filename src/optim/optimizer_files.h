// A checkpoint's optimizer state on disk: optimizer.safetensors from a single process, or one
// optimizer-RRRRR-of-NNNNN.safetensors per rank of a data-parallel run (its slices of the state,
// AdamW's OptimizerSharding). Each file's metadata (kOptimizerShardsKey, see AdamW::shard_metadata)
// names the elements it holds of each parameter, so state saved by one number of processes loads
// into any other: each parameter's elements are joined from the files that hold them.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "core/tensor.h"
#include "optim/adamw.h"
#include "params/parameter_set.h"

namespace moeforge {

// The file rank `rank` of `ranks` writes: optimizer.safetensors when ranks is 1.
std::string optimizer_file_name(int rank, int ranks);

// Parses kOptimizerShardsKey metadata into each parameter's elements, counted in the whole parameter
// (every expert, flattened). Format 2 is AdamW::shard_metadata()'s; format 1, of expert-parallel
// checkpoints before optimizer sharding, named expert ranges: they are read with `params`' expert
// sizes. kFormat naming `where` and the malformed entry.
std::map<std::string, ElementRange> parse_optimizer_shards(const std::string& text, const std::string& where,
                                                           const ParameterSet& params);

// The optimizer state this process keeps (`wanted`: AdamW::owned_ranges()) from the checkpoint
// folder, whatever the number of processes that wrote it: each key's elements joined from the files
// that hold them, in the parameter's shape where the process keeps it whole and flat otherwise
// (what AdamW::load_state takes). Keys of no parameter pass through for load_state to judge.
// kNotFound when the folder has no optimizer state, kFormat naming the file and parameter when a
// file is missing or a parameter's size differs.
std::map<std::string, Tensor> read_optimizer_state(const std::filesystem::path& checkpoint, const ParameterSet& params,
                                                   const std::map<std::string, ElementRange>& wanted);

}  // namespace moeforge
