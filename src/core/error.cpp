#include "core/error.h"

namespace moeforge {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kNotFound: return "not found";
    case ErrorCode::kIo: return "I/O error";
    case ErrorCode::kFormat: return "format error";
    case ErrorCode::kShape: return "shape error";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kOutOfMemory: return "out of memory";
    case ErrorCode::kBackend: return "backend error";
    case ErrorCode::kNumerical: return "numerical error";
    case ErrorCode::kInternal: return "internal error";
  }
  return "error";
}

int exit_code_for(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kNotFound:
    case ErrorCode::kFormat:
    case ErrorCode::kShape:
    case ErrorCode::kUnsupported: return 2;
    case ErrorCode::kIo: return 3;
    case ErrorCode::kOutOfMemory: return 4;
    case ErrorCode::kBackend: return 5;
    case ErrorCode::kNumerical: return 6;
    case ErrorCode::kInternal: return 1;
  }
  return 1;
}

}  // namespace moeforge
