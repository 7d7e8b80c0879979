// SHA-256 (FIPS 180-4), to compare tensor bytes across tools and to fingerprint files.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace moeforge {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t bytes);
  std::array<uint8_t, 32> digest();  // finishes the hash; the object is spent afterwards
  std::string hex_digest();          // lowercase hex, as Python's hashlib

 private:
  void compress(const uint8_t* block);
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

std::string sha256_hex(const void* data, size_t bytes);

}  // namespace moeforge
