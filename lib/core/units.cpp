#include "core/units.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <optional>
#include <vector>

namespace mms {
namespace {
// Splits "12.5ms" into 12.5 and "ms", and the number as written ("12.5").
// False when there is no leading number.
bool SplitNumber(std::string_view s, double* value, std::string* suffix, std::string* number) {
  std::string str = Trim(s);
  if (str.empty()) return false;
  const char* begin = str.c_str();
  char* end = nullptr;
  *value = std::strtod(begin, &end);
  if (end == begin) return false;
  *number = std::string(begin, static_cast<size_t>(end - begin));
  *suffix = Trim(std::string_view(end));
  return std::isfinite(*value);
}

// `number` (its text, read as `v`) times `mult`: exact for a plain integer
// (a double holds only 53 bits: 17280000000000001ns read back one less);
// nullopt past 2^64.
std::optional<uint64_t> Times(std::string_view number, double v, uint64_t mult) {
  if (!number.empty() && number[0] == '+') number.remove_prefix(1);  // (strtod reads "+5"; from_chars does not)
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), n);
  if (ec == std::errc() && end == number.data() + number.size()) {
    uint64_t out = 0;
    if (__builtin_mul_overflow(n, mult, &out)) return std::nullopt;
    return out;
  }
  if (ec == std::errc::result_out_of_range && end == number.data() + number.size()) return std::nullopt;
  const double r = std::round(v * static_cast<double>(mult));
  if (!(r < 18446744073709551616.0)) return std::nullopt;  // 2^64 (and not NaN)
  return static_cast<uint64_t>(r);
}
}  // namespace

std::string Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

std::vector<std::string> Split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t p = s.find(sep, start);
    out.push_back(Trim(s.substr(start, p == std::string_view::npos ? std::string_view::npos : p - start)));
    if (p == std::string_view::npos) break;
    start = p + 1;
  }
  return out;
}

Result<int64_t> ParseDurationNanos(std::string_view s) {
  // One number with a unit ("250ms", "1.5s"), several summed ("1m30s",
  // "1h 30m", as FormatDurationNanos writes them), or a lone number: seconds.
  const std::string rule = "a duration is a number with a unit ns, us, ms, s, m, h or d (e.g. 250ms, 30m, 1m30s)";
  const std::string str = Trim(s);
  auto bad = [&](const std::string& why) { return InvalidArgument("invalid duration '" + str + "': " + why); };
  auto too_long = [&] { return InvalidArgument("duration '" + str + "' is too long"); };
  uint64_t ns = 0;
  size_t i = 0;
  int parts = 0;
  while (i < str.size()) {
    const char* begin = str.c_str() + i;
    char* end = nullptr;
    const double v = std::strtod(begin, &end);
    const std::string_view number(begin, static_cast<size_t>(end - begin));
    if (end == begin || !std::isfinite(v) || number.find_first_of("xX") != std::string_view::npos)
      return bad(rule);  // (not inf, nan or hexadecimal, which strtod reads too)
    if (v < 0 || *begin == '-') return bad("must not be negative");
    i += number.size();
    size_t u = i;
    while (u < str.size() && !std::isdigit(static_cast<unsigned char>(str[u])) && str[u] != '.') ++u;
    const std::string suf = Trim(std::string_view(str).substr(i, u - i));
    i = u;
    uint64_t mult;
    if (suf == "ns") mult = 1;
    else if (suf == "us" || suf == "µs") mult = 1'000;
    else if (suf == "ms") mult = 1'000'000;
    else if (suf == "s" || (suf.empty() && parts == 0 && i == str.size())) mult = 1'000'000'000;
    else if (suf == "m" || suf == "min") mult = 60'000'000'000;
    else if (suf == "h") mult = 3'600'000'000'000;
    else if (suf == "d") mult = 86'400'000'000'000;
    else return bad(rule);
    auto part = Times(number, v, mult);
    if (!part || __builtin_add_overflow(ns, *part, &ns)) return too_long();
    ++parts;
  }
  if (parts == 0) return bad(rule);
  if (ns > 9'000'000'000'000'000'000ull) return too_long();
  return static_cast<int64_t>(ns);
}

Result<uint64_t> ParseBytes(std::string_view s) {
  double v;
  std::string suf;
  const std::string rule =
      "a size is a number with an optional unit B, KB, MB, GB, TB, KiB, MiB, GiB or TiB (e.g. 8GiB)";
  std::string number;
  if (!SplitNumber(s, &v, &suf, &number)) return InvalidArgument("invalid size '" + std::string(s) + "': " + rule);
  if (v < 0) return InvalidArgument("invalid size '" + std::string(s) + "': must not be negative");
  std::string u = suf;
  std::transform(u.begin(), u.end(), u.begin(), [](unsigned char c) { return std::toupper(c); });
  uint64_t mult;
  if (u.empty() || u == "B") mult = 1;
  else if (u == "KB" || u == "K") mult = 1'000;
  else if (u == "MB" || u == "M") mult = 1'000'000;
  else if (u == "GB" || u == "G") mult = 1'000'000'000;
  else if (u == "TB" || u == "T") mult = 1'000'000'000'000;
  else if (u == "KIB") mult = 1ull << 10;
  else if (u == "MIB") mult = 1ull << 20;
  else if (u == "GIB") mult = 1ull << 30;
  else if (u == "TIB") mult = 1ull << 40;
  else return InvalidArgument("invalid size '" + std::string(s) + "': " + rule);
  auto b = Times(number, v, mult);
  if (!b) return InvalidArgument("size '" + std::string(s) + "' is too large");
  return *b;
}

std::string FormatBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else std::snprintf(buf, sizeof buf, v < 10 ? "%.2f %s" : v < 100 ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

bool FinerThanBasisPoint(double percent) { return std::abs(percent * 100 - std::round(percent * 100)) > 1e-6; }

int PercentBasisPoints(double percent) {
  // The epsilon keeps 10% at 1000 despite binary rounding.
  return static_cast<int>(std::ceil(percent * 100 - 1e-9));
}

std::string FormatPercent(double percent) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", percent);
  std::string s = buf;
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s + "%";
}

std::string FormatDurationNanos(int64_t ns) {
  char buf[48];
  double v = static_cast<double>(ns);
  if (ns < 1000) std::snprintf(buf, sizeof buf, "%lld ns", static_cast<long long>(ns));
  else if (ns < 1000000) std::snprintf(buf, sizeof buf, "%.0f µs", v / 1e3);
  else if (ns < 1000000000) std::snprintf(buf, sizeof buf, "%.1f ms", v / 1e6);
  else if (ns < 60 * 1000000000LL) std::snprintf(buf, sizeof buf, "%.1f s", v / 1e9);
  else {
    long long s = ns / 1000000000LL;
    if (s < 3600) std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
    else std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
  }
  return buf;
}

std::string ExactDuration(int64_t ns) {
  static const std::pair<int64_t, const char*> units[] = {
      {3600'000'000'000, "h"}, {60'000'000'000, "m"}, {1'000'000'000, "s"}, {1'000'000, "ms"}, {1'000, "us"}};
  if (ns != 0)
    for (const auto& [n, name] : units)
      if (ns % n == 0) return std::to_string(ns / n) + name;
  return ns == 0 ? "0s" : std::to_string(ns) + "ns";
}

std::string ExactBytes(uint64_t bytes) {
  // The unit, binary or decimal, that states it in the smallest number
  // ("2GB" stays 2GB, not 1953125KiB; "64MiB" stays 64MiB).
  static const std::pair<uint64_t, const char*> units[] = {
      {1ull << 40, "TiB"}, {1ull << 30, "GiB"}, {1ull << 20, "MiB"}, {1ull << 10, "KiB"},
      {1'000'000'000'000ull, "TB"}, {1'000'000'000ull, "GB"}, {1'000'000ull, "MB"}, {1'000ull, "KB"}};
  std::string best = std::to_string(bytes) + "B";
  uint64_t best_n = bytes;
  for (const auto& [n, name] : units)
    if (bytes != 0 && bytes % n == 0 && bytes / n < best_n) {
      best_n = bytes / n;
      best = std::to_string(best_n) + name;
    }
  return best;
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string ClosestMatch(std::string_view word, const std::vector<std::string>& candidates) {
  size_t limit = std::max<size_t>(2, word.size() / 3);
  std::string best;
  size_t best_d = limit + 1;
  for (const auto& c : candidates) {
    size_t d = EditDistance(word, c);
    // A candidate that extends the word ("rec-eu" → "rec-eu-west") is a good hint too.
    if (c.size() > word.size() && c.compare(0, word.size(), word) == 0) d = std::min(d, limit);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

std::string FormatUtcMillis(int64_t unix_ms) {
  time_t secs = static_cast<time_t>(unix_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(unix_ms % 1000));
  return buf;
}

}  // namespace mms
