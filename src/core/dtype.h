// Element types. Names follow safetensors ("F32", "BF16", ...) on disk and PyTorch ("float32",
// "bfloat16", ...) in configs and flags. mxfp4 weights (GPT-OSS) load as their raw U8 blocks and scales.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace moeforge {

enum class DType : uint8_t {
  kF64,
  kF32,
  kBF16,
  kF16,
  kF8E4M3,
  kF8E5M2,
  kI64,
  kI32,
  kI16,
  kI8,
  kU8,
  kBool,
};

size_t dtype_size(DType dtype);
bool dtype_is_floating(DType dtype);

// safetensors header names: "F32", "BF16", "F8_E4M3", ... (nullopt for an unknown name).
std::string_view dtype_safetensors_name(DType dtype);
std::optional<DType> dtype_from_safetensors_name(std::string_view name);

// PyTorch names as found in config.json ("torch_dtype"/"dtype") and on the command line.
std::string_view dtype_torch_name(DType dtype);
std::optional<DType> dtype_from_torch_name(std::string_view name);

// Scalar conversions. bf16/f16/fp8 are stored as their raw bits; float -> narrow rounds to nearest even.
inline float bf16_to_float(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_float(uint16_t bits);
uint16_t float_to_f16(float f);
float f8e4m3_to_float(uint8_t bits);
uint8_t float_to_f8e4m3(float f);  // saturates to ±448, NaN stays NaN
float f8e5m2_to_float(uint8_t bits);
uint8_t float_to_f8e5m2(float f);

// Converts n elements between any two floating or integer types through double.
void convert_elements(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n);

}  // namespace moeforge
