// Lexer and parser. Both follow Jinja2 3.1's lexer.py and parser.py closely (same regular-language
// rules, same precedence climbing), so whitespace handling and operator binding match byte for byte.
#include <cstdlib>

#include "chat/jinja_ast.h"
#include "core/error.h"

namespace moeforge::chat {

std::string source_location(const Template::Impl& t, size_t pos) {
  size_t line = 1, line_start = 0;
  for (size_t i = 0; i < pos && i < t.source.size(); ++i) {
    if (t.source[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  size_t end = std::min(pos, t.source.size());
  size_t column = utf8_length(std::string_view(t.source).substr(line_start, end - line_start)) + 1;
  return str_cat(t.name, ":", line, ":", column);
}

namespace {

enum class Tok { kData, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };

struct Token {
  Tok type;
  std::string text;  // data, name, operator, or the decoded string literal
  size_t pos;
  int64_t int_value = 0;
  double float_value = 0;
};

const char* token_description(const Token& t) {
  switch (t.type) {
    case Tok::kData: return "template data";
    case Tok::kVarBegin: return "begin of print statement";
    case Tok::kVarEnd: return "end of print statement";
    case Tok::kBlockBegin: return "begin of statement block";
    case Tok::kBlockEnd: return "end of statement block";
    case Tok::kString: return "string";
    case Tok::kInt: return "integer";
    case Tok::kFloat: return "float";
    case Tok::kEof: return "end of template";
    default: return nullptr;
  }
}

std::string describe(const Token& t) {
  if (const char* d = token_description(t)) return d;
  return "'" + t.text + "'";
}

// Python's str.rstrip() over UTF-8.
std::string_view rstrip_python(std::string_view s) {
  size_t pos = 0, keep = 0;
  while (pos < s.size()) {
    uint32_t cp = utf8_decode_at(s, pos);
    if (!python_isspace(cp)) keep = pos;
  }
  return s.substr(0, keep);
}

// Length of the run of Python whitespace (re's \s) at s[pos...].
size_t whitespace_run(std::string_view s, size_t pos) {
  size_t start = pos;
  while (pos < s.size()) {
    size_t next = pos;
    if (!python_isspace(utf8_decode_at(s, next))) break;
    pos = next;
  }
  return pos - start;
}

bool is_name_start(unsigned char c) { return std::isalpha(c) || c == '_' || c >= 0x80; }
bool is_name_char(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

class Lexer {
 public:
  Lexer(const Template::Impl& t) : t_(t), src_(t.source) {}

  std::vector<Token> run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      size_t tag = find_tag_start(pos_);
      if (tag == std::string::npos) {
        push(Tok::kData, std::string(src_.substr(pos_)), pos_);
        break;
      }
      char kind = src_[tag + 1];
      char sign = tag + 2 < src_.size() && (src_[tag + 2] == '-' || src_[tag + 2] == '+') ? src_[tag + 2] : 0;
      std::string_view text = src_.substr(pos_, tag - pos_);
      if (sign == '-') {
        text = rstrip_python(text);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop the whitespace between the start of the line and a block or comment tag.
        size_t line_pos = text.rfind('\n');
        line_pos = line_pos == std::string_view::npos ? 0 : line_pos + 1;
        if ((line_pos > 0 || line_starting) && line_pos < text.size() &&
            whitespace_run(text, line_pos) == text.size() - line_pos)
          text = text.substr(0, line_pos);
      }
      if (!text.empty()) push(Tok::kData, std::string(text), pos_);
      size_t after = tag + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        line_starting = lex_comment(tag, after);
      } else if (kind == '%' && lex_raw(tag, after, line_starting)) {
        // raw block handled
      } else {
        line_starting = lex_tag(kind == '{', tag, after);
      }
    }
    push(Tok::kEof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  [[noreturn]] void error(size_t pos, const std::string& message) {
    fail(ErrorCode::kFormat, source_location(t_, pos), ": ", message);
  }

  void push(Tok type, std::string text, size_t pos) { tokens_.push_back(Token{type, std::move(text), pos}); }

  size_t find_tag_start(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  bool starts_with(size_t pos, std::string_view s) const { return src_.substr(pos, s.size()) == s; }

  // Matches a block end at `pos`: "+%}", "-%}" + whitespace, or "%}" + one newline (trim_blocks).
  // Returns the end of the match, or npos.
  size_t match_block_end(size_t pos, char close = '%') const {
    auto closes_at = [&](size_t p) { return p + 1 < src_.size() && src_[p] == close && src_[p + 1] == '}'; };
    if (pos < src_.size() && src_[pos] == '+' && closes_at(pos + 1)) return pos + 3;
    if (pos < src_.size() && src_[pos] == '-' && closes_at(pos + 1)) return pos + 3 + whitespace_run(src_, pos + 3);
    if (closes_at(pos)) {
      size_t e = pos + 2;
      if (e < src_.size() && src_[e] == '\n') ++e;
      return e;
    }
    return std::string::npos;
  }

  bool lex_comment(size_t tag, size_t from) {
    for (size_t i = from; i < src_.size(); ++i) {
      size_t end = match_block_end(i, '#');
      if (end != std::string::npos) {
        pos_ = end;
        return src_[end - 1] == '\n';
      }
    }
    error(tag, "Missing end of comment tag");
  }

  // {% raw %}...{% endraw %}: the content is data, verbatim.
  bool lex_raw(size_t tag, size_t after, bool& line_starting) {
    size_t p = after + whitespace_run(src_, after);
    if (!starts_with(p, "raw")) return false;
    p += 3;
    p += whitespace_run(src_, p);
    size_t begin_end;
    if (starts_with(p, "-%}")) begin_end = p + 3 + whitespace_run(src_, p + 3);
    else if (starts_with(p, "%}")) begin_end = p + 2;
    else return false;
    for (size_t i = begin_end; i + 1 < src_.size(); ++i) {
      if (src_[i] != '{' || src_[i + 1] != '%') continue;
      size_t q = i + 2;
      char sign = q < src_.size() && (src_[q] == '-' || src_[q] == '+') ? src_[q++] : 0;
      q += whitespace_run(src_, q);
      if (!starts_with(q, "endraw")) continue;
      q += 6;
      q += whitespace_run(src_, q);
      size_t end = match_block_end(q);
      if (end == std::string::npos) continue;
      std::string_view text = src_.substr(begin_end, i - begin_end);
      if (sign == '-') {
        text = rstrip_python(text);
      } else if (sign != '+') {
        size_t line_pos = text.rfind('\n');
        line_pos = line_pos == std::string_view::npos ? 0 : line_pos + 1;
        if (line_pos > 0 && line_pos < text.size() && whitespace_run(text, line_pos) == text.size() - line_pos)
          text = text.substr(0, line_pos);
      }
      if (!text.empty()) push(Tok::kData, std::string(text), begin_end);
      pos_ = end;
      line_starting = src_[end - 1] == '\n';
      return true;
    }
    error(tag, "Missing end of raw directive");
  }

  // The tokens of a {{ ... }} or {% ... %} tag; returns whether the end tag ended with a newline.
  bool lex_tag(bool is_variable, size_t tag, size_t from) {
    push(is_variable ? Tok::kVarBegin : Tok::kBlockBegin, "", tag);
    std::vector<char> balance;
    size_t p = from;
    while (true) {
      if (p >= src_.size()) error(tag, is_variable ? "unexpected end of template, expected '}}'"
                                                   : "unexpected end of template, expected '%}'");
      if (balance.empty()) {
        size_t end = std::string::npos;
        if (is_variable) {
          if (starts_with(p, "-}}")) end = p + 3 + whitespace_run(src_, p + 3);
          else if (starts_with(p, "}}")) end = p + 2;
        } else {
          end = match_block_end(p);
        }
        if (end != std::string::npos) {
          push(is_variable ? Tok::kVarEnd : Tok::kBlockEnd, "", p);
          pos_ = end;
          return src_[end - 1] == '\n';
        }
      }
      size_t ws = whitespace_run(src_, p);
      if (ws > 0) {
        p += ws;
        continue;
      }
      unsigned char c = static_cast<unsigned char>(src_[p]);
      if (std::isdigit(c)) {
        p = lex_number(p);
      } else if (is_name_start(c)) {
        size_t start = p;
        while (p < src_.size() && is_name_char(static_cast<unsigned char>(src_[p]))) ++p;
        push(Tok::kName, std::string(src_.substr(start, p - start)), start);
      } else if (c == '\'' || c == '"') {
        p = lex_string(p);
      } else {
        static const char* kOperators[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
                                           "]", "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"};
        std::string op;
        for (const char* candidate : kOperators) {
          if (starts_with(p, candidate)) {
            op = candidate;
            break;
          }
        }
        if (op.empty()) error(p, str_cat("unexpected char '", src_.substr(p, 1), "'"));
        if (op == "(" || op == "[" || op == "{") {
          balance.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
        } else if (op == ")" || op == "]" || op == "}") {
          if (balance.empty()) error(p, "unexpected '" + op + "'");
          if (balance.back() != op[0])
            error(p, str_cat("unexpected '", op, "', expected '", balance.back(), "'"));
          balance.pop_back();
        }
        push(Tok::kOp, op, p);
        p += op.size();
      }
    }
  }

  size_t lex_number(size_t p) {
    size_t start = p;
    auto digits = [&](size_t q) {  // \d+(_\d+)*
      size_t s = q;
      while (q < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[q])) ||
                                 (src_[q] == '_' && q > s && q + 1 < src_.size() &&
                                  std::isdigit(static_cast<unsigned char>(src_[q + 1])))))
        ++q;
      return q;
    };
    p = digits(p);
    bool is_float = false;
    if (p + 1 < src_.size() && src_[p] == '.' && std::isdigit(static_cast<unsigned char>(src_[p + 1]))) {
      p = digits(p + 1);
      is_float = true;
    }
    if (p < src_.size() && (src_[p] == 'e' || src_[p] == 'E')) {
      size_t q = p + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (q < src_.size() && std::isdigit(static_cast<unsigned char>(src_[q]))) {
        p = digits(q);
        is_float = true;
      }
    }
    std::string text(src_.substr(start, p - start));
    std::string clean;
    for (char ch : text)
      if (ch != '_') clean += ch;
    Token tok{is_float ? Tok::kFloat : Tok::kInt, text, start};
    if (is_float) {
      tok.float_value = std::strtod(clean.c_str(), nullptr);
    } else {
      if (clean.size() > 1 && clean[0] == '0' && clean.find_first_not_of('0') != std::string::npos)
        error(start, "invalid integer literal '" + text + "'");
      errno = 0;
      tok.int_value = std::strtoll(clean.c_str(), nullptr, 10);
      if (errno == ERANGE) error(start, "integer literal '" + text + "' does not fit in 64 bits");
    }
    tokens_.push_back(std::move(tok));
    return p;
  }

  // A quoted string with Python's unicode-escape sequences decoded (unknown escapes kept).
  size_t lex_string(size_t p) {
    char quote = src_[p];
    size_t start = p++;
    std::string value;
    while (true) {
      if (p >= src_.size()) error(start, "unexpected end of string literal");
      char c = src_[p];
      if (c == quote) {
        ++p;
        break;
      }
      if (c != '\\') {
        value += c;
        ++p;
        continue;
      }
      if (p + 1 >= src_.size()) error(start, "unexpected end of string literal");
      char e = src_[p + 1];
      p += 2;
      auto hex = [&](int n) -> uint32_t {
        if (p + static_cast<size_t>(n) > src_.size()) error(p - 2, "truncated \\x/\\u escape in string");
        uint32_t v = 0;
        for (int i = 0; i < n; ++i) {
          char h = src_[p + static_cast<size_t>(i)];
          if (!std::isxdigit(static_cast<unsigned char>(h))) error(p - 2, "truncated \\x/\\u escape in string");
          v = v * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0'
                                                                                           : (std::tolower(h) - 'a' + 10));
        }
        p += static_cast<size_t>(n);
        return v;
      };
      switch (e) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case 'a': value += '\a'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'v': value += '\v'; break;
        case '\n': break;  // line continuation
        case 'x': utf8_append(value, hex(2)); break;
        case 'u': utf8_append(value, hex(4)); break;
        case 'U': {
          uint32_t cp = hex(8);
          if (cp > 0x10ffff) error(p - 10, "illegal Unicode character in string escape");
          utf8_append(value, cp);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = static_cast<uint32_t>(e - '0');
            for (int i = 0; i < 2 && p < src_.size() && src_[p] >= '0' && src_[p] <= '7'; ++i)
              v = v * 8 + static_cast<uint32_t>(src_[p++] - '0');
            utf8_append(value, v);
          } else {
            value += '\\';
            value += e;
          }
      }
    }
    push(Tok::kString, std::move(value), start);
    return p;
  }

  const Template::Impl& t_;
  std::string_view src_;
  size_t pos_ = 0;
  std::vector<Token> tokens_;
};

class Parser {
 public:
  Parser(Template::Impl& t, std::vector<Token> tokens) : t_(t), tokens_(std::move(tokens)) {}

  StmtList parse_root() {
    std::string end;
    StmtList body = subparse({}, end);
    return body;
  }

 private:
  [[noreturn]] void error(size_t pos, const std::string& message) {
    fail(ErrorCode::kFormat, source_location(t_, pos), ": ", message);
  }

  const Token& cur() const { return tokens_[i_]; }
  const Token& peek() const { return tokens_[std::min(i_ + 1, tokens_.size() - 1)]; }
  Token next() {
    Token t = tokens_[i_];
    if (i_ + 1 < tokens_.size()) ++i_;
    return t;
  }
  bool is_op(const char* op) const { return cur().type == Tok::kOp && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Tok::kName && cur().text == name; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) error(cur().pos, str_cat("expected token '", op, "', got ", describe(cur())));
  }
  void expect(Tok type, const char* what) {
    if (cur().type != type) error(cur().pos, str_cat("expected token '", what, "', got ", describe(cur())));
    next();
  }
  std::string expect_name() {
    if (cur().type != Tok::kName) error(cur().pos, str_cat("expected token 'name', got ", describe(cur())));
    return next().text;
  }

  // Records a finished node's height and rejects trees deep enough to endanger the stack.
  ExprPtr track(ExprPtr e) {
    int height = 0;
    for (const auto& a : e->args)
      if (a) height = std::max(height, a->height);
    for (const auto& kv : e->kwargs) height = std::max(height, kv.second->height);
    e->height = height + 1;
    if (e->height > kMaxNesting) error(e->pos, "expression nested too deeply");
    return e;
  }

  // Bounds recursion in the parser itself.
  struct DepthGuard {
    Parser& p;
    DepthGuard(Parser& parser, size_t pos) : p(parser) {
      if (++p.depth_ > kMaxNesting) p.error(pos, "template nested too deeply");
    }
    ~DepthGuard() { --p.depth_; }
  };

  ExprPtr make(Expr::Kind kind, size_t pos) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos;
    return e;
  }

  // ---- statements ----

  // Parses until a block whose first name is in `end_tags`; leaves that name current and sets
  // `found`. With no end tags, parses to the end of the template.
  StmtList subparse(const std::vector<std::string>& end_tags, std::string& found) {
    StmtList body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::kEof) {
        if (!end_tags.empty()) {
          std::string wanted;
          for (const auto& tag : end_tags) wanted += (wanted.empty() ? "'" : " or '") + tag + "'";
          error(t.pos, str_cat("unexpected end of template; looking for ", wanted, open_blocks_.empty() ? "" : str_cat(
                                   " to close the '", open_blocks_.back().first, "' block at ",
                                   source_location(t_, open_blocks_.back().second))));
        }
        return body;
      }
      if (t.type == Tok::kData) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kText;
        s->pos = t.pos;
        s->text = t.text;
        body.push_back(std::move(s));
        next();
      } else if (t.type == Tok::kVarBegin) {
        size_t pos = next().pos;
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kOutput;
        s->pos = pos;
        s->expr = parse_tuple(true, {}, false);
        expect(Tok::kVarEnd, "end of print statement");
        body.push_back(std::move(s));
      } else if (t.type == Tok::kBlockBegin) {
        next();
        if (cur().type == Tok::kName) {
          for (const auto& tag : end_tags) {
            if (cur().text == tag) {
              found = tag;
              return body;
            }
          }
        }
        body.push_back(parse_statement());
        expect(Tok::kBlockEnd, "end of statement block");
      } else {
        error(t.pos, "unexpected " + describe(t));
      }
    }
  }

  // Parses a body up to one of `end_tags` (after the current tag's %}); consumes the end tag's name
  // and returns which one it was.
  StmtList parse_body(const std::vector<std::string>& end_tags, std::string& found) {
    expect(Tok::kBlockEnd, "end of statement block");
    StmtList body = subparse(end_tags, found);
    next();  // the end tag's name
    return body;
  }

  StmtPtr parse_statement() {
    const Token& t = cur();
    if (t.type != Tok::kName) error(t.pos, "tag name expected");
    std::string tag = t.text;
    size_t pos = t.pos;
    DepthGuard guard(*this, pos);
    auto s = std::make_unique<Stmt>();
    s->pos = pos;
    open_blocks_.emplace_back(tag, pos);
    std::string found;
    next();
    if (tag == "if") {
      parse_if(*s);
    } else if (tag == "for") {
      s->kind = Stmt::Kind::kFor;
      s->targets = parse_assign_names();
      if (!skip_name("in")) error(cur().pos, str_cat("expected 'in', got ", describe(cur())));
      s->expr = parse_tuple(false, {"recursive"}, false);
      if (skip_name("if")) s->condition = parse_expression(true);
      if (is_name("recursive")) error(cur().pos, "recursive for loops are not supported");
      ++loop_depth_;
      s->body = parse_body({"endfor", "else"}, found);
      --loop_depth_;
      if (found == "else") s->else_body = parse_body({"endfor"}, found);
    } else if (tag == "set") {
      parse_set(*s);
    } else if (tag == "macro") {
      s->kind = Stmt::Kind::kMacro;
      s->text = expect_name();
      expect_op("(");
      bool have_default = false;
      while (!is_op(")")) {
        if (!s->params.empty()) expect_op(",");
        if (is_op(")")) break;
        size_t param_pos = cur().pos;
        std::string param = expect_name();
        ExprPtr def;
        if (skip_op("=")) {
          def = parse_expression(true);
          have_default = true;
        } else if (have_default) {
          error(param_pos, "non-default argument follows default argument");
        }
        s->params.emplace_back(param, std::move(def));
      }
      expect_op(")");
      int saved_loops = loop_depth_;
      loop_depth_ = 0;
      s->body = parse_body({"endmacro"}, found);
      loop_depth_ = saved_loops;
    } else if (tag == "filter") {
      s->kind = Stmt::Kind::kFilterBlock;
      s->filter = parse_filter_chain(nullptr, true);
      s->body = parse_body({"endfilter"}, found);
    } else if (tag == "with") {
      s->kind = Stmt::Kind::kWith;
      while (!(cur().type == Tok::kBlockEnd)) {
        if (!s->params.empty()) expect_op(",");
        std::string name = expect_name();
        expect_op("=");
        s->params.emplace_back(name, parse_expression(true));
      }
      s->body = parse_body({"endwith"}, found);
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) error(pos, "'" + tag + "' outside of a for loop");
      s->kind = tag == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
    } else if (tag == "generation") {
      s->kind = Stmt::Kind::kGeneration;
      t_.has_generation = true;
      s->body = parse_body({"endgeneration"}, found);
    } else if (tag == "extends" || tag == "block" || tag == "include" || tag == "import" || tag == "from" ||
               tag == "call" || tag == "do" || tag == "autoescape") {
      error(pos, "the '" + tag + "' tag is not supported in chat templates");
    } else {
      error(pos, "Encountered unknown tag '" + tag + "'");
    }
    open_blocks_.pop_back();
    return s;
  }

  void parse_if(Stmt& s) {
    DepthGuard guard(*this, s.pos);
    s.kind = Stmt::Kind::kIf;
    s.expr = parse_tuple(false, {}, false);
    std::string found;
    s.body = parse_body({"elif", "else", "endif"}, found);
    if (found == "elif") {
      auto elif = std::make_unique<Stmt>();
      elif->pos = tokens_[i_ - 1].pos;
      parse_if(*elif);
      s.else_body.push_back(std::move(elif));
    } else if (found == "else") {
      s.else_body = parse_body({"endif"}, found);
    }
  }

  void parse_set(Stmt& s) {
    size_t target_pos = cur().pos;
    std::string first = expect_name();
    if (skip_op(".")) {  // namespace attribute
      s.kind = Stmt::Kind::kSet;
      s.targets = {first};
      s.text = expect_name();
      expect_op("=");
      s.expr = parse_tuple(true, {}, false);
      return;
    }
    s.targets = {first};
    while (skip_op(",")) {
      if (cur().type != Tok::kName) break;
      s.targets.push_back(expect_name());
    }
    if (skip_op("=")) {
      s.kind = Stmt::Kind::kSet;
      s.expr = parse_tuple(true, {}, false);
      return;
    }
    if (s.targets.size() != 1) error(target_pos, "a block set assigns exactly one name");
    s.kind = Stmt::Kind::kSetBlock;
    if (is_op("|")) s.filter = parse_filter_chain(nullptr, false);
    std::string found;
    s.body = parse_body({"endset"}, found);
  }

  std::vector<std::string> parse_assign_names() {
    std::vector<std::string> names;
    bool parens = skip_op("(");
    names.push_back(expect_name());
    while (skip_op(",")) {
      if (cur().type != Tok::kName || is_name("in")) break;
      names.push_back(expect_name());
    }
    if (parens) expect_op(")");
    return names;
  }

  // ---- expressions ----

  ExprPtr parse_expression(bool with_condition) { return with_condition ? parse_condition() : parse_or(); }

  ExprPtr parse_condition() {
    ExprPtr expr = parse_or();
    while (is_name("if")) {
      size_t pos = next().pos;
      auto cond = make(Expr::Kind::kCondition, pos);
      ExprPtr test = parse_or();
      ExprPtr otherwise;
      if (skip_name("else")) {
        DepthGuard guard(*this, pos);
        otherwise = parse_condition();
      }
      cond->args.push_back(std::move(test));
      cond->args.push_back(std::move(expr));
      cond->args.push_back(std::move(otherwise));
      expr = track(std::move(cond));
    }
    return expr;
  }

  ExprPtr binary(const std::string& op, size_t pos, ExprPtr a, ExprPtr b) {
    auto e = make(Expr::Kind::kBinary, pos);
    e->name = op;
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return track(std::move(e));
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      size_t pos = next().pos;
      left = binary("or", pos, std::move(left), parse_and());
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      size_t pos = next().pos;
      left = binary("and", pos, std::move(left), parse_not());
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      DepthGuard guard(*this, cur().pos);
      auto e = make(Expr::Kind::kUnary, next().pos);
      e->name = "not";
      e->args.push_back(parse_not());
      return track(std::move(e));
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    size_t pos = cur().pos;
    ExprPtr first = parse_math1();
    std::vector<std::string> ops;
    std::vector<ExprPtr> operands;
    while (true) {
      if (cur().type == Tok::kOp && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                     cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        ops.push_back(next().text);
      } else if (is_name("in")) {
        next();
        ops.push_back("in");
      } else if (is_name("not") && peek().type == Tok::kName && peek().text == "in") {
        next();
        next();
        ops.push_back("notin");
      } else {
        break;
      }
      operands.push_back(parse_math1());
    }
    if (ops.empty()) return first;
    auto e = make(Expr::Kind::kCompare, pos);
    e->args.push_back(std::move(first));
    for (auto& o : operands) e->args.push_back(std::move(o));
    e->ops = std::move(ops);
    return track(std::move(e));
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      Token op = next();
      left = binary(op.text, op.pos, std::move(left), parse_concat());
    }
    return left;
  }

  ExprPtr parse_concat() {
    size_t pos = cur().pos;
    ExprPtr first = parse_math2();
    if (!is_op("~")) return first;
    auto e = make(Expr::Kind::kConcat, pos);
    e->args.push_back(std::move(first));
    while (skip_op("~")) e->args.push_back(parse_math2());
    return track(std::move(e));
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      Token op = next();
      left = binary(op.text, op.pos, std::move(left), parse_pow());
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      Token op = next();
      left = binary("**", op.pos, std::move(left), parse_unary(true));
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(*this, cur().pos);
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      Token op = next();
      node = make(Expr::Kind::kUnary, op.pos);
      node->name = op.text;
      node->args.push_back(parse_unary(false));
      node = track(std::move(node));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    size_t pos = t.pos;
    if (t.type == Tok::kName) {
      std::string n = next().text;
      auto e = make(Expr::Kind::kLiteral, pos);
      if (n == "true" || n == "True") e->literal = Value(true);
      else if (n == "false" || n == "False") e->literal = Value(false);
      else if (n == "none" || n == "None") e->literal = Value::none();
      else {
        e->kind = Expr::Kind::kName;
        e->name = n;
      }
      return e;
    }
    if (t.type == Tok::kString) {
      std::string s = next().text;
      while (cur().type == Tok::kString) s += next().text;  // adjacent literals concatenate
      auto e = make(Expr::Kind::kLiteral, pos);
      e->literal = Value(std::move(s));
      return e;
    }
    if (t.type == Tok::kInt || t.type == Tok::kFloat) {
      Token n = next();
      auto e = make(Expr::Kind::kLiteral, pos);
      e->literal = n.type == Tok::kInt ? Value(n.int_value) : Value(n.float_value);
      return e;
    }
    if (is_op("(")) {
      next();
      ExprPtr e = parse_tuple(true, {}, true);
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      next();
      auto e = make(Expr::Kind::kList, pos);
      while (!is_op("]")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("]")) break;
        e->args.push_back(parse_expression(true));
      }
      expect_op("]");
      return track(std::move(e));
    }
    if (is_op("{")) {
      next();
      auto e = make(Expr::Kind::kDict, pos);
      while (!is_op("}")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("}")) break;
        e->args.push_back(parse_expression(true));
        expect_op(":");
        e->args.push_back(parse_expression(true));
      }
      expect_op("}");
      return track(std::move(e));
    }
    error(pos, "unexpected " + describe(t));
  }

  // Comma-separated expressions: a tuple when a comma appears (or "()" in parentheses), else the
  // single expression.
  ExprPtr parse_tuple(bool with_condition, const std::vector<std::string>& extra_end, bool explicit_parens) {
    size_t pos = cur().pos;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      bool at_end = cur().type == Tok::kVarEnd || cur().type == Tok::kBlockEnd || is_op(")");
      for (const auto& name : extra_end)
        if (is_name(name.c_str())) at_end = true;
      if (at_end) break;
      items.push_back(parse_expression(with_condition));
      if (is_op(",")) is_tuple = true;
      else break;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) error(cur().pos, "Expected an expression, got " + describe(cur()));
    }
    auto e = make(Expr::Kind::kTuple, pos);
    e->args = std::move(items);
    return track(std::move(e));
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".")) {
        size_t pos = next().pos;
        const Token& t = cur();
        if (t.type == Tok::kName) {
          auto e = make(Expr::Kind::kGetAttr, pos);
          e->name = next().text;
          e->args.push_back(std::move(node));
          node = track(std::move(e));
        } else if (t.type == Tok::kInt) {
          auto e = make(Expr::Kind::kGetItem, pos);
          auto index = make(Expr::Kind::kLiteral, t.pos);
          index->literal = Value(next().int_value);
          e->args.push_back(std::move(node));
          e->args.push_back(std::move(index));
          node = track(std::move(e));
        } else {
          error(t.pos, "expected name or number after '.'");
        }
      } else if (is_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) node = parse_filter_chain(std::move(node), false);
      else if (is_name("is")) node = parse_test(std::move(node));
      else if (is_op("(")) node = parse_call(std::move(node));
      else return node;
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    size_t pos = next().pos;  // '['
    std::vector<ExprPtr> items;
    while (!is_op("]")) {
      if (!items.empty()) expect_op(",");
      items.push_back(parse_subscribed());
    }
    expect_op("]");
    if (items.empty()) error(pos, "expected a subscript");
    if (items.size() == 1 && items[0]->kind == Expr::Kind::kSlice) {
      items[0]->args[0] = std::move(node);
      return track(std::move(items[0]));
    }
    auto e = make(Expr::Kind::kGetItem, pos);
    e->args.push_back(std::move(node));
    if (items.size() == 1) {
      e->args.push_back(std::move(items[0]));
    } else {
      for (auto& item : items)
        if (item->kind == Expr::Kind::kSlice) error(item->pos, "slices inside a tuple subscript are not supported");
      auto tuple = make(Expr::Kind::kTuple, pos);
      tuple->args = std::move(items);
      e->args.push_back(track(std::move(tuple)));
    }
    return track(std::move(e));
  }

  // One subscript: an expression, or a slice [start]:[stop][:[step]] (args[0] left for the object).
  ExprPtr parse_subscribed() {
    size_t pos = cur().pos;
    ExprPtr start;
    if (!is_op(":")) {
      start = parse_expression(true);
      if (!is_op(":")) return start;
    }
    next();  // ':'
    auto slice = make(Expr::Kind::kSlice, pos);
    slice->args.push_back(nullptr);
    slice->args.push_back(std::move(start));
    slice->args.push_back(is_op(":") || is_op("]") || is_op(",") ? nullptr : parse_expression(true));
    if (skip_op(":")) slice->args.push_back(is_op("]") || is_op(",") ? nullptr : parse_expression(true));
    else slice->args.push_back(nullptr);
    return slice;
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) error(cur().pos, "*args and **kwargs in calls are not supported");
      if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().text == "=") {
        std::string key = next().text;
        next();
        e.kwargs.emplace_back(key, parse_expression(true));
      } else {
        if (!e.kwargs.empty()) error(cur().pos, "positional argument follows keyword argument");
        e.args.push_back(parse_expression(true));
      }
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr node) {
    auto e = make(Expr::Kind::kCall, cur().pos);
    e->args.push_back(std::move(node));
    parse_call_args(*e);
    return track(std::move(e));
  }

  std::string parse_dotted_name() {
    std::string name = expect_name();
    while (is_op(".")) {
      next();
      name += '.';
      name += expect_name();
    }
    return name;
  }

  // `| name(args) | name ...`; with start_inline the first filter has no leading '|'.
  ExprPtr parse_filter_chain(ExprPtr node, bool start_inline) {
    while (is_op("|") || start_inline) {
      if (!start_inline) next();
      start_inline = false;
      size_t pos = cur().pos;
      auto e = make(Expr::Kind::kFilter, pos);
      e->name = parse_dotted_name();
      if (!is_known_filter(e->name)) error(pos, "No filter named '" + e->name + "'.");
      e->args.push_back(std::move(node));
      if (is_op("(")) parse_call_args(*e);
      node = track(std::move(e));
    }
    return node;
  }

  ExprPtr parse_test(ExprPtr node) {
    next();  // 'is'
    auto e = make(Expr::Kind::kTest, cur().pos);
    e->negated = skip_name("not");
    size_t name_pos = cur().pos;
    e->name = parse_dotted_name();
    if (!is_known_test(e->name)) error(name_pos, "No test named '" + e->name + "'.");
    e->args.push_back(std::move(node));
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((cur().type == Tok::kName || cur().type == Tok::kString || cur().type == Tok::kInt ||
                cur().type == Tok::kFloat || is_op("(") || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) error(cur().pos, "You cannot chain multiple tests with is");
      e->args.push_back(parse_postfix(parse_primary()));
    }
    return track(std::move(e));
  }

  static constexpr int kMaxNesting = 200;  // recursion bound for hostile input

  Template::Impl& t_;
  std::vector<Token> tokens_;
  size_t i_ = 0;
  int loop_depth_ = 0;
  int depth_ = 0;
  std::vector<std::pair<std::string, size_t>> open_blocks_;
};

// Jinja2's newline handling: \r\n and \r become \n, and one trailing newline is dropped
// (keep_trailing_newline=False).
std::string normalize_newlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

std::unique_ptr<Template::Impl> parse_template(std::string_view source, std::string name) {
  auto impl = std::make_unique<Template::Impl>();
  impl->name = std::move(name);
  impl->source = normalize_newlines(source);
  Lexer lexer(*impl);
  Parser parser(*impl, lexer.run());
  impl->body = parser.parse_root();
  return impl;
}

}  // namespace moeforge::chat
