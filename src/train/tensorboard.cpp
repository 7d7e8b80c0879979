#include "train/tensorboard.h"

#include <chrono>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace moeforge {
namespace {

// CRC-32C (Castagnoli), as TFRecord framing uses it, with TensorFlow's masking.
uint32_t crc32c(const void* data, size_t n) {
  static uint32_t table[256] = {};
  if (table[1] == 0)
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
  uint32_t crc = 0xFFFFFFFFu;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

uint32_t masked_crc(const void* data, size_t n) {
  uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

// Protocol-buffer wire format: key = field << 3 | wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32).
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
template <typename T>
void put_fixed(std::string& out, int field, int wire_type, T v) {
  put_varint(out, static_cast<uint64_t>(field << 3 | wire_type));
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));  // little-endian host, as the wire format
  out.append(bytes, sizeof(T));
}
void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_varint(out, static_cast<uint64_t>(field << 3 | 2));
  put_varint(out, bytes.size());
  out += bytes;
}

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
std::string event_header(int64_t step) {
  std::string e;
  put_fixed<double>(e, 1, 1, wall_time());
  put_varint(e, 2 << 3 | 0);
  put_varint(e, static_cast<uint64_t>(step));
  return e;
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& log_dir) {
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  MF_CHECK(!ec, kIo, "cannot create the TensorBoard folder ", log_dir, ": ", ec.message());
  path_ = (std::filesystem::path(log_dir) /
           ("events.out.tfevents." + std::to_string(static_cast<int64_t>(wall_time())) + ".moeforge"))
              .string();
  out_.open(path_, std::ios::binary | std::ios::app);
  MF_CHECK(out_.good(), kIo, "cannot create the TensorBoard event file ", path_);
  std::string e = event_header(0);
  put_bytes(e, 3, "brain.Event:2");
  write_record(e);
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  // Summary { repeated Value value = 1; }  Value { string tag = 1; float simple_value = 2; }
  std::string v;
  put_bytes(v, 1, tag);
  put_fixed<float>(v, 2, 5, static_cast<float>(value));
  std::string summary;
  put_bytes(summary, 1, v);
  std::string e = event_header(step);
  put_bytes(e, 5, summary);
  write_record(e);
}

void TensorBoardWriter::write_record(const std::string& data) {
  // TFRecord: uint64 length, masked crc of the length, the data, masked crc of the data.
  uint64_t len = data.size();
  uint32_t len_crc = masked_crc(&len, sizeof len), data_crc = masked_crc(data.data(), data.size());
  out_.write(reinterpret_cast<const char*>(&len), sizeof len);
  out_.write(reinterpret_cast<const char*>(&len_crc), sizeof len_crc);
  out_.write(data.data(), static_cast<std::streamsize>(data.size()));
  out_.write(reinterpret_cast<const char*>(&data_crc), sizeof data_crc);
  MF_CHECK(out_.good(), kIo, "writing the TensorBoard event file ", path_, " failed");
}

void TensorBoardWriter::flush() {
  // The buffered writes reach the disk here: a full disk shows up at this point, not before.
  out_.flush();
  MF_CHECK(out_.good(), kIo, "writing the TensorBoard event file ", path_, " failed (disk full or removed?)");
}

}  // namespace moeforge
