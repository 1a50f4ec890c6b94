#include <algorithm>
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
}  // namespace

std::shared_ptr<Buffer> AllocateHost(size_t bytes) {
  size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) return nullptr;
  return std::make_shared<AlignedBuffer>(static_cast<uint8_t*>(p), bytes);
}

}  // namespace mms
