// A Jinja2 template engine for chat templates, configured as Transformers configures its own:
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker,
// loopcontrols]) with its tojson filter and the raise_exception / strftime_now globals.
//
// Supported: {{ }}, {% %}, {# #}, {% raw %}, whitespace control (-, +, trim_blocks, lstrip_blocks),
// if/elif/else, for (tuple targets, inline `if` filter, else, loop.*, break/continue), set (incl.
// namespace attributes and block set with filters), macro with defaults, filter blocks, with,
// {% generation %} (records the output spans it renders, as Transformers' AssistantTracker does),
// Python-like expressions with Jinja2's precedence, the filters, tests, string and dict methods
// chat templates use. Values follow Python (value.h); an undefined name prints as "" and fails
// when used as an object, as Jinja2's default Undefined does.
//
// Not supported (a syntax error names them): extends/block/include/import, call blocks, *args in
// calls. Case mapping (upper/lower/title) covers Latin, Greek and Cyrillic letters, not Python's
// full Unicode tables.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/value.h"

namespace moeforge::chat {

// Bounds that keep a hostile template from hanging or exhausting memory; exceeding one is an Error.
struct RenderLimits {
  size_t max_output_bytes = size_t{1} << 28;  // any one output buffer (the result, a macro, a set block)
  // Loop iterations + macro calls + filter applications. Real templates take under 10 steps per
  // message (Qwen3's 4.5, tests/data/chat's at most 9, on 2,000-message conversations), so this
  // allows ~100,000 messages while a runaway loop stops within a second or two.
  int64_t max_steps = 1'000'000;
  int max_depth = 256;                        // nested macro calls and nested expressions
};

struct RenderResult {
  std::string text;
  // [begin, end) byte offsets of what each {% generation %} block rendered, in render order. As in
  // Transformers, `begin` is the length of the template's top-level output when the block ends.
  std::vector<std::pair<size_t, size_t>> generation_spans;
};

class Template {
 public:
  // Parses `source`; a syntax error throws Error(kFormat) "<name>:<line>:<column>: <message>".
  static Template parse(std::string_view source, std::string name);

  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;
  ~Template();

  // Renders with `variables` as the template's context. Errors (an undefined object used, a type
  // error, raise_exception) throw Error naming the template and the line:column of the expression.
  RenderResult render(const ValueDict& variables, const RenderLimits& limits = {}) const;

  bool has_generation_blocks() const;
  const std::string& name() const;

  struct Impl;

 private:
  explicit Template(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moeforge::chat
