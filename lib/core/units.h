// Parsing and printing of human units used on the command line and in
// mms.toml: durations ("250ms", "10s", "30m", "2h", "1d") and byte sizes
// ("512MiB", "8GiB", "1.5GB", "1048576"). Errors say what is accepted.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace mms {

// Duration in nanoseconds. Accepts a number followed by ns|us|ms|s|m|h|d;
// a bare number means seconds. Negative values are refused.
Result<int64_t> ParseDurationNanos(std::string_view s);
// Byte size: a number with optional suffix B, KB, MB, GB, TB (powers of 1000)
// or KiB, MiB, GiB, TiB (powers of 1024). Negative values are refused.
Result<uint64_t> ParseBytes(std::string_view s);

// "1.5 GiB", "812 MiB", "17 B".
std::string FormatBytes(uint64_t bytes);
// "850 µs", "12.3 ms", "4.2 s", "2m30s".
std::string FormatDurationNanos(int64_t ns);
// Exact forms that ParseDurationNanos / ParseBytes read back to the same
// value, in the largest unit that divides it: "250ms", "30m", "1500us";
// "8GiB", "64KiB", "1000B" (for config files and --check-config).
std::string ExactDuration(int64_t ns);
std::string ExactBytes(uint64_t bytes);

// "12.5%", "10%", "0.25%": a percentage without trailing zeros.
std::string FormatPercent(double percent);
// "2026-11-29T16:45:01.123Z": Unix milliseconds as UTC, ISO 8601.
std::string FormatUtcMillis(int64_t unix_ms);
// A treatment share in basis points (0..10000 for 0..100%), as the seed's
// assignment compares: bucket < percent × 100 on the real value, which for
// integer buckets is bucket < ceil(percent × 100) (33.333% → 3334).
int PercentBasisPoints(double percent);
// True when `percent` is not a whole number of basis points (0.01%): a
// share mms would round up when routing (0.001% routes 0.01%).
bool FinerThanBasisPoint(double percent);

// Splits on `sep`, trimming whitespace from each piece; empty pieces kept.
std::vector<std::string> Split(std::string_view s, char sep);
std::string Trim(std::string_view s);

// Levenshtein distance, for "did you mean" suggestions.
size_t EditDistance(std::string_view a, std::string_view b);
// The closest candidate within distance max(2, len/3), or "".
std::string ClosestMatch(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace mms
