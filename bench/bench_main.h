// The main() of a benchmark binary: runs `body`, turning errors into a message and the exit code of
// the moeforge CLI's table.
#pragma once

#include <cstdio>
#include <exception>

#include "core/error.h"

namespace moeforge {

inline int bench_main(const char* name, int (*body)(int, char**), int argc, char** argv) {
  try {
    return body(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return 1;
  }
}

}  // namespace moeforge
