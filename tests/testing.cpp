#include "testing.h"

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

namespace moeforge::testing {
namespace {

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::filesystem::path unique_temp_path(const std::string& stem) {
  return std::filesystem::temp_directory_path() / (stem + "_" + std::to_string(::getpid()));
}

CommandResult run_moeforge(const std::vector<std::string>& args, const std::string& stdin_text) {
  auto dir = std::filesystem::temp_directory_path() /
             ("mf_cmd_" + std::to_string(::getpid()) + "_" + std::to_string(std::rand()));
  std::filesystem::create_directories(dir);
  const char* env = std::getenv("MOEFORGE_BINARY");
  std::string cmd = shell_quote(env != nullptr && *env != '\0' ? env : MOEFORGE_BINARY);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  {
    std::ofstream in(dir / "stdin", std::ios::binary);
    in << stdin_text;
  }
  cmd += " <" + shell_quote((dir / "stdin").string()) + " >" + shell_quote((dir / "out").string()) +
         " 2>" + shell_quote((dir / "err").string());
  int status = std::system(cmd.c_str());
  CommandResult r{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
                  slurp(dir / "out"), slurp(dir / "err")};
  std::filesystem::remove_all(dir);
  return r;
}

}  // namespace moeforge::testing
