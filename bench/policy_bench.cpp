// Eviction policies offline: the seed scenario's traces replayed through
// the pool's own policy classes (lib/pool/policy) against Belady's optimum,
// over many random traces, so that a policy is chosen on more than one draw.
// The tier is simulated as the pool drives it: on a miss, Victim + Remove
// until there is room, then Insert + Touch; on a hit, Touch.
//
//   policy_bench [--traces N] [--requests N] [--models M] [--capacity C]
//
// Traces: zipf (steady), shift (the cold half turns hot halfway; the seed's
// second trace), drift (the ranking rotates by 5 models every 2,000
// requests). Seed 2026 is the draw seed_scenario_bench runs end to end.
#include <algorithm>
#include <cstdio>
#include <string>
#include <unordered_set>

#include "bench_util.h"
#include "pool/policy.h"
#include "traces.h"

using namespace mms;

namespace {

int Misses(const std::vector<int>& trace, int cap, const PolicyOptions& opts) {
  auto policy = MakePolicy(opts).value();
  std::unordered_set<PoolKey> resident;
  int misses = 0;
  for (int m : trace) {
    if (!resident.count(m)) {
      ++misses;
      while (static_cast<int>(resident.size()) >= cap) {
        PoolKey v = *policy->Victim([](PoolKey) { return true; });
        policy->Remove(v);
        resident.erase(v);
      }
      policy->Insert(m);
      resident.insert(m);
    }
    policy->Touch(m);
  }
  return misses;
}

std::vector<int> DriftTrace(int requests, int models, double s, std::mt19937_64& rng) {
  std::vector<int> order(models), out;
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  for (int done = 0; done < requests; done += 2000) {
    auto part = bench::ZipfTrace(std::min(2000, requests - done), models, s, order, rng);
    out.insert(out.end(), part.begin(), part.end());
    std::rotate(order.begin(), order.begin() + std::min(5, models - 1), order.end());
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int traces = 30, requests = 20000, models = 50, cap = 12;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    int v = std::atoi(argv[i + 1]);
    if (a == "--traces") traces = v;
    else if (a == "--requests") requests = v;
    else if (a == "--models") models = v;
    else if (a == "--capacity") cap = v;
  }
  const std::vector<PolicyOptions> policies{{"adaptive", 350}, {"lrfu", 175}, {"lrfu", 350}, {"lrfu", 700},
                                            {"lru", 0}};
  const char* kinds[] = {"zipf", "shift", "drift"};
  // ratio[kind][policy][trace]
  std::vector<std::vector<std::vector<double>>> ratio(3, std::vector<std::vector<double>>(policies.size()));
  for (int t = 0; t < traces; ++t) {
    const uint64_t seed = t == 0 ? 2026 : static_cast<uint64_t>(t);
    bench::SeedTraces st = bench::MakeSeedTraces(requests, models, cap, seed);
    std::mt19937_64 rng(seed + 1000);
    const std::vector<int>* by_kind[] = {&st.zipf, &st.shift, nullptr};
    std::vector<int> drift = DriftTrace(requests, models, st.exponent, rng);
    by_kind[2] = &drift;
    for (int k = 0; k < 3; ++k) {
      const double belady = bench::BeladyMisses(*by_kind[k], cap);
      for (size_t p = 0; p < policies.size(); ++p)
        ratio[k][p].push_back(Misses(*by_kind[k], cap, policies[p]) / belady);
    }
  }
  std::printf("misses vs Belady's optimum: %d traces of %d requests per kind, %d models, room for %d\n\n", traces,
              requests, models, cap);
  std::vector<std::vector<std::string>> rows{{"trace", "policy", "seed 2026", "mean", "min", "max"}};
  for (int k = 0; k < 3; ++k)
    for (size_t p = 0; p < policies.size(); ++p) {
      const auto& r = ratio[k][p];
      std::string name = policies[p].name;
      if (name != "lru") name += " " + bench::Fmt(policies[p].half_life, 0);
      rows.push_back({kinds[k], name, bench::Fmt(r[0], 3), bench::Fmt(bench::Mean(r), 3),
                      bench::Fmt(*std::min_element(r.begin(), r.end()), 3),
                      bench::Fmt(*std::max_element(r.begin(), r.end()), 3)});
    }
  bench::PrintTable(rows);
  return 0;
}
