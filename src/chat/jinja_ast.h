// The parsed form of a template (internal to src/chat): expressions and statements. Positions are
// byte offsets into the template source after newline normalisation, turned into line:column only
// when an error is reported.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/jinja.h"
#include "chat/value.h"

namespace moeforge::chat {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,    // literal
    kName,       // name
    kList,       // args
    kTuple,      // args
    kDict,       // args: key, value, key, value, ...
    kGetAttr,    // args[0].name
    kGetItem,    // args[0][args[1]]
    kSlice,      // args[0][args[1]:args[2]:args[3]], each bound may be null
    kCall,       // args[0](args[1..], kwargs)
    kFilter,     // args[0] | name(args[1..], kwargs); args[0] null in a filter block or block set
    kTest,       // args[0] is [not] name(args[1..]); `negated`
    kUnary,      // name in {"-", "+", "not"}; args[0]
    kBinary,     // args[0] name args[1]; name in {+, -, *, /, //, %, **, and, or}
    kCompare,    // args[0] ops[0] args[1] ops[1] args[2] ...; ops in {==, !=, <, <=, >, >=, in, notin}
    kConcat,     // args joined with ~
    kCondition,  // args[1] if args[0] else args[2]; args[2] may be null
  };
  Kind kind;
  size_t pos = 0;
  std::string name;
  Value literal;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;
  int height = 1;  // longest path to a leaf; the parser bounds it so evaluation cannot overflow the stack
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using StmtList = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind {
    kText,        // text
    kOutput,      // {{ expr }}
    kIf,          // if expr: body else else_body (an elif is an If alone in else_body)
    kFor,         // for targets in expr [if condition]: body else else_body
    kSet,         // set targets = expr, or set targets[0].attribute = expr (namespace)
    kSetBlock,    // set targets[0] [| filter] %} body {% endset
    kMacro,       // macro name(params = defaults) body
    kFilterBlock, // filter chain applied to body
    kWith,        // with params = defaults (values): body
    kBreak,
    kContinue,
    kGeneration,  // generation body
  };
  Kind kind;
  size_t pos = 0;
  std::string text;                 // kText; the macro name; the namespace attribute for kSet
  ExprPtr expr;                     // output, if-test, for-iterable, set value
  ExprPtr condition;                // for's inline filter
  ExprPtr filter;                   // kSetBlock / kFilterBlock: filter chain, innermost args[0] null
  std::vector<std::string> targets; // for/set names; several unpack a sequence
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro parameters (default may be null), with
  StmtList body, else_body;
};

struct Template::Impl {
  std::string name;
  std::string source;  // newline-normalised, for error positions
  StmtList body;
  bool has_generation = false;
};

// Parses a template (jinja_parse.cpp).
std::unique_ptr<Template::Impl> parse_template(std::string_view source, std::string name);

// "name:line:column" of a byte offset into the normalised source.
std::string source_location(const Template::Impl& t, size_t pos);

// The names the filters and tests exist under (jinja_builtins.cpp); the parser rejects others.
bool is_known_filter(const std::string& name);
bool is_known_test(const std::string& name);

}  // namespace moeforge::chat
