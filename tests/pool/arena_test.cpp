#include <doctest/doctest.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "pool/arena.h"

using namespace mms;

namespace {
// Device regions are aligned (cudaMalloc: 256 bytes); so is this one.
struct Region {
  explicit Region(size_t n) : n_(n), p_(static_cast<uint8_t*>(std::aligned_alloc(256, n))) {}
  ~Region() { std::free(p_); }
  uint8_t* data() const { return p_; }
  size_t size() const { return n_; }
  size_t n_;
  uint8_t* p_;
};
}  // namespace

TEST_CASE("arena: best fit, alignment, coalescing") {
  Region mem(1 << 16);
  DeviceArena a(mem.data(), mem.size());
  auto b1 = a.Allocate(1000);
  auto b2 = a.Allocate(3000);
  auto b3 = a.Allocate(1000);
  REQUIRE(b1);
  REQUIRE(b2);
  REQUIRE(b3);
  CHECK(reinterpret_cast<uintptr_t>(b2->data()) % DeviceArena::kAlignment == 0);
  CHECK(b1->size() == 1000);
  CHECK(a.used() == 1024 + 3072 + 1024);
  b2.reset();
  CHECK(a.free_ranges() == 2);
  auto small = a.Allocate(2000);  // best fit: the 3072 hole, not the tail
  REQUIRE(small);
  CHECK(small->data() == mem.data() + 1024);
  small.reset();
  b1.reset();
  b3.reset();
  CHECK(a.used() == 0);
  CHECK(a.free_ranges() == 1);
  CHECK(a.largest_free() == mem.size());
  CHECK_FALSE(a.Allocate(mem.size() + 1));
}

TEST_CASE("arena: a thousand random swap cycles leave it exactly as reserved") {
  Region mem(1 << 20);
  DeviceArena a(mem.data(), mem.size());
  std::mt19937 rng(7);
  std::vector<std::shared_ptr<Buffer>> live;
  int failed = 0;
  for (int i = 0; i < 1000; ++i) {
    if (!live.empty() && (rng() % 3 == 0 || live.size() > 12)) {
      live.erase(live.begin() + static_cast<long>(rng() % live.size()));
    }
    auto b = a.Allocate(1000 + rng() % 100000);
    if (b) live.push_back(b);
    else ++failed;
  }
  live.clear();
  CHECK(a.used() == 0);
  CHECK(a.free_ranges() == 1);
  CHECK(a.largest_free() == mem.size());
  MESSAGE(failed << " allocations found no room (then evicting more is the pool's job)");
}

TEST_CASE("arena: AllocateAt, LowerPlace and a simulated compaction") {
  Region mem(4096);
  DeviceArena a(mem.data(), mem.size());
  auto x = a.Allocate(256), b = a.Allocate(1024), c = a.Allocate(1024), d = a.Allocate(1024);
  REQUIRE((x && b && c && d));
  const uint64_t ob = a.OffsetOf(*b), oc = a.OffsetOf(*c);
  CHECK(ob == 256);
  CHECK(oc == 1280);
  x.reset();  // a 256-byte hole at 0; 768 bytes free at the end
  CHECK(a.largest_free() == 768);
  // b can slide down into the hole next to it; c cannot go lower (no hole below fits it).
  CHECK(a.LowerPlace(ob, 1024) == std::optional<uint64_t>(0));
  CHECK_FALSE(a.LowerPlace(oc, 1024).has_value());
  // Moving b, c and d down joins the hole to the end: 1024 bytes in one range.
  std::vector<std::pair<uint64_t, uint64_t>> all{{ob, 1024}, {oc, 1024}, {a.OffsetOf(*d), 1024}};
  CHECK(a.CompactionWouldFit(all, 1024));
  CHECK_FALSE(a.CompactionWouldFit(all, 1280));
  // Only c movable (b in the way): nothing would join.
  CHECK_FALSE(a.CompactionWouldFit({{oc, 1024}}, 1024));
  CHECK(a.used() == 3072);  // the simulation changed nothing
  CHECK(a.largest_free() == 768);
  // AllocateAt takes exactly a free range's part, and refuses a taken one.
  CHECK_FALSE(a.AllocateAt(ob, 256));
  auto at = a.AllocateAt(3584, 256);
  REQUIRE(at);
  CHECK(a.OffsetOf(*at) == 3584);
  CHECK(a.free_ranges() == 3);  // [0,256), [3328,3584), [3840,4096)
}
