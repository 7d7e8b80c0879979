#include "io/hf_folder.h"

#include <cstdlib>
#include <fstream>
#include <optional>

#include "core/error.h"
#include "io_test_util.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;
using testing::list_dir;
using testing::ScratchDir;

// Sets (or unsets) an environment variable for the scope, restoring it afterwards.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      setenv(name, value->c_str(), 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      setenv(name_, old_->c_str(), 1);
    else
      unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

std::string error_of(const std::string& model) {
  try {
    resolve_model_folder(model);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    return e.what();
  }
  ADD_FAILURE() << "resolved " << model;
  return "";
}

// The layout huggingface_hub creates: models--org--name/{refs/main, snapshots/<revision>/...}.
fs::path make_snapshot(const fs::path& cache, const std::string& repo_dir, const std::string& revision) {
  fs::path snapshot = cache / repo_dir / "snapshots" / revision;
  fs::create_directories(snapshot);
  std::ofstream(snapshot / "config.json") << "{}";
  return snapshot;
}

TEST(HfFolder, ExistingDirectoryIsTakenAsIs) {
  ScratchDir dir;
  EXPECT_EQ(resolve_model_folder(dir.path().string()), dir.path());
}

TEST(HfFolder, CacheDirFollowsHuggingFaceHub) {
  ScopedEnv cache("HF_HUB_CACHE", "/x/hub-cache");
  ScopedEnv home("HF_HOME", "/y/hf-home");
  EXPECT_EQ(hf_hub_cache_dir(), fs::path("/x/hub-cache"));
  {
    ScopedEnv no_cache("HF_HUB_CACHE", std::nullopt);
    EXPECT_EQ(hf_hub_cache_dir(), fs::path("/y/hf-home/hub"));
    ScopedEnv no_home("HF_HOME", std::nullopt);
    ScopedEnv user_home("HOME", "/home/someone");
    EXPECT_EQ(hf_hub_cache_dir(), fs::path("/home/someone/.cache/huggingface/hub"));
  }
}

TEST(HfFolder, ResolvesModelIdThroughRefsMain) {
  ScratchDir dir;
  ScopedEnv cache("HF_HUB_CACHE", dir.path().string());
  make_snapshot(dir.path(), "models--Qwen--Qwen3-30B-A3B", "0123abcd");
  fs::path main = make_snapshot(dir.path(), "models--Qwen--Qwen3-30B-A3B", "89efcafe");
  fs::create_directories(dir / "models--Qwen--Qwen3-30B-A3B" / "refs");
  std::ofstream(dir / "models--Qwen--Qwen3-30B-A3B" / "refs" / "main") << "89efcafe";
  EXPECT_EQ(resolve_model_folder("Qwen/Qwen3-30B-A3B"), main);
}

TEST(HfFolder, FallsBackToTheOnlySnapshot) {
  ScratchDir dir;
  ScopedEnv no_cache("HF_HUB_CACHE", std::nullopt);
  ScopedEnv home("HF_HOME", dir.path().string());
  fs::path only = make_snapshot(dir / "hub", "models--gpt2", "abc");
  EXPECT_EQ(resolve_model_folder("gpt2"), only);
}

TEST(HfFolder, ErrorListsWhereItLooked) {
  ScratchDir dir;
  ScopedEnv cache("HF_HUB_CACHE", dir.path().string());
  std::string absent = error_of("org/absent-model");
  EXPECT_NE(absent.find("org/absent-model"), std::string::npos) << absent;
  EXPECT_NE(absent.find("no folder"), std::string::npos) << absent;
  EXPECT_NE(absent.find((dir / "models--org--absent-model" / "snapshots").string()), std::string::npos)
      << absent;

  make_snapshot(dir.path(), "models--org--two", "rev1");
  make_snapshot(dir.path(), "models--org--two", "rev2");
  std::string two = error_of("org/two");
  EXPECT_NE(two.find("holds 2 snapshots"), std::string::npos) << two;
  EXPECT_NE(two.find("refs/main"), std::string::npos) << two;

  fs::create_directories(dir / "models--org--stale" / "refs");
  make_snapshot(dir.path(), "models--org--stale", "old");
  make_snapshot(dir.path(), "models--org--stale", "older");
  std::ofstream(dir / "models--org--stale" / "refs" / "main") << "gone\n";
  std::string stale = error_of("org/stale");
  EXPECT_NE(stale.find("names revision 'gone'"), std::string::npos) << stale;

  try {
    resolve_model_folder("");
    ADD_FAILURE() << "resolved an empty model argument";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }

  std::string not_an_id = error_of("a/b/c");
  EXPECT_EQ(not_an_id.find("models--"), std::string::npos) << not_an_id;
}

TEST(HfFolder, OnlyAModelIdIsToldToDownload) {
  ScratchDir dir;
  ScopedEnv cache("HF_HUB_CACHE", dir.path().string());
  // A path that is not there: downloading it means nothing ('hf download /nonexistent/model').
  const std::string path = error_of("/nonexistent/model");
  EXPECT_EQ(path.find("hf download"), std::string::npos) << path;
  EXPECT_NE(path.find("no such folder, and not a Hugging Face model id"), std::string::npos) << path;
  const std::string id = error_of("org/absent-model");
  EXPECT_NE(id.find("fetch it first, e.g. 'hf download org/absent-model'"), std::string::npos) << id;
}

TEST(HfFolder, AtomicWriteReplacesAndLeavesNoTemporaries) {
  ScratchDir dir;
  atomic_write_file(dir / "config.json", "{\"a\": 1}\n");
  atomic_write_file(dir / "config.json", "{\"a\": 2}\n");
  std::ifstream in(dir / "config.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "{\"a\": 2}\n");
  EXPECT_EQ(list_dir(dir.path()), std::set<std::string>{"config.json"});
  try {
    atomic_write_file(dir / "missing" / "config.json", "{}");
    ADD_FAILURE() << "wrote into a missing folder";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("missing/config.json"), std::string::npos) << e.what();
  }
  EXPECT_EQ(list_dir(dir.path()), std::set<std::string>{"config.json"});
}

}  // namespace
}  // namespace moeforge
