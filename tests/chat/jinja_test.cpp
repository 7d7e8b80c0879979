// The template engine's error behaviour: syntax errors name the template and line:column, undefined
// values behave as Jinja2's default Undefined, raise_exception's message reaches the caller, and the
// render limits stop runaway templates. Expected strings for rendering come from Jinja2 itself (the
// Python goldens in tests/python/test_chat_template.py cover rendering at large); the values below
// were checked against jinja2 3.1 configured as Transformers configures it.
#include <gtest/gtest.h>

#include <string>

#include "chat/chat_template.h"
#include "chat/jinja.h"
#include "core/error.h"
#include "testing.h"

namespace moeforge::chat {
namespace {

std::string render(const std::string& source, const ValueDict& variables = {}) {
  return Template::parse(source, "test.jinja").render(variables).text;
}

// The message of the Error that parsing or rendering throws; fails the test if none is thrown.
std::string error_of(const std::string& source, ErrorCode expected_code, const ValueDict& variables = {}) {
  try {
    render(source, variables);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), expected_code) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error for: " << source;
  return "";
}

ValueDict messages_context() {
  ValueDict vars;
  vars.set("messages", Value::from_json(nlohmann::ordered_json::parse(
                           R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])")));
  return vars;
}

TEST(JinjaSyntax, UnclosedBlockNamesItsOpening) {
  std::string msg = error_of("line one\n  {% for m in messages %}\n{{ m }}", ErrorCode::kFormat);
  EXPECT_NE(msg.find("test.jinja:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'endfor'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("the 'for' block at test.jinja:2:6"), std::string::npos) << msg;  // where it began
}

TEST(JinjaSyntax, UnbalancedBracketHasLineAndColumn) {
  std::string msg = error_of("ok\n{{ (1 + 2 }}", ErrorCode::kFormat);
  EXPECT_EQ(msg.rfind("test.jinja:2:", 0), 0u) << msg;
}

TEST(JinjaSyntax, PositionsCountCodePoints) {
  // Column 9: "héllo " is 6 code points (7 bytes), then "{{ " and the bad token.
  std::string msg = error_of("héllo {{ ) }}", ErrorCode::kFormat);
  EXPECT_EQ(msg.rfind("test.jinja:1:10: unexpected ')'", 0), 0u) << msg;
}

TEST(JinjaSyntax, UnknownTagFilterAndTest) {
  EXPECT_NE(error_of("{% frobnicate %}", ErrorCode::kFormat).find("unknown tag 'frobnicate'"), std::string::npos);
  EXPECT_NE(error_of("\n{{ x | nosuchfilter }}", ErrorCode::kFormat).find("test.jinja:2:8: No filter named 'nosuchfilter'"),
            std::string::npos);
  EXPECT_NE(error_of("{{ x is nosuchtest }}", ErrorCode::kFormat).find("No test named 'nosuchtest'"), std::string::npos);
  EXPECT_NE(error_of("{% extends 'base' %}", ErrorCode::kFormat).find("not supported"), std::string::npos);
}

TEST(JinjaSyntax, UnterminatedCommentAndString) {
  EXPECT_NE(error_of("a\n{# never closed", ErrorCode::kFormat).find("test.jinja:2:1: Missing end of comment tag"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 'open }}", ErrorCode::kFormat).find("unexpected end of string literal"), std::string::npos);
  EXPECT_NE(error_of("{% break %}", ErrorCode::kFormat).find("outside of a for loop"), std::string::npos);
}

TEST(JinjaSyntax, DeepNestingIsAnErrorNotACrash) {
  std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_NE(error_of(deep, ErrorCode::kFormat).find("nested too deeply"), std::string::npos);
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  EXPECT_NE(error_of(chain + " }}", ErrorCode::kFormat).find("nested too deeply"), std::string::npos);
  std::string ifs;
  for (int i = 0; i < 5000; ++i) ifs += "{% if true %}";
  EXPECT_NE(error_of(ifs, ErrorCode::kFormat).find("nested too deeply"), std::string::npos);
  std::string dicts;
  for (int i = 0; i < 100000; ++i) dicts += "{'a': ";
  for (const std::string& expression : {std::string(100000, '(') + "1" + std::string(100000, ')'),
                                        std::string(100000, '[') + std::string(100000, ']'),
                                        dicts + "1" + std::string(100000, '}')}) {
    EXPECT_NE(error_of("{{ " + expression + " }}", ErrorCode::kFormat).find("nested too deeply"), std::string::npos)
        << expression.substr(0, 10);
  }
  std::string many_ifs;
  for (int i = 0; i < 100000; ++i) many_ifs += "{% if true %}";
  EXPECT_NE(error_of(many_ifs, ErrorCode::kFormat).find("nested too deeply"), std::string::npos);
}

TEST(JinjaUndefined, PrintsEmptyAndIteratesAsEmpty) {
  EXPECT_EQ(render("[{{ nothing }}][{{ nothing | length }}][{% for x in nothing %}x{% endfor %}]"), "[][0][]");
  EXPECT_EQ(render("{{ nothing is defined }} {{ nothing is undefined }} {{ nothing == none }} {{ not nothing }}"),
            "False True False True");
  EXPECT_EQ(render("{{ nothing | default('fallback') }}|{{ nothing ~ 'x' }}"), "fallback|x");
  // A missing key of a defined dict is undefined, not an error.
  EXPECT_EQ(render("[{{ messages[0].nope }}][{{ messages[7] }}]", messages_context()), "[][]");
}

TEST(JinjaUndefined, UsingItAsAnObjectFails) {
  std::string msg = error_of("ok {{ nothing.attribute }}", ErrorCode::kFormat);
  EXPECT_NE(msg.find("test.jinja:1:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'nothing' is undefined"), std::string::npos) << msg;
  msg = error_of("{{ messages[0].nope.deeper }}", ErrorCode::kFormat, messages_context());
  EXPECT_NE(msg.find("'dict object' has no attribute 'nope'"), std::string::npos) << msg;
  msg = error_of("{{ messages[5].role }}", ErrorCode::kFormat, messages_context());
  EXPECT_NE(msg.find("list object has no element 5"), std::string::npos) << msg;
  msg = error_of("{{ nothing + 1 }}", ErrorCode::kFormat);
  EXPECT_NE(msg.find("'nothing' is undefined"), std::string::npos) << msg;
}

TEST(JinjaErrors, RaiseExceptionMessageSurfaces) {
  std::string source =
      "{% for m in messages %}\n"
      "{% if m.role == 'assistant' %}{{ raise_exception('Assistant turns are not allowed here') }}{% endif %}\n"
      "{% endfor %}";
  std::string msg = error_of(source, ErrorCode::kInvalidArgument, messages_context());
  EXPECT_NE(msg.find("Assistant turns are not allowed here"), std::string::npos) << msg;
  EXPECT_NE(msg.find("test.jinja:2:"), std::string::npos) << msg;
}

TEST(JinjaErrors, TypeErrorsNamePythonTypes) {
  EXPECT_NE(error_of("{{ 'a' + 1 }}", ErrorCode::kFormat).find("unsupported operand type(s) for +: 'str' and 'int'"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 1 / 0 }}", ErrorCode::kFormat).find("division by zero"), std::string::npos);
  EXPECT_NE(error_of("{% set x = 1 %}{% set x.a = 2 %}", ErrorCode::kFormat).find("non-namespace"), std::string::npos);
}

TEST(JinjaLimits, RunawayTemplatesStop) {
  RenderLimits limits;
  limits.max_steps = 10000;
  limits.max_output_bytes = 1 << 16;
  auto t = Template::parse("{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}", "loops");
  EXPECT_THROW(t.render({}, limits), Error);
  auto big = Template::parse("{% for a in range(100000) %}xxxxxxxxxx{% endfor %}", "output");
  EXPECT_THROW(big.render({}, limits), Error);
  auto doubling = Template::parse(
      "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "doubling");
  EXPECT_THROW(doubling.render({}, limits), Error);
  auto nested = Template::parse(
      "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
      "nested lists");
  EXPECT_THROW(nested.render({}, limits), Error);
  auto recursion = Template::parse("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion");
  EXPECT_THROW(recursion.render({}, limits), Error);
}

// A namespace stored in itself, directly or through a list or another namespace, could be neither
// printed nor freed (it crashed printing); the assignment is refused where it happens.
TEST(JinjaLimits, NamespaceCannotHoldItself) {
  std::string msg = error_of("{% set ns = namespace() %}\n{% set ns.a = ns %}{{ ns }}", ErrorCode::kFormat);
  EXPECT_EQ(msg.rfind("test.jinja:2:", 0), 0u) << msg;
  EXPECT_NE(msg.find("cannot store namespace 'ns' inside itself (as 'a')"), std::string::npos) << msg;
  EXPECT_NE(
      error_of("{% set ns = namespace() %}{% set ns.a = [1, {'k': ns}] %}", ErrorCode::kFormat).find("inside itself"),
      std::string::npos);
  EXPECT_NE(error_of("{% set a = namespace() %}{% set b = namespace(x=a) %}{% set a.y = [b] %}", ErrorCode::kFormat)
                .find("cannot store namespace 'a' inside itself (as 'y')"),
            std::string::npos);
  // Namespaces inside other namespaces, and the same list twice, are fine.
  EXPECT_EQ(render("{% set a = namespace(n=1) %}{% set b = namespace(x=a) %}{% set l = [a, a] %}{% set b.y = l %}"
                   "{{ b.y[1].n }}{{ b.x.n }}"),
            "11");
}

// A list 100,000 deep (one level per loop iteration) crashed printing it; every walk over a value
// (print, string, tojson, ==, <, in) stops at kMaxValueDepth with the expression's position, and
// freeing the value does not overflow the stack either.
TEST(JinjaLimits, DeepValuesAreRenderErrors) {
  const auto build = [](int depth) {
    return str_cat("{% set ns = namespace(a=[], b=[]) %}{% for i in range(", depth,
                   ") %}{% set ns.a = [ns.a] %}{% set ns.b = [ns.b] %}{% endfor %}\n");
  };
  std::string msg = error_of(build(100000) + "{{ ns.a }}", ErrorCode::kInvalidArgument);
  EXPECT_EQ(msg, "test.jinja:2:1: a value nests more than 512 lists or dicts deep");
  // 1,000 levels are past the limit too, and quicker to build (under ASan).
  for (const char* use : {"{{ ns.a | string }}", "{{ ns.a | tojson }}", "{{ ns.a == ns.b }}", "{{ ns.a < ns.b }}",
                          "{{ ns.a in [ns.b] }}", "{{ '%s' % [ns.a] }}"}) {
    msg = error_of(build(1000) + use, ErrorCode::kInvalidArgument);
    EXPECT_EQ(msg.rfind("test.jinja:2:", 0), 0u) << use << ": " << msg;
    EXPECT_NE(msg.find("a value nests more than 512 lists or dicts deep"), std::string::npos) << use << ": " << msg;
  }
  // Just inside the limit everything works.
  EXPECT_EQ(render("{% set ns = namespace(a=[]) %}{% for i in range(511) %}{% set ns.a = [ns.a] %}{% endfor %}"
                   "{{ (ns.a | string | length) == 2 * 512 }}{{ ns.a == ns.a }}{{ (ns.a | tojson | length) }}"),
            "TrueTrue1024");
}

TEST(JinjaLimits, DeepJsonDataIsAnError) {
  nlohmann::ordered_json deep = nlohmann::ordered_json::array();
  for (int i = 0; i < 600; ++i) deep = nlohmann::ordered_json::array({deep});
  try {
    Value::from_json(deep);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than 512"), std::string::npos) << e.what();
  }
}

// Doubling a list 64 times would need 2^64 items: the sum is refused before it is allocated.
TEST(JinjaLimits, ListsStopAtTheirSizeLimit) {
  std::string msg = error_of(
      "{% set ns = namespace(x=[1]) %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
      ErrorCode::kFormat);
  EXPECT_NE(msg.find("a list of 2097152 items is longer than the limit of 1048576"), std::string::npos) << msg;
  EXPECT_NE(error_of("{{ ([1, 2] * 1000000) | length }}", ErrorCode::kFormat).find("repetition too large"),
            std::string::npos);
  EXPECT_EQ(render("{{ ([1, 2] * 1000) | length }}"), "2000");
}

// The default step limit stops a runaway loop within seconds, naming the count.
TEST(JinjaLimits, DefaultStepLimitStopsRunawayLoops) {
  std::string msg = error_of("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
                             ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find(str_cat("rendering took more than ", RenderLimits{}.max_steps, " steps")), std::string::npos)
      << msg;
  EXPECT_EQ(RenderLimits{}.max_steps, 1'000'000);
}

TEST(JinjaGeneration, SpansCoverWhatTheBlocksRendered) {
  auto t = Template::parse("A{% generation %}bc{% endgeneration %}D{% generation %}é{% endgeneration %}", "gen");
  EXPECT_TRUE(t.has_generation_blocks());
  RenderResult r = t.render({});
  EXPECT_EQ(r.text, "AbcDé");
  ASSERT_EQ(r.generation_spans.size(), 2u);
  EXPECT_EQ(r.generation_spans[0], std::make_pair(size_t{1}, size_t{3}));
  EXPECT_EQ(r.generation_spans[1], std::make_pair(size_t{4}, size_t{6}));  // byte offsets
}

TEST(ChatTemplate, FolderWithoutTemplateIsNotFound) {
  const auto folder = testing::shared_assets_dir() / "tokenizers" / "gptoss";
  MF_SKIP_IF_MISSING(folder);
  try {
    ChatTemplate::from_folder(folder);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find("no chat template"), std::string::npos);
  }
}

TEST(ChatTemplate, EmptyConversationIsRejected) {
  ChatTemplate chat({{"default", "{{ messages }}"}}, {}, "inline");
  ChatRequest request;
  EXPECT_THROW(chat.render(request), Error);
}

}  // namespace
}  // namespace moeforge::chat
