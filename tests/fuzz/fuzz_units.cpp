// libFuzzer target: human units (lib/core/units.cpp): durations, byte sizes,
// percentages, as mms.toml values and CLI flags reach them.
// The input is split on ',' (as mms canary start --stages is) and each piece
// goes through:
//   ParseDurationNanos -> ExactDuration must parse back to the same value;
//                         FormatDurationNanos
//   ParseBytes         -> ExactBytes must parse back to the same value; FormatBytes
//   ParseDecimal (cmd/cli.cpp, copied below) -> FormatPercent, and for 0..100
//                         FinerThanBasisPoint / PercentBasisPoints (in 0..10000)
//   ClosestMatch / EditDistance against mms.toml's key names.
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "core/units.h"

namespace {
using namespace mms;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "PROPERTY VIOLATED: %s\n", what.c_str());
  std::abort();
}

// Verbatim from cmd/cli.cpp (which pulls in CLI11).
std::optional<double> ParseDecimal(const std::string& text) {
  double x = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), x, std::chars_format::general);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || !std::isfinite(x)) return std::nullopt;
  return x;
}

void One(const std::string& s) {
  if (auto d = ParseDurationNanos(s); d.ok()) {
    if (*d < 0) Fail("negative duration from '" + s + "'");
    std::string exact = ExactDuration(*d);
    auto back = ParseDurationNanos(exact);
    if (!back.ok() || *back != *d)
      Fail("duration '" + s + "' = " + std::to_string(*d) + "ns; ExactDuration '" + exact + "' reads back as " +
           (back.ok() ? std::to_string(*back) : back.status().message()));
    (void)FormatDurationNanos(*d);
  }
  if (auto b = ParseBytes(s); b.ok()) {
    std::string exact = ExactBytes(*b);
    auto back = ParseBytes(exact);
    if (!back.ok() || *back != *b)
      Fail("size '" + s + "' = " + std::to_string(*b) + "; ExactBytes '" + exact + "' reads back as " +
           (back.ok() ? std::to_string(*back) : back.status().message()));
    (void)FormatBytes(*b);
  }
  if (auto p = ParseDecimal(s)) {
    (void)FormatPercent(*p);
    if (*p >= 0 && *p <= 100) {
      (void)FinerThanBasisPoint(*p);
      int bp = PercentBasisPoints(*p);
      if (bp < 0 || bp > 10000) Fail("basis points of '" + s + "' = " + std::to_string(bp));
    }
  }
  static const std::vector<std::string> keys = {"socket", "data_dir", "contexts", "workers", "max_message_bytes",
                                                "shutdown_grace", "level", "file", "format", "device_budget"};
  if (s.size() < 512) (void)ClosestMatch(s, keys);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  One(text);
  for (const auto& piece : Split(text, ',')) One(piece);
  (void)Trim(text);
  return 0;
}
