// Fuzz target: bytes -> template source -> parse -> render with a fixed chat context. Errors
// (moeforge::Error) are expected outcomes; crashes, sanitizer reports, hangs and runaway memory are
// bugs. The render limits are small so that every input finishes quickly.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "chat/jinja.h"
#include "core/error.h"

namespace {

const moeforge::chat::ValueDict& context() {
  static const moeforge::chat::ValueDict vars = [] {
    moeforge::chat::ValueDict d;
    d.set("messages", moeforge::chat::Value::from_json(nlohmann::ordered_json::parse(R"([
      {"role": "system", "content": "sys"},
      {"role": "user", "content": "héllo <tool_response>x</tool_response>"},
      {"role": "assistant", "content": "<think>\nr\n</think>\n\nok", "reasoning_content": null,
       "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": [1, 2.5, true]}}}]},
      {"role": "tool", "content": "{\"r\": 1}"}])")));
    d.set("tools", moeforge::chat::Value::from_json(nlohmann::ordered_json::parse(
                       R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])")));
    d.set("add_generation_prompt", moeforge::chat::Value(true));
    d.set("bos_token", moeforge::chat::Value("<s>"));
    d.set("eos_token", moeforge::chat::Value("</s>"));
    return d;
  }();
  return vars;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  moeforge::chat::RenderLimits limits;
  limits.max_output_bytes = 1 << 16;
  limits.max_steps = 20000;
  limits.max_depth = 64;
  try {
    auto t = moeforge::chat::Template::parse(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    t.render(context(), limits);
  } catch (const moeforge::Error&) {
  }
  return 0;
}
