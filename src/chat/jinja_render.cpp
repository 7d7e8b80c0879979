// The renderer: walks the parsed template with Jinja2's scoping (a for-loop iteration, a macro call,
// a block set, a filter block and a generation block each get their own scope; if does not).
#include <cmath>

#include "chat/jinja_ast.h"
#include "chat/jinja_builtins.h"

namespace moeforge::chat {

namespace {

struct Scope {
  std::shared_ptr<Scope> parent;
  std::vector<std::pair<std::string, Value>> vars;

  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s != nullptr; s = s->parent.get()) {
      for (const auto& [k, v] : s->vars)
        if (k == name) return &v;
    }
    return nullptr;
  }
  void set(const std::string& name, Value value) {
    for (auto& [k, v] : vars) {
      if (k == name) {
        v = std::move(value);
        return;
      }
    }
    vars.emplace_back(name, std::move(value));
  }
};
using ScopePtr = std::shared_ptr<Scope>;

ScopePtr child_scope(const ScopePtr& parent) {
  auto s = std::make_shared<Scope>();
  s->parent = parent;
  return s;
}

// An Error that names its template position already. Any other Error raised while evaluating an
// expression (a value nested too deep to print or compare, say) gets the expression's position.
struct PositionedError : Error {
  using Error::Error;
};

class Renderer {
 public:
  Renderer(const Template::Impl& t, const RenderLimits& limits, RenderResult& result)
      : t_(t), limits_(limits), result_(result) {}

  void run(const ValueDict& variables) {
    auto root = std::make_shared<Scope>();
    for (const auto& [k, v] : variables.items) root->set(k, v);
    exec_list(t_.body, root, result_.text);
  }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  [[noreturn]] void error(size_t pos, ErrorCode code, const std::string& message) const {
    throw PositionedError(code, str_cat(source_location(t_, pos), ": ", message));
  }

  void step(size_t pos) {
    if (++steps_ > limits_.max_steps)
      error(pos, ErrorCode::kInvalidArgument, str_cat("rendering took more than ", limits_.max_steps, " steps"));
  }

  void append(std::string& out, std::string_view text, size_t pos) {
    if (out.size() + text.size() > limits_.max_output_bytes)
      error(pos, ErrorCode::kInvalidArgument, str_cat("output exceeds ", limits_.max_output_bytes, " bytes"));
    out += text;
  }

  // ---- statements ----

  Flow exec_list(const StmtList& body, const ScopePtr& scope, std::string& out) {
    for (const auto& s : body) {
      Flow f = exec(*s, scope, out);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Flow exec(const Stmt& s, const ScopePtr& scope, std::string& out) {
    switch (s.kind) {
      case Stmt::Kind::kText: append(out, s.text, s.pos); return Flow::kNormal;
      case Stmt::Kind::kOutput: {
        Value v = eval(*s.expr, scope);
        append(out, to_text(v, s.pos), s.pos);
        return Flow::kNormal;
      }
      case Stmt::Kind::kIf:
        return exec_list(eval(*s.expr, scope).truthy() ? s.body : s.else_body, scope, out);
      case Stmt::Kind::kFor: return exec_for(s, scope, out);
      case Stmt::Kind::kSet: {
        Value v = eval(*s.expr, scope);
        if (!s.text.empty()) {  // {% set ns.attr = v %}
          const Value* ns = scope->find(s.targets[0]);
          if (ns == nullptr || !ns->is_dict() || !ns->as_dict().is_namespace)
            error(s.pos, ErrorCode::kFormat, "cannot assign attribute on non-namespace object '" + s.targets[0] + "'");
          // A namespace holding itself could not be printed or compared, nor ever freed.
          if (v.may_hold_namespace() && value_holds(v, ns->as_dict()))
            error(s.pos, ErrorCode::kFormat,
                  str_cat("cannot store namespace '", s.targets[0], "' inside itself (as '", s.text, "')"));
          ns->mutable_dict().set(s.text, std::move(v));
        } else {
          assign(s.targets, v, *scope, s.pos);
        }
        return Flow::kNormal;
      }
      case Stmt::Kind::kSetBlock: {
        std::string body;
        exec_list(s.body, child_scope(scope), body);
        Value v(std::move(body));
        if (s.filter) v = apply_filter_chain(*s.filter, &v, scope);
        scope->set(s.targets[0], v);
        return Flow::kNormal;
      }
      case Stmt::Kind::kFilterBlock: {
        std::string body;
        exec_list(s.body, child_scope(scope), body);
        Value text(std::move(body));
        append(out, to_text(apply_filter_chain(*s.filter, &text, scope), s.pos), s.pos);
        return Flow::kNormal;
      }
      case Stmt::Kind::kMacro: scope->set(s.text, make_macro(s, scope)); return Flow::kNormal;
      case Stmt::Kind::kWith: {
        auto inner = child_scope(scope);
        for (const auto& [name, expr] : s.params) inner->set(name, eval(*expr, scope));
        return exec_list(s.body, inner, out);
      }
      case Stmt::Kind::kBreak: return Flow::kBreak;
      case Stmt::Kind::kContinue: return Flow::kContinue;
      case Stmt::Kind::kGeneration: {
        // As Transformers' AssistantTracker: the span starts at the length of the top-level output.
        std::string body;
        exec_list(s.body, child_scope(scope), body);
        size_t begin = result_.text.size();
        result_.generation_spans.emplace_back(begin, begin + body.size());
        append(out, body, s.pos);
        return Flow::kNormal;
      }
    }
    return Flow::kNormal;
  }

  std::string to_text(const Value& v, size_t pos) {
    try {
      return v.str(limits_.max_output_bytes);
    } catch (const Error& e) {
      error(pos, e.code(), e.what());
    }
  }

  void assign(const std::vector<std::string>& targets, const Value& v, Scope& scope, size_t pos) {
    if (targets.size() == 1) {
      scope.set(targets[0], v);
      return;
    }
    ValueList items;
    try {
      items = iterate(v);
    } catch (const EvalError& e) {
      error(pos, e.code, e.message);
    }
    if (items.size() != targets.size())
      error(pos, ErrorCode::kFormat,
            str_cat("cannot unpack ", items.size(), " values into ", targets.size(), " names"));
    for (size_t i = 0; i < targets.size(); ++i) scope.set(targets[i], items[i]);
  }

  Flow exec_for(const Stmt& s, const ScopePtr& scope, std::string& out) {
    Value iterable = eval(*s.expr, scope);
    ValueList items;
    try {
      items = iterate(iterable);
    } catch (const EvalError& e) {
      error(s.expr->pos, e.code, e.message);
    }
    if (s.condition) {  // `for x in xs if cond`: filtered before the loop, so loop.length counts survivors
      ValueList kept;
      for (const auto& item : items) {
        step(s.pos);
        auto probe = child_scope(scope);
        assign(s.targets, item, *probe, s.pos);
        if (eval(*s.condition, probe).truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec_list(s.else_body, scope, out);
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      step(s.pos);
      auto body_scope = child_scope(scope);
      auto loop = std::make_shared<ValueDict>();
      loop->items = {
          {"index0", Value(i)},
          {"index", Value(i + 1)},
          {"revindex0", Value(n - i - 1)},
          {"revindex", Value(n - i)},
          {"first", Value(i == 0)},
          {"last", Value(i == n - 1)},
          {"length", Value(n)},
          {"depth", Value(int64_t{1})},
          {"depth0", Value(int64_t{0})},
          {"previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item")},
          {"nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item")},
          {"cycle", Value::function("loop.cycle", [i](const CallArgs& args) {
             if (args.positional.empty()) eval_fail("no items for cycling given");
             return args.positional[static_cast<size_t>(i) % args.positional.size()];
           })},
      };
      body_scope->set("loop", Value::dict(loop));
      assign(s.targets, items[static_cast<size_t>(i)], *body_scope, s.pos);
      if (exec_list(s.body, body_scope, out) == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  Value make_macro(const Stmt& s, const ScopePtr& scope) {
    // A weak reference: the macro usually lives in the scope it captures.
    std::weak_ptr<Scope> definition = scope;
    const Stmt* def = &s;
    return Value::function("macro " + s.text, [this, def, definition](const CallArgs& args) -> Value {
      ScopePtr parent = definition.lock();
      if (!parent) eval_fail("macro '", def->text, "' called after its scope ended");
      if (args.positional.size() > def->params.size())
        eval_fail("macro '", def->text, "' takes not more than ", def->params.size(), " argument(s)");
      if (++depth_ > limits_.max_depth) {
        --depth_;
        eval_fail("macro calls nested deeper than ", limits_.max_depth);
      }
      auto call_scope = child_scope(parent);
      for (const auto& [k, v] : args.keyword) {
        bool known = false;
        for (const auto& p : def->params) known |= p.first == k;
        if (!known) {
          --depth_;
          eval_fail("macro '", def->text, "' takes no keyword argument '", k, "'");
        }
      }
      std::string body;
      try {
        for (size_t i = 0; i < def->params.size(); ++i) {
          const auto& [name, default_expr] = def->params[i];
          const Value* given = args.get(i, name);
          if (given) call_scope->set(name, *given);
          else if (default_expr) call_scope->set(name, eval(*default_expr, call_scope));
          else call_scope->set(name, Value::undefined(str_cat("parameter '", name, "' was not provided")));
        }
        step(def->pos);
        exec_list(def->body, call_scope, body);
      } catch (...) {
        --depth_;
        throw;
      }
      --depth_;
      return Value(std::move(body));
    });
  }

  // ---- expressions ----

  Value eval(const Expr& e, const ScopePtr& scope) {
    try {
      return eval_node(e, scope);
    } catch (const EvalError& err) {
      error(e.pos, err.code, err.message);
    } catch (const PositionedError&) {
      throw;
    } catch (const Error& err) {
      error(e.pos, err.code(), err.what());
    }
  }

  void check_size(const Value& v) {
    if (v.is_string() && v.as_string().size() > limits_.max_output_bytes)
      eval_fail("value exceeds ", limits_.max_output_bytes, " bytes");
    if (v.is_list()) check_list_size(v.as_list().size());
  }

  CallArgs eval_args(const Expr& e, size_t first, const ScopePtr& scope) {
    CallArgs args;
    for (size_t i = first; i < e.args.size(); ++i) args.positional.push_back(eval(*e.args[i], scope));
    for (const auto& [k, v] : e.kwargs) args.keyword.emplace_back(k, eval(*v, scope));
    return args;
  }

  // Applies filter node `f`. Its input is evaluated from args[0], except in a filter block or block
  // set, whose chain ends in a null args[0] standing for `block_input`.
  Value apply_filter_chain(const Expr& f, const Value* block_input, const ScopePtr& scope) {
    Value inner;
    if (!f.args[0]) inner = *block_input;
    else if (block_input && f.args[0]->kind == Expr::Kind::kFilter) inner = apply_filter_chain(*f.args[0], block_input, scope);
    else inner = eval(*f.args[0], scope);
    CallArgs args = eval_args(f, 1, scope);
    try {
      Value v = apply_filter(f.name, inner, args);
      check_size(v);
      return v;
    } catch (const EvalError& err) {
      error(f.pos, err.code, err.message);
    }
  }

  Value eval_node(const Expr& e, const ScopePtr& scope) {
    switch (e.kind) {
      case Expr::Kind::kLiteral: return e.literal;
      case Expr::Kind::kName: {
        if (const Value* v = scope->find(e.name)) return *v;
        return lookup_global(e.name);
      }
      case Expr::Kind::kList:
      case Expr::Kind::kTuple: {
        ValueList items;
        for (const auto& a : e.args) items.push_back(eval(*a, scope));
        return Value::list(std::move(items), e.kind == Expr::Kind::kTuple ? SequenceKind::kTuple : SequenceKind::kList);
      }
      case Expr::Kind::kDict: {
        auto d = std::make_shared<ValueDict>();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value key = eval(*e.args[i], scope);
          if (!key.is_string()) eval_fail("dict literal keys must be strings, got ", key.type_name());
          d->set(key.as_string(), eval(*e.args[i + 1], scope));
        }
        return Value::dict(std::move(d));
      }
      case Expr::Kind::kGetAttr: return get_attribute(eval(*e.args[0], scope), e.name);
      case Expr::Kind::kGetItem: return get_item(eval(*e.args[0], scope), eval(*e.args[1], scope));
      case Expr::Kind::kSlice: {
        Value obj = eval(*e.args[0], scope);
        Value bounds[3];
        const Value* ptrs[3] = {nullptr, nullptr, nullptr};
        for (int i = 0; i < 3; ++i) {
          if (e.args[static_cast<size_t>(i) + 1]) {
            bounds[i] = eval(*e.args[static_cast<size_t>(i) + 1], scope);
            ptrs[i] = &bounds[i];
          }
        }
        return slice_value(obj, ptrs[0], ptrs[1], ptrs[2]);
      }
      case Expr::Kind::kCall: {
        Value callee = eval(*e.args[0], scope);
        CallArgs args = eval_args(e, 1, scope);
        if (callee.is_undefined()) fail_undefined(callee);
        if (!callee.is_function()) eval_fail("'", callee.type_name(), "' object is not callable");
        step(e.pos);
        Value v = callee.as_function().call(args);
        check_size(v);
        return v;
      }
      case Expr::Kind::kFilter: {
        step(e.pos);
        return apply_filter_chain(e, nullptr, scope);
      }
      case Expr::Kind::kTest: {
        Value subject = eval(*e.args[0], scope);
        CallArgs args = eval_args(e, 1, scope);
        return Value(apply_test(e.name, subject, args) != e.negated);
      }
      case Expr::Kind::kUnary: {
        Value v = eval(*e.args[0], scope);
        if (e.name == "not") return Value(!v.truthy());
        if (v.is_undefined()) fail_undefined(v);
        if (v.is_float()) return Value(e.name == "-" ? -v.as_double() : v.as_double());
        if (v.is_int() || v.is_bool()) {
          if (e.name == "+") return Value(v.as_int());
          if (v.as_int() == INT64_MIN) eval_fail("integer overflow");
          return Value(-v.as_int());
        }
        eval_fail("bad operand type for unary ", e.name, ": '", v.type_name(), "'");
      }
      case Expr::Kind::kBinary: {
        Value a = eval(*e.args[0], scope);
        if (e.name == "and") return a.truthy() ? eval(*e.args[1], scope) : a;
        if (e.name == "or") return a.truthy() ? a : eval(*e.args[1], scope);
        Value v = binary_op(e.name, a, eval(*e.args[1], scope));
        check_size(v);
        return v;
      }
      case Expr::Kind::kCompare: {
        Value left = eval(*e.args[0], scope);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1], scope);
          if (!compare(e.ops[i], left, right)) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::kConcat: {
        std::string out;
        for (const auto& a : e.args) {
          out += eval(*a, scope).str(limits_.max_output_bytes);
          if (out.size() > limits_.max_output_bytes) eval_fail("value exceeds ", limits_.max_output_bytes, " bytes");
        }
        return Value(std::move(out));
      }
      case Expr::Kind::kCondition: {
        if (eval(*e.args[0], scope).truthy()) return eval(*e.args[1], scope);
        if (e.args[2]) return eval(*e.args[2], scope);
        return Value::undefined("the inline if-expression evaluated to false and no else section was defined");
      }
    }
    eval_fail("unknown expression");
  }

  static bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return values_equal(a, b);
    if (op == "!=") return !values_equal(a, b);
    if (op == "in" || op == "notin") {
      bool found;
      if (b.is_string()) {
        if (!a.is_string()) eval_fail("'in <string>' requires string as left operand, not ", a.type_name());
        found = b.as_string().find(a.as_string()) != std::string::npos;
      } else if (b.is_dict()) {
        if (a.is_dict() || (a.is_list() && !a.is_tuple())) eval_fail("unhashable type: '", a.type_name(), "'");
        found = a.is_string() && b.as_dict().find(a.as_string()) != nullptr;
      } else {
        if (!b.is_list() && !b.is_undefined()) eval_fail("argument of type '", b.type_name(), "' is not iterable");
        found = false;
        for (const auto& item : iterate(b))
          if (values_equal(item, a)) found = true;
      }
      return op == "in" ? found : !found;
    }
    if (a.is_undefined()) fail_undefined(a);
    if (b.is_undefined()) fail_undefined(b);
    if (op == "<") return compare_less(a, b);
    if (op == ">") return compare_less(b, a);
    if (op == "<=") return !compare_less(b, a) && (values_equal(a, b) || compare_less(a, b));
    return !compare_less(a, b) && (values_equal(a, b) || compare_less(b, a));  // >=
  }

  [[noreturn]] static void unsupported_operands(const std::string& op, const Value& a, const Value& b) {
    eval_fail("unsupported operand type(s) for ", op, ": '", a.type_name(), "' and '", b.type_name(), "'");
  }

  static Value binary_op(const std::string& op, const Value& a, const Value& b) {
    if (a.is_undefined()) fail_undefined(a);
    if (b.is_undefined()) fail_undefined(b);
    bool numbers = (a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool());
    bool ints = numbers && !a.is_float() && !b.is_float();
    if (op == "+") {
      // Sizes are checked before the sum is built: a value doubled 64 times must not be allocated.
      if (a.is_string() && b.is_string()) {
        check_string_size(a.as_string().size() + b.as_string().size());
        return Value(a.as_string() + b.as_string());
      }
      if (a.is_list() && b.is_list() && a.sequence_kind() == b.sequence_kind() && !a.is_dict_view()) {
        check_list_size(a.as_list().size() + b.as_list().size());
        ValueList items = a.as_list();
        items.insert(items.end(), b.as_list().begin(), b.as_list().end());
        return Value::list(std::move(items), a.sequence_kind());
      }
      if (!numbers) unsupported_operands(op, a, b);
      if (!ints) return Value(a.as_double() + b.as_double());
      int64_t r;
      if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) eval_fail("integer overflow");
      return Value(r);
    }
    if (op == "-") {
      if (!numbers) unsupported_operands(op, a, b);
      if (!ints) return Value(a.as_double() - b.as_double());
      int64_t r;
      if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) eval_fail("integer overflow");
      return Value(r);
    }
    if (op == "*") {
      auto repeatable = [](const Value& v) { return v.is_string() || (v.is_list() && !v.is_dict_view()); };
      const Value* seq = repeatable(a) ? &a : repeatable(b) ? &b : nullptr;
      const Value* count = seq == &a ? &b : &a;
      if (seq && (count->is_int() || count->is_bool())) {
        int64_t n = std::max<int64_t>(0, count->as_int());
        size_t unit = seq->is_string() ? seq->as_string().size() : seq->as_list().size();
        const int64_t max_size = seq->is_string() ? kMaxBuiltValueBytes : kMaxBuiltListItems;
        if (unit > 0 && static_cast<uint64_t>(n) > static_cast<uint64_t>(max_size) / unit)
          eval_fail("repetition too large: ", unit, " x ", n, " is more than ", max_size,
                    seq->is_string() ? " bytes" : " list items");
        if (seq->is_string()) {
          std::string out;
          for (int64_t i = 0; i < n; ++i) out += seq->as_string();
          return Value(std::move(out));
        }
        ValueList out;
        for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq->as_list().begin(), seq->as_list().end());
        return Value::list(std::move(out), seq->sequence_kind());
      }
      if (!numbers) unsupported_operands(op, a, b);
      if (!ints) return Value(a.as_double() * b.as_double());
      int64_t r;
      if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) eval_fail("integer overflow");
      return Value(r);
    }
    if (!numbers) {
      if (op == "%" && a.is_string()) return Value(python_percent_format(a.as_string(), b));
      unsupported_operands(op, a, b);
    }
    if (op == "/") {
      if (b.as_double() == 0) eval_fail("division by zero");
      return Value(a.as_double() / b.as_double());
    }
    if (op == "//" || op == "%") {
      if (b.as_double() == 0) eval_fail(ints ? "integer division or modulo by zero" : "float divmod()");
      if (ints) {
        int64_t x = a.as_int(), y = b.as_int();
        if (x == INT64_MIN && y == -1) eval_fail("integer overflow");
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) {
          --q;
          r += y;
        }
        return Value(op == "//" ? q : r);
      }
      // CPython's float_divmod, signed zeros included.
      double x = a.as_double(), y = b.as_double();
      double r = std::fmod(x, y);
      if (r != 0) {
        if ((y < 0) != (r < 0)) r += y;
      } else {
        r = std::copysign(0.0, y);
      }
      if (op == "%") return Value(r);
      double div = (x - r) / y, floor_div;
      if (div != 0) {
        floor_div = std::floor(div);
        if (div - floor_div > 0.5) floor_div += 1.0;
      } else {
        floor_div = std::copysign(0.0, x / y);
      }
      return Value(floor_div);
    }
    if (op == "**") {
      if (ints && b.as_int() >= 0) {
        int64_t result = 1, base = a.as_int(), exponent = b.as_int();
        while (exponent > 0) {
          if ((exponent & 1) && __builtin_mul_overflow(result, base, &result)) eval_fail("integer overflow");
          exponent >>= 1;
          if (exponent > 0 && __builtin_mul_overflow(base, base, &base)) eval_fail("integer overflow");
        }
        return Value(result);
      }
      return Value(std::pow(a.as_double(), b.as_double()));
    }
    unsupported_operands(op, a, b);
  }

  const Template::Impl& t_;
  const RenderLimits& limits_;
  RenderResult& result_;
  int64_t steps_ = 0;
  int depth_ = 0;
};

}  // namespace

Template::Template(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;
Template::~Template() = default;

Template Template::parse(std::string_view source, std::string name) {
  return Template(parse_template(source, std::move(name)));
}

RenderResult Template::render(const ValueDict& variables, const RenderLimits& limits) const {
  RenderResult result;
  Renderer(*impl_, limits, result).run(variables);
  return result;
}

bool Template::has_generation_blocks() const { return impl_->has_generation; }
const std::string& Template::name() const { return impl_->name; }

}  // namespace moeforge::chat
