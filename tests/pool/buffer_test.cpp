#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "pool/model.h"

using namespace mms;

namespace {
size_t Resident() {
  std::ifstream statm("/proc/self/statm");
  size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}
}  // namespace

TEST_CASE("host buffers' memory goes back to the system as they are freed, in any order, from any thread") {
  // mmsd with models churning through a 128 MiB host tier grew ~300 MiB
  // past it: from malloc, the first free of a 16 MiB buffer raised glibc's
  // mmap threshold, the next buffers came from a heap, and the ones freed
  // below its top stayed resident (here: 128 MiB of 128 with half freed,
  // 96 MiB with all).
  constexpr size_t kMiB = size_t{1} << 20, n = 16 * kMiB;
  {
    auto first = AllocateHost(n);
    REQUIRE(first);
    std::memset(first->data(), 1, n);
  }
  const size_t base = Resident();
  std::vector<std::shared_ptr<Buffer>> bufs;
  std::thread([&] {  // (a loader thread's: malloc would use its own arena)
    for (int i = 0; i < 8; ++i) {
      bufs.push_back(AllocateHost(n));
      if (bufs.back()) std::memset(bufs.back()->data(), 1, n);
    }
  }).join();
  for (const auto& b : bufs) REQUIRE(b);
  CHECK(Resident() >= base + 7 * n);
  for (size_t i = 0; i < bufs.size(); i += 2) bufs[i].reset();  // none of them the last
  CHECK_MESSAGE(Resident() <= base + 4 * n + 8 * kMiB, std::to_string((Resident() - base) / kMiB) << " MiB resident");
  bufs.clear();
  CHECK_MESSAGE(Resident() <= base + 8 * kMiB, std::to_string((Resident() - base) / kMiB) << " MiB resident");
}

TEST_CASE("host buffers are 64-byte aligned and hold their size, small or large") {
  for (size_t n : {size_t{1}, size_t{100}, size_t{256} * 1024 - 1, size_t{256} * 1024, size_t{3} * 1024 * 1024 + 5}) {
    auto b = AllocateHost(n);
    REQUIRE(b);
    CHECK(b->size() == n);
    CHECK(reinterpret_cast<uintptr_t>(b->data()) % 64 == 0);
    std::memset(b->data(), 0xab, n);  // all of it is writable
    CHECK(b->data()[n - 1] == 0xab);
  }
}
