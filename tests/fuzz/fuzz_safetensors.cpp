// Parses arbitrary bytes as a safetensors file from memory. A malformed input must end in a
// moeforge::Error; anything else (another exception, an out-of-bounds read, UB) is a bug. Every
// accepted tensor is read in full, so an offset the validation let through past the buffer shows up.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/sha256.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeforge;
  try {
    SafetensorsFile file = SafetensorsFile::parse(data, size, "fuzz input", nullptr);
    Sha256 hash;
    for (const TensorInfo& info : file.tensors()) {
      Tensor t = file.get(info.name);
      if (t.numel() > 0) (void)t.item_float(t.numel() - 1);
      hash.update(t.raw_data(), t.nbytes());
    }
    (void)hash.hex_digest();
  } catch (const Error&) {
  }
  return 0;
}
