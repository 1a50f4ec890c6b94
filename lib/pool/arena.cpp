#include "pool/arena.h"

#include <algorithm>

namespace mms {

class DeviceArena::Block final : public Buffer {
 public:
  Block(DeviceArena* arena, uint64_t offset, uint64_t size, uint64_t requested)
      : arena_(arena), offset_(offset), size_(size), requested_(requested) {}
  ~Block() override { arena_->Free(offset_, size_); }
  uint8_t* data() const override { return arena_->base_ + offset_; }
  size_t size() const override { return requested_; }

 private:
  DeviceArena* arena_;
  uint64_t offset_, size_, requested_;
};

std::shared_ptr<Buffer> DeviceArena::Allocate(uint64_t bytes) {
  uint64_t need = (std::max<uint64_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  std::lock_guard<std::mutex> lock(mu_);
  auto best = free_.end();
  for (auto it = free_.begin(); it != free_.end(); ++it)
    if (it->second >= need && (best == free_.end() || it->second < best->second)) best = it;
  if (best == free_.end()) return nullptr;
  uint64_t offset = best->first, size = best->second;
  free_.erase(best);
  if (size > need) free_[offset + need] = size - need;
  used_ += need;
  ++allocations_;
  return std::make_shared<Block>(this, offset, need, bytes);
}

std::shared_ptr<Buffer> DeviceArena::AllocateAt(uint64_t offset, uint64_t bytes) {
  uint64_t need = (std::max<uint64_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  std::lock_guard<std::mutex> lock(mu_);
  if (!Take(free_, offset, need)) return nullptr;
  used_ += need;
  ++allocations_;
  return std::make_shared<Block>(this, offset, need, bytes);
}

std::optional<uint64_t> DeviceArena::LowerPlace(uint64_t offset, uint64_t size) const {
  std::lock_guard<std::mutex> lock(mu_);
  return Lower(free_, offset, size);
}

bool DeviceArena::CompactionWouldFit(const std::vector<std::pair<uint64_t, uint64_t>>& movable, uint64_t need,
                                     const std::vector<std::pair<uint64_t, uint64_t>>& freed,
                                     const std::vector<uint64_t>& claimed) const {
  FreeList sim;
  {
    std::lock_guard<std::mutex> lock(mu_);
    sim = free_;
  }
  for (const auto& [offset, size] : freed) Give(sim, offset, size);
  auto best_fit = [&](uint64_t size) -> std::optional<uint64_t> {  // as Allocate places
    std::optional<uint64_t> at;
    uint64_t best = 0;
    for (const auto& [o, s] : sim)
      if (s >= size && (!at || s < best)) at = o, best = s;
    return at;
  };
  std::vector<uint64_t> claims = claimed;  // the largest first
  std::sort(claims.begin(), claims.end(), std::greater<uint64_t>());
  // Room for the claims and then `need`.
  auto fits = [&] {
    if (claims.empty()) return best_fit(need).has_value();
    FreeList saved = sim;
    bool ok = true;
    for (uint64_t c : claims) {
      auto at = best_fit(c);
      if (!at || !Take(sim, *at, c)) {
        ok = false;
        break;
      }
    }
    ok = ok && best_fit(need).has_value();
    sim = std::move(saved);
    return ok;
  };
  for (const auto& [offset, size] : movable) {
    if (fits()) return true;
    if (auto to = Lower(sim, offset, size)) {
      Give(sim, offset, size);
      Take(sim, *to, size);
    }
  }
  return fits();
}

void DeviceArena::Free(uint64_t offset, uint64_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  used_ -= size;
  Give(free_, offset, size);
}

void DeviceArena::Give(FreeList& free, uint64_t offset, uint64_t size) {
  auto next = free.lower_bound(offset);
  if (next != free.end() && offset + size == next->first) {  // merge with the following range
    size += next->second;
    next = free.erase(next);
  }
  if (next != free.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {  // merge with the preceding range
      prev->second += size;
      return;
    }
  }
  free[offset] = size;
}

bool DeviceArena::Take(FreeList& free, uint64_t offset, uint64_t need) {
  auto it = free.upper_bound(offset);
  if (it == free.begin()) return false;
  --it;  // the free range starting at or before `offset`
  const uint64_t start = it->first, size = it->second;
  if (offset < start || offset + need > start + size) return false;
  free.erase(it);
  if (offset > start) free[start] = offset - start;
  if (offset + need < start + size) free[offset + need] = start + size - offset - need;
  return true;
}

std::optional<uint64_t> DeviceArena::Lower(const FreeList& free, uint64_t offset, uint64_t size) {
  for (const auto& [start, len] : free) {
    if (start >= offset) break;
    if (len >= size || start + len == offset) return start;
  }
  return std::nullopt;
}

uint64_t DeviceArena::used() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_;
}

uint64_t DeviceArena::largest_free() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t m = 0;
  for (const auto& [o, s] : free_) m = std::max(m, s);
  return m;
}

size_t DeviceArena::free_ranges() const {
  std::lock_guard<std::mutex> lock(mu_);
  return free_.size();
}

uint64_t DeviceArena::allocations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocations_;
}

}  // namespace mms
