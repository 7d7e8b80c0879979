// moeforge: the command-line front door. Dispatches to the registered subcommands and is the only
// place that turns an error into an exit code (documented in README.md).
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "dist/launch.h"

namespace {

void print_usage() {
  std::printf("usage: moeforge <command> [options]   (moeforge --version: the version)\n\ncommands:\n");
  for (const auto& c : moeforge::cli::all_commands())
    std::printf("  %-14s %s\n", c.name.c_str(), c.summary.c_str());
  std::printf("\n'moeforge <command> --help' lists a command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moeforge;
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  if (std::strcmp(argv[1], "--version") == 0 || std::strcmp(argv[1], "-V") == 0) {
    std::printf("moeforge %s\n", MOEFORGE_VERSION);
    return 0;
  }
  const std::string name = argv[1];
  const cli::CommandSpec* command = nullptr;
  std::vector<std::string> names;
  for (const auto& c : cli::all_commands()) {
    names.push_back(c.name);
    if (c.name == name) command = &c;
  }
  try {
    if (command == nullptr) {
      std::string hint = cli::closest_match(name, names);
      fail(ErrorCode::kInvalidArgument, "unknown command '", name, "'",
           hint.empty() ? std::string() : str_cat(" (did you mean '", hint, "'?)"),
           "; 'moeforge --help' lists the commands");
    }
    std::vector<std::string> args(argv + 2, argv + argc);
    for (const auto& a : args) {
      if (a == "--help" || a == "-h") {
        std::fputs(cli::command_help(*command).c_str(), stdout);
        return 0;
      }
    }
    return command->run(cli::parse_options(*command, args));
  } catch (const Error& e) {
    std::fprintf(stderr, "moeforge: %serror: %s\n", failing_rank_label().c_str(), e.what());
    return end_world_on_failure(exit_code_for(e.code()));
  } catch (const std::bad_alloc&) {
    // Tensors report their own size (kOutOfMemory); this is any other host allocation.
    std::fprintf(stderr, "moeforge: %serror: out of host memory in 'moeforge %s' (a container, string or file "
                 "buffer could not grow; large inputs such as very long dataset lines or templates that build "
                 "huge values need more memory)\n", failing_rank_label().c_str(), name.c_str());
    return end_world_on_failure(exit_code_for(ErrorCode::kOutOfMemory));
  } catch (const std::filesystem::filesystem_error& e) {
    // Library code names its paths in its own errors; this is a file-system call that was not wrapped.
    std::fprintf(stderr, "moeforge: %serror: %s\n", failing_rank_label().c_str(), e.what());
    return end_world_on_failure(exit_code_for(ErrorCode::kIo));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moeforge: %sinternal error: %s\n", failing_rank_label().c_str(), e.what());
    return end_world_on_failure(1);
  }
}
