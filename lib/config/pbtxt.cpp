#include "config/pbtxt.h"

#include <cctype>

namespace mms {

std::vector<const PbtxtField*> PbtxtMessage::All(std::string_view name) const {
  std::vector<const PbtxtField*> out;
  for (const auto& f : fields)
    if (f.name == name) out.push_back(&f);
  return out;
}

const PbtxtField* PbtxtMessage::Last(std::string_view name) const {
  for (auto it = fields.rbegin(); it != fields.rend(); ++it)
    if (it->name == name) return &*it;
  return nullptr;
}

namespace {

constexpr int kMaxDepth = 100;  // protobuf's TextFormat default recursion limit

class Parser {
 public:
  Parser(std::string_view text, const std::string& source) : s_(text), source_(source) {}

  Result<PbtxtMessage> Top() {
    PbtxtMessage m;
    MMS_RETURN_IF_ERROR(Fields(&m, '\0', 0));
    return m;
  }

 private:
  Status Error(const std::string& what) const {
    return InvalidArgument(source_ + ":" + std::to_string(line_) + ":" + std::to_string(col_) + ": " + what);
  }
  // The next characters, shown in an error ("end of file" at the end).
  std::string Here() const {
    if (pos_ >= s_.size()) return "end of file";
    size_t n = 1;
    if (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_')
      while (n < 24 && pos_ + n < s_.size() &&
             (std::isalnum(static_cast<unsigned char>(s_[pos_ + n])) || s_[pos_ + n] == '_'))
        ++n;
    std::string t(s_.substr(pos_, n));
    for (char& c : t)
      if (!std::isprint(static_cast<unsigned char>(c))) c = '?';
    return "'" + t + "'";
  }
  char Peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void Advance() {
    if (s_[pos_] == '\n') {
      ++line_;
      col_ = 1;
    } else {
      ++col_;
    }
    ++pos_;
  }
  void SkipBlanks() {
    while (pos_ < s_.size()) {
      char c = s_[pos_];
      if (c == '#') {
        while (pos_ < s_.size() && s_[pos_] != '\n') Advance();
      } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') {
        Advance();
      } else {
        return;
      }
    }
  }
  bool TryConsume(char c) {
    SkipBlanks();
    if (Peek() != c) return false;
    Advance();
    return true;
  }
  static bool IdentStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
  static bool IdentChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

  std::string Identifier() {
    size_t start = pos_;
    while (pos_ < s_.size() && IdentChar(s_[pos_])) Advance();
    return std::string(s_.substr(start, pos_ - start));
  }

  // The fields of a message up to `close` ('}' or '>'; '\0': the end of the
  // text), consumed.
  Status Fields(PbtxtMessage* m, char close, int depth) {
    for (;;) {
      SkipBlanks();
      if (close == '\0' ? pos_ >= s_.size() : Peek() == close) {
        if (close != '\0') Advance();
        return Status::Ok();
      }
      if (pos_ >= s_.size()) return Error(std::string("expected '") + close + "' before the end of file");
      PbtxtField f;
      if (Peek() == '[') {  // an extension or Any type name: "[pkg.ext]"
        size_t start = pos_;
        while (pos_ < s_.size() && s_[pos_] != ']' && s_[pos_] != '\n') Advance();
        if (Peek() != ']') return Error("expected ']' closing the extension name");
        Advance();
        f.name = std::string(s_.substr(start, pos_ - start));
      } else if (IdentStart(Peek())) {
        f.name = Identifier();
      } else {
        return Error("expected a field name, found " + Here());
      }
      const bool colon = TryConsume(':');
      SkipBlanks();
      if (Peek() == '[') {  // a list: one field per element
        Advance();
        if (!TryConsume(']')) {
          for (;;) {
            SkipBlanks();
            PbtxtField e;
            e.name = f.name;
            if (Peek() != '{' && Peek() != '<' && !colon)
              return Error("expected ':' after " + f.name + " (a list of values needs one)");
            MMS_RETURN_IF_ERROR(Value(&e, depth));
            m->fields.push_back(std::move(e));
            if (TryConsume(']')) break;
            if (!TryConsume(',')) return Error("expected ',' or ']' in the list of " + f.name + ", found " + Here());
          }
        }
      } else {
        if (Peek() != '{' && Peek() != '<' && !colon)
          return Error("expected ':' after " + f.name + ", found " + Here());
        MMS_RETURN_IF_ERROR(Value(&f, depth));
        m->fields.push_back(std::move(f));
      }
      if (!TryConsume(';')) TryConsume(',');
    }
  }

  // One value (a message or a scalar) at the current position.
  Status Value(PbtxtField* f, int depth) {
    SkipBlanks();
    f->line = line_;
    f->column = col_;
    const char c = Peek();
    if (c == '{' || c == '<') {
      if (depth + 1 > kMaxDepth) return Error("messages nested deeper than " + std::to_string(kMaxDepth));
      Advance();
      auto sub = std::make_shared<PbtxtMessage>();
      MMS_RETURN_IF_ERROR(Fields(sub.get(), c == '{' ? '}' : '>', depth + 1));
      f->kind = PbtxtField::Kind::kMessage;
      f->message = std::move(sub);
      return Status::Ok();
    }
    if (c == '"' || c == '\'') {
      f->kind = PbtxtField::Kind::kString;
      do {
        MMS_RETURN_IF_ERROR(String(&f->text));
        SkipBlanks();
      } while (Peek() == '"' || Peek() == '\'');  // adjacent strings are joined
      return Status::Ok();
    }
    std::string sign;
    if (c == '-') {
      Advance();
      SkipBlanks();
      sign = "-";
    }
    if (std::isdigit(static_cast<unsigned char>(Peek())) ||
        (Peek() == '.' && pos_ + 1 < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_ + 1])))) {
      size_t start = pos_;
      const bool hex = Peek() == '0' && pos_ + 1 < s_.size() && (s_[pos_ + 1] == 'x' || s_[pos_ + 1] == 'X');
      while (pos_ < s_.size()) {
        char d = s_[pos_];
        const bool exp_sign = (d == '+' || d == '-') && !hex && pos_ > start &&
                              (s_[pos_ - 1] == 'e' || s_[pos_ - 1] == 'E');
        if (!IdentChar(d) && d != '.' && !exp_sign) break;
        Advance();
      }
      f->kind = PbtxtField::Kind::kNumber;
      f->text = sign + std::string(s_.substr(start, pos_ - start));
      return Status::Ok();
    }
    if (IdentStart(Peek())) {
      f->kind = sign.empty() ? PbtxtField::Kind::kIdentifier : PbtxtField::Kind::kNumber;  // -inf, -nan
      f->text = sign + Identifier();
      return Status::Ok();
    }
    return Error("expected a value for " + f->name + ", found " + Here());
  }

  // A quoted string, unescaped, appended to *out.
  Status String(std::string* out) {
    const char quote = Peek();
    Advance();
    auto hexval = [](char h) {
      return std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : std::tolower(static_cast<unsigned char>(h)) - 'a' + 10;
    };
    for (;;) {
      if (pos_ >= s_.size() || Peek() == '\n') return Error("string not closed on its line");
      char c = Peek();
      Advance();
      if (c == quote) return Status::Ok();
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) return Error("string not closed on its line");
      char e = Peek();
      Advance();
      switch (e) {
        case 'a': out->push_back('\a'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'v': out->push_back('\v'); break;
        case '\\': case '?': case '\'': case '"': out->push_back(e); break;
        case 'x': case 'X': {
          int v = 0, n = 0;
          while (n < 2 && std::isxdigit(static_cast<unsigned char>(Peek()))) {
            v = v * 16 + hexval(Peek());
            Advance();
            ++n;
          }
          if (n == 0) return Error("expected hex digits after \\x");
          out->push_back(static_cast<char>(v));
          break;
        }
        case 'u': case 'U': {
          const int want = e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (int n = 0; n < want; ++n) {
            if (!std::isxdigit(static_cast<unsigned char>(Peek())))
              return Error(std::string("expected ") + std::to_string(want) + " hex digits after \\" + e);
            cp = cp * 16 + static_cast<uint32_t>(hexval(Peek()));
            Advance();
          }
          if (cp > 0x10FFFF) return Error("\\" + std::string(1, e) + " names no character");
          // A surrogate pair in two \u escapes is one character (a lone
          // surrogate passes through, as protobuf lets it).
          if (cp >= 0xD800 && cp <= 0xDBFF && s_.substr(pos_, 2) == "\\u" && pos_ + 6 <= s_.size()) {
            uint32_t low = 0;
            bool hex = true;
            for (size_t n = 2; n < 6; ++n) {
              hex = hex && std::isxdigit(static_cast<unsigned char>(s_[pos_ + n]));
              if (hex) low = low * 16 + static_cast<uint32_t>(hexval(s_[pos_ + n]));
            }
            if (hex && low >= 0xDC00 && low <= 0xDFFF) {
              for (int n = 0; n < 6; ++n) Advance();
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            }
          }
          if (cp < 0x80) {
            out->push_back(static_cast<char>(cp));
          } else if (cp < 0x800) {
            out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          } else if (cp < 0x10000) {
            out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
            out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          } else {
            out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
            out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
            out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          }
          break;
        }
        default:
          if (e >= '0' && e <= '7') {  // octal, up to three digits
            int v = e - '0';
            for (int n = 1; n < 3 && Peek() >= '0' && Peek() <= '7'; ++n) {
              v = v * 8 + (Peek() - '0');
              Advance();
            }
            out->push_back(static_cast<char>(v));
            break;
          }
          return Error(std::string("unknown escape \\") + (std::isprint(static_cast<unsigned char>(e)) ? e : '?') +
                       " in a string");
      }
    }
  }

  std::string_view s_;
  std::string source_;
  size_t pos_ = 0;
  int line_ = 1, col_ = 1;
};

}  // namespace

Result<PbtxtMessage> ParsePbtxt(std::string_view text, const std::string& source) {
  return Parser(text, source).Top();
}

}  // namespace mms
