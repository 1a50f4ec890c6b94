// Shared helpers for the benchmarks: percentiles, a started daemon, tables.
// Benchmarks print figures; they assert nothing about speed.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "support/process.h"

namespace mms::bench {

inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

inline double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

// The config a benchmark's daemon runs with: quiet logs, plus any TOML in
// the environment variable `env` (e.g. SCHED_CONFIG=$'[scheduler]\nworkers = 1\n').
inline std::string DaemonConfig(const char* env) {
  const char* extra = std::getenv(env);
  return std::string("[log]\nlevel = \"warn\"\n") + (extra ? extra : "");
}

inline std::string Fmt(double v, int prec = 2) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

inline void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w;
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) {
      if (w.size() <= i) w.push_back(0);
      w[i] = std::max(w[i], r[i].size());
    }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) line += r[i] + std::string(w[i] - r[i].size() + 2, ' ');
    std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);
}

}  // namespace mms::bench
