#include "io/hf_folder.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"

namespace moeforge {

namespace fs = std::filesystem;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// A Hub model id: "name" or "org/name", each part non-empty and free of path tricks.
bool is_model_id(const std::string& s) {
  if (s.empty() || s.front() == '/' || s.back() == '/') return false;
  size_t slash = s.find('/');
  if (slash != std::string::npos && s.find('/', slash + 1) != std::string::npos) return false;
  for (const std::string& part : {s.substr(0, slash), slash == std::string::npos ? "" : s.substr(slash + 1)})
    if (part == "." || part == "..") return false;
  return s.find("--") == std::string::npos && s.find('\\') == std::string::npos;
}

std::string read_first_line(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

}  // namespace

fs::path hf_hub_cache_dir() {
  if (std::string v = env("HF_HUB_CACHE"); !v.empty()) return v;
  if (std::string v = env("HF_HOME"); !v.empty()) return fs::path(v) / "hub";
  std::string home = env("HOME");
  return fs::path(home.empty() ? "/root" : home) / ".cache" / "huggingface" / "hub";
}

fs::path resolve_model_folder(const std::string& model) {
  MF_CHECK(!model.empty(), kInvalidArgument, "no model given: expected a model folder or a Hugging Face model id");
  std::error_code ec;
  if (fs::is_directory(model, ec)) return model;
  MF_CHECK(!fs::exists(model, ec), kInvalidArgument, "model '", model,
           "' is a file; expected a model folder or a Hugging Face model id");

  std::vector<std::string> looked = {str_cat("no folder ", fs::absolute(model, ec).string())};
  auto not_found = [&]() {
    std::string where;
    for (const auto& l : looked) where += "\n  - " + l;
    // A path is not a Hub id: downloading it means nothing.
    fail(ErrorCode::kNotFound, "model '", model, "' not found",
         is_model_id(model) ? str_cat(" (moeforge does not download; fetch it first, e.g. 'hf download ", model, "')")
                            : std::string(" (no such folder, and not a Hugging Face model id 'org/name')"),
         ". Looked at:", where);
  };
  if (!is_model_id(model)) not_found();

  std::string repo_dir_name = "models--" + model;
  if (auto slash = repo_dir_name.find('/'); slash != std::string::npos)
    repo_dir_name.replace(slash, 1, "--");
  const fs::path repo = hf_hub_cache_dir() / repo_dir_name;
  const fs::path snapshots = repo / "snapshots";
  if (!fs::is_directory(snapshots, ec)) {
    looked.push_back(str_cat("no Hugging Face cache entry ", snapshots.string(),
                             " (cache from $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)"));
    not_found();
  }

  const fs::path ref = repo / "refs" / "main";
  if (fs::is_regular_file(ref, ec)) {
    const std::string revision = read_first_line(ref);
    const fs::path folder = snapshots / revision;
    if (!revision.empty() && fs::is_directory(folder, ec)) return folder;
    looked.push_back(str_cat(ref.string(), " names revision '", revision, "', but ",
                             folder.string(), " is missing"));
  } else {
    looked.push_back(str_cat("no ", ref.string()));
  }

  std::vector<fs::path> candidates;
  for (const auto& entry : fs::directory_iterator(snapshots, ec))
    if (entry.is_directory(ec)) candidates.push_back(entry.path());
  if (candidates.size() == 1) return candidates.front();
  std::string names;
  for (const auto& c : candidates) names += (names.empty() ? "" : ", ") + c.filename().string();
  looked.push_back(str_cat(snapshots.string(), " holds ", candidates.size(), " snapshots",
                           candidates.empty() ? std::string() : " (" + names + ")",
                           "; without refs/main moeforge takes only a single one"));
  not_found();
  return {};
}

void atomic_write_file(const fs::path& path, std::string_view bytes) {
  AtomicFile file(path);
  file.write(bytes.data(), bytes.size());
  file.commit();
}

}  // namespace moeforge
