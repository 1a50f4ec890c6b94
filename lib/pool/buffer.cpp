#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "pool/model.h"

namespace mms {
namespace {
class AlignedBuffer final : public Buffer {
 public:
  AlignedBuffer(uint8_t* p, size_t n) : p_(p), n_(n) {}
  ~AlignedBuffer() override { std::free(p_); }
  uint8_t* data() const override { return p_; }
  size_t size() const override { return n_; }

 private:
  uint8_t* p_;
  size_t n_;
};

// Weights' buffers come and go as models move between tiers. From malloc,
// each free of one raised glibc's mmap threshold to its size, and the next
// ones came from the heap, where freed blocks stayed resident: under churn
// through a 128 MiB host tier mmsd's RSS grew to ~300 MiB over the tier's
// budget (flat at the budget with a fixed threshold). Mapped directly, a
// buffer's pages go back to the system when it is freed, and malloc never
// sees it. Fresh pages must be faulted in, though: reading 16 MiB into a
// fresh mapping took 63 ms against 6 ms into a reused heap block (this VM),
// and 5 ms in transparent huge pages, which large buffers ask for.
class MappedBuffer final : public Buffer {
 public:
  MappedBuffer(uint8_t* p, size_t n, size_t mapped) : p_(p), n_(n), mapped_(mapped) {}
  ~MappedBuffer() override { ::munmap(p_, mapped_); }
  uint8_t* data() const override { return p_; }
  size_t size() const override { return n_; }

 private:
  uint8_t* p_;
  size_t n_;
  size_t mapped_;
};

constexpr size_t kMapFrom = 256 * 1024;  // smaller ones (small models, tests) from malloc
constexpr size_t kHugePage = 2 * 1024 * 1024;

std::shared_ptr<Buffer> Map(size_t bytes) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t len = (bytes + page - 1) / page * page;
  const bool huge = len >= kHugePage;
  // Huge pages need 2 MiB aligned addresses: map the slack, trim it off.
  const size_t span = len + (huge ? kHugePage : 0);
  void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t at = huge ? (start + kHugePage - 1) / kHugePage * kHugePage : start;
  if (at > start) ::munmap(raw, at - start);
  if (start + span > at + len) ::munmap(reinterpret_cast<void*>(at + len), start + span - (at + len));
  // (Refused where transparent huge pages are off: then 4 KiB pages.)
  if (huge) (void)::madvise(reinterpret_cast<void*>(at), len, MADV_HUGEPAGE);
  return std::make_shared<MappedBuffer>(reinterpret_cast<uint8_t*>(at), bytes, len);
}
}  // namespace

std::shared_ptr<Buffer> AllocateHost(size_t bytes) {
  if (bytes >= kMapFrom) return Map(bytes);
  size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) return nullptr;
  return std::make_shared<AlignedBuffer>(static_cast<uint8_t*>(p), bytes);
}

}  // namespace mms
