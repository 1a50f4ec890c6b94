// The seed scenario's request traces and Belady's optimum, shared by
// seed_scenario_bench (end to end through the daemon) and policy_bench
// (offline, through the eviction policies alone).
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>
#include <random>
#include <vector>

namespace mms::bench {

// The Zipf exponent for which the top `top` of `n` items take `share`.
inline double ZipfExponent(int n, int top, double share) {
  double lo = 0, hi = 5;
  for (int it = 0; it < 100; ++it) {
    double s = (lo + hi) / 2, a = 0, b = 0;
    for (int i = 1; i <= n; ++i) (i <= top ? a : b) += std::pow(i, -s);
    if (a / (a + b) < share) lo = s;
    else hi = s;
  }
  return (lo + hi) / 2;
}

// rank → model id mapping `order`; returns model ids.
inline std::vector<int> ZipfTrace(int requests, int n, double s, const std::vector<int>& order,
                                  std::mt19937_64& rng) {
  std::vector<double> w(n);
  for (int i = 0; i < n; ++i) w[i] = std::pow(i + 1, -s);
  std::discrete_distribution<int> dist(w.begin(), w.end());
  std::vector<int> out;
  for (int i = 0; i < requests; ++i) out.push_back(order[dist(rng)]);
  return out;
}

struct SeedTraces {
  double exponent = 0;
  std::vector<int> zipf;   // steady popularity
  std::vector<int> shift;  // the cold half of the models turns hot halfway
};

// The seed's scenario: the top `top` of `models` take 80% of the requests.
inline SeedTraces MakeSeedTraces(int requests, int models, int top, uint64_t seed) {
  SeedTraces t;
  t.exponent = ZipfExponent(models, top, 0.8);
  std::mt19937_64 rng(seed);
  std::vector<int> order(models), shifted(models);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  for (int i = 0; i < models; ++i) shifted[i] = order[(i + models / 2) % models];
  t.zipf = ZipfTrace(requests, models, t.exponent, order, rng);
  t.shift = ZipfTrace(requests / 2, models, t.exponent, order, rng);
  auto second = ZipfTrace(requests - requests / 2, models, t.exponent, shifted, rng);
  t.shift.insert(t.shift.end(), second.begin(), second.end());
  return t;
}

// Belady's MIN with forced admission: misses for a cache of `cap` items.
inline int BeladyMisses(const std::vector<int>& trace, int cap) {
  std::vector<size_t> next(trace.size());
  std::map<int, size_t> last;
  for (size_t i = trace.size(); i-- > 0;) {
    auto it = last.find(trace[i]);
    next[i] = it == last.end() ? SIZE_MAX : it->second;
    last[trace[i]] = i;
  }
  std::map<int, size_t> cache;  // model → its next use
  int misses = 0;
  for (size_t i = 0; i < trace.size(); ++i) {
    auto it = cache.find(trace[i]);
    if (it == cache.end()) {
      ++misses;
      if (static_cast<int>(cache.size()) >= cap) {
        auto victim = cache.begin();
        for (auto c = cache.begin(); c != cache.end(); ++c)
          if (c->second > victim->second) victim = c;
        cache.erase(victim);
      }
    }
    cache[trace[i]] = next[i];
  }
  return misses;
}

}  // namespace mms::bench
