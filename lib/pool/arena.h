// DeviceArena: hands out blocks of one region reserved once per device (the
// device's whole weight budget: one cudaMalloc on a GPU), so swapping models
// in and out never calls the device allocator and cannot fragment it. Models'
// parameters are views into their block.
//
// Allocation is best-fit over a free list kept sorted by offset; freeing
// coalesces with both neighbours. Blocks are 256-byte aligned. A block is a
// Buffer; dropping the last reference returns it to the arena. Models of
// mixed sizes coming and going still fragment the region itself: the pool
// compacts it (LowerPlace, AllocateAt) by moving idle models' blocks down.
//
// Thread-safety: Allocate may be called from any thread; blocks may be
// released from any thread. The arena must outlive its blocks.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "pool/model.h"

namespace mms {

class DeviceArena {
 public:
  static constexpr uint64_t kAlignment = 256;

  // `base` points at `capacity` bytes owned by the caller (the device backend).
  DeviceArena(uint8_t* base, uint64_t capacity) : base_(base), capacity_(capacity) { free_[0] = capacity; }

  // A block of at least `bytes`, or null when no free range is large enough.
  std::shared_ptr<Buffer> Allocate(uint64_t bytes);
  // A block of at least `bytes` starting at `offset`, or null unless that
  // whole range is free.
  std::shared_ptr<Buffer> AllocateAt(uint64_t offset, uint64_t bytes);
  // Where in this arena `block` (one of its blocks) starts.
  uint64_t OffsetOf(const Buffer& block) const { return static_cast<uint64_t>(block.data() - base_); }
  // The lowest offset below `offset` where the block of `size` bytes now at
  // `offset` would fit once freed (a free range large enough, or the free
  // range right before it), or nullopt when it cannot move down.
  std::optional<uint64_t> LowerPlace(uint64_t offset, uint64_t size) const;
  // Whether moving the blocks `movable` ({offset, size}, by offset) down,
  // each to its LowerPlace in turn, would leave a free range of `need`
  // bytes: the moves simulated on a copy of the free list. Optionally with
  // the blocks `freed` ({offset, size}) free first (those eviction would
  // free), and after the moves the sizes `claimed` placed as Allocate
  // places them, largest first (room other loads will take).
  bool CompactionWouldFit(const std::vector<std::pair<uint64_t, uint64_t>>& movable, uint64_t need,
                          const std::vector<std::pair<uint64_t, uint64_t>>& freed = {},
                          const std::vector<uint64_t>& claimed = {}) const;

  uint64_t capacity() const { return capacity_; }
  uint64_t used() const;
  // The largest block Allocate could return now.
  uint64_t largest_free() const;
  size_t free_ranges() const;
  uint64_t allocations() const;

 private:
  class Block;
  using FreeList = std::map<uint64_t, uint64_t>;  // offset → size
  void Free(uint64_t offset, uint64_t size);
  // On a free list: returns [offset, offset + size) to it, merging neighbours;
  // takes [offset, offset + need) out of the range holding it (false if none
  // does); the lowest place below `offset` for a block of `size` there.
  static void Give(FreeList& free, uint64_t offset, uint64_t size);
  static bool Take(FreeList& free, uint64_t offset, uint64_t need);
  static std::optional<uint64_t> Lower(const FreeList& free, uint64_t offset, uint64_t size);

  uint8_t* const base_;
  const uint64_t capacity_;
  mutable std::mutex mu_;
  FreeList free_;                      // guarded by mu_
  uint64_t used_ = 0;                  // guarded by mu_
  uint64_t allocations_ = 0;           // guarded by mu_
};

}  // namespace mms
