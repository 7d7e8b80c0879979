#include "core/dtype.h"

#include <cmath>

#include "core/error.h"

namespace moeforge {
namespace {

struct DTypeInfo {
  DType dtype;
  size_t size;
  bool floating;
  std::string_view safetensors_name;
  std::string_view torch_name;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF64, 8, true, "F64", "float64"},
    {DType::kF32, 4, true, "F32", "float32"},
    {DType::kBF16, 2, true, "BF16", "bfloat16"},
    {DType::kF16, 2, true, "F16", "float16"},
    {DType::kF8E4M3, 1, true, "F8_E4M3", "float8_e4m3fn"},
    {DType::kF8E5M2, 1, true, "F8_E5M2", "float8_e5m2"},
    {DType::kI64, 8, false, "I64", "int64"},
    {DType::kI32, 4, false, "I32", "int32"},
    {DType::kI16, 2, false, "I16", "int16"},
    {DType::kI8, 1, false, "I8", "int8"},
    {DType::kU8, 1, false, "U8", "uint8"},
    {DType::kBool, 1, false, "BOOL", "bool"},
};

const DTypeInfo& info(DType dtype) { return kDTypes[static_cast<int>(dtype)]; }

// Decodes a minifloat with the given exponent/mantissa widths and bias (no infinities for e4m3fn).
float decode_minifloat(uint32_t bits, int exp_bits, int man_bits, int bias) {
  uint32_t sign = bits >> (exp_bits + man_bits);
  uint32_t exp = (bits >> man_bits) & ((1u << exp_bits) - 1);
  uint32_t man = bits & ((1u << man_bits) - 1);
  float value;
  if (exp == 0) {
    value = std::ldexp(static_cast<float>(man), 1 - bias - man_bits);
  } else {
    value = std::ldexp(static_cast<float>(man | (1u << man_bits)), static_cast<int>(exp) - bias - man_bits);
  }
  return sign ? -value : value;
}

// Round-to-nearest-even encode into a minifloat; `max_finite` saturates, NaN maps to `nan_bits`.
uint32_t encode_minifloat(float f, int exp_bits, int man_bits, int bias, float max_finite,
                          uint32_t nan_bits, bool has_inf) {
  uint32_t sign = std::signbit(f) ? 1u : 0u;
  uint32_t sign_bit = sign << (exp_bits + man_bits);
  if (std::isnan(f)) return nan_bits | sign_bit;
  float a = std::fabs(f);
  if (std::isinf(a) && has_inf) return sign_bit | (((1u << exp_bits) - 1) << man_bits);
  if (a >= max_finite) {
    // Values past the largest finite number saturate (the fp8 training convention).
    a = max_finite;
  }
  int min_normal_exp = 1 - bias;
  int e;
  std::frexp(a, &e);  // a = m * 2^e with m in [0.5, 1)
  int exp_unbiased = e - 1;
  if (a == 0.0f) return sign_bit;
  int shift_exp = exp_unbiased < min_normal_exp ? min_normal_exp : exp_unbiased;
  // quantum at this exponent
  float scaled = std::ldexp(a, man_bits - shift_exp);
  float rounded = std::nearbyint(scaled);  // default rounding mode: to nearest even
  uint32_t q = static_cast<uint32_t>(rounded);
  uint32_t result;
  if (exp_unbiased < min_normal_exp) {
    // subnormal: q may round up into the smallest normal, which the bit layout handles
    result = q;
  } else {
    if (q >= (2u << man_bits)) {  // mantissa overflow: next binade
      q >>= 1;
      shift_exp += 1;
    }
    result = (static_cast<uint32_t>(shift_exp + bias) << man_bits) | (q & ((1u << man_bits) - 1));
  }
  return sign_bit | result;
}

}  // namespace

size_t dtype_size(DType dtype) { return info(dtype).size; }
bool dtype_is_floating(DType dtype) { return info(dtype).floating; }
std::string_view dtype_safetensors_name(DType dtype) { return info(dtype).safetensors_name; }
std::string_view dtype_torch_name(DType dtype) { return info(dtype).torch_name; }

std::optional<DType> dtype_from_safetensors_name(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.safetensors_name == name) return d.dtype;
  return std::nullopt;
}

std::optional<DType> dtype_from_torch_name(std::string_view name) {
  if (name.starts_with("torch.")) name.remove_prefix(6);
  for (const auto& d : kDTypes)
    if (d.torch_name == name) return d.dtype;
  if (name == "float") return DType::kF32;
  if (name == "half") return DType::kF16;
  return std::nullopt;
}

float f16_to_float(uint16_t bits) {
  uint32_t exp = (bits >> 10) & 0x1f;
  if (exp == 0x1f) {
    uint32_t sign = bits >> 15;
    if (bits & 0x3ff) return std::nanf("");
    return sign ? -INFINITY : INFINITY;
  }
  return decode_minifloat(bits, 5, 10, 15);
}

uint16_t float_to_f16(float f) {
  return static_cast<uint16_t>(encode_minifloat(f, 5, 10, 15, 65504.0f, 0x7e00, true) &
                               0xffff);
}

float f8e4m3_to_float(uint8_t bits) {
  if ((bits & 0x7f) == 0x7f) return std::nanf("");
  return decode_minifloat(bits, 4, 3, 7);
}

uint8_t float_to_f8e4m3(float f) {
  return static_cast<uint8_t>(encode_minifloat(f, 4, 3, 7, 448.0f, 0x7f, false));
}

float f8e5m2_to_float(uint8_t bits) {
  uint32_t exp = (bits >> 2) & 0x1f;
  if (exp == 0x1f) {
    if (bits & 0x3) return std::nanf("");
    return (bits & 0x80) ? -INFINITY : INFINITY;
  }
  return decode_minifloat(bits, 5, 2, 15);
}

uint8_t float_to_f8e5m2(float f) {
  return static_cast<uint8_t>(encode_minifloat(f, 5, 2, 15, 57344.0f, 0x7f, true));
}

namespace {

double load_as_double(const void* src, DType dtype, size_t i) {
  switch (dtype) {
    case DType::kF64: return static_cast<const double*>(src)[i];
    case DType::kF32: return static_cast<const float*>(src)[i];
    case DType::kBF16: return bf16_to_float(static_cast<const uint16_t*>(src)[i]);
    case DType::kF16: return f16_to_float(static_cast<const uint16_t*>(src)[i]);
    case DType::kF8E4M3: return f8e4m3_to_float(static_cast<const uint8_t*>(src)[i]);
    case DType::kF8E5M2: return f8e5m2_to_float(static_cast<const uint8_t*>(src)[i]);
    case DType::kI64: return static_cast<double>(static_cast<const int64_t*>(src)[i]);
    case DType::kI32: return static_cast<const int32_t*>(src)[i];
    case DType::kI16: return static_cast<const int16_t*>(src)[i];
    case DType::kI8: return static_cast<const int8_t*>(src)[i];
    case DType::kU8: return static_cast<const uint8_t*>(src)[i];
    case DType::kBool: return static_cast<const uint8_t*>(src)[i] != 0;
  }
  return 0;
}

void store_double(void* dst, DType dtype, size_t i, double v) {
  switch (dtype) {
    case DType::kF64: static_cast<double*>(dst)[i] = v; break;
    case DType::kF32: static_cast<float*>(dst)[i] = static_cast<float>(v); break;
    case DType::kBF16: static_cast<uint16_t*>(dst)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::kF16: static_cast<uint16_t*>(dst)[i] = float_to_f16(static_cast<float>(v)); break;
    case DType::kF8E4M3: static_cast<uint8_t*>(dst)[i] = float_to_f8e4m3(static_cast<float>(v)); break;
    case DType::kF8E5M2: static_cast<uint8_t*>(dst)[i] = float_to_f8e5m2(static_cast<float>(v)); break;
    case DType::kI64: static_cast<int64_t*>(dst)[i] = static_cast<int64_t>(v); break;
    case DType::kI32: static_cast<int32_t*>(dst)[i] = static_cast<int32_t>(v); break;
    case DType::kI16: static_cast<int16_t*>(dst)[i] = static_cast<int16_t>(v); break;
    case DType::kI8: static_cast<int8_t*>(dst)[i] = static_cast<int8_t>(v); break;
    case DType::kU8: static_cast<uint8_t*>(dst)[i] = static_cast<uint8_t>(v); break;
    case DType::kBool: static_cast<uint8_t*>(dst)[i] = v != 0; break;
  }
}

}  // namespace

void convert_elements(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n) {
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, n * dtype_size(src_dtype));
    return;
  }
  // The common training conversions get direct loops; everything else goes through double.
  if (src_dtype == DType::kBF16 && dst_dtype == DType::kF32) {
    auto* s = static_cast<const uint16_t*>(src);
    auto* d = static_cast<float*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = bf16_to_float(s[i]);
    return;
  }
  if (src_dtype == DType::kF32 && dst_dtype == DType::kBF16) {
    auto* s = static_cast<const float*>(src);
    auto* d = static_cast<uint16_t*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = float_to_bf16(s[i]);
    return;
  }
  if (src_dtype == DType::kI64 && dst_dtype == DType::kI32) {
    auto* s = static_cast<const int64_t*>(src);
    auto* d = static_cast<int32_t*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = static_cast<int32_t>(s[i]);
    return;
  }
  for (size_t i = 0; i < n; ++i) store_double(dst, dst_dtype, i, load_as_double(src, src_dtype, i));
}

}  // namespace moeforge
