// Hugging Face model folders: resolving a model argument (a folder, or a model id found in the local
// Hugging Face cache, offline), and writing files atomically.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace moeforge {

// The hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (as huggingface_hub).
std::filesystem::path hf_hub_cache_dir();

// Resolves `model` to a folder: an existing directory as given; otherwise a model id ("org/name", or
// a bare "name") looked up in the hub cache without network access: models--org--name/refs/main names
// the revision whose snapshots/<revision> is the folder; without refs/main, the only snapshot.
// kNotFound lists every place looked at.
std::filesystem::path resolve_model_folder(const std::string& model);

// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so readers see
// either the old file or the whole new one. kIo naming the file on failure; nothing is left behind.
void atomic_write_file(const std::filesystem::path& path, std::string_view bytes);

}  // namespace moeforge
