// Hashes from OpenSSL's libcrypto (Debian's libssl-dev): SHA-256 of artifacts
// and MD5 for the seed-compatible A/B bucket; XXH3-64 from libxxhash
// (Debian's libxxhash-dev), a checksum fast enough (memory speed) to check
// packed weights at every load. No hand-written digests.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace mms {

using Md5Digest = std::array<uint8_t, 16>;

Md5Digest Md5(std::string_view data);
std::string Sha256Hex(std::string_view data);

// Streams `path` through SHA-256. `progress(done, total)` is called every few
// MiB when given (the CLI draws a progress bar on a terminal).
Result<std::string> Sha256File(const std::string& path,
                               const std::function<void(uint64_t, uint64_t)>& progress = {});

std::string ToHex(const uint8_t* data, size_t n);

// XXH3-64 of `data` in one call (a fixed, documented function: the same
// value on every machine and release).
uint64_t Xxh3Of(std::string_view data);

// XXH3-64 over pieces fed in order, as if concatenated. Not thread-safe (one
// owner); Hex() may be called once all pieces are in.
class Xxh3 {
 public:
  Xxh3();
  ~Xxh3();
  Xxh3(const Xxh3&) = delete;
  Xxh3& operator=(const Xxh3&) = delete;
  void Update(const void* data, size_t n);
  std::string Hex() const;  // 16 hex digits

 private:
  void* state_;  // XXH3_state_t*
};

}  // namespace mms
