// Message types of the mms wire protocol. The numbers are frozen: never
// renumber, only append. A reply carries the request's type | kReplyBit;
// an error reply carries kError with body {"code", "message", "reason"}.
// See docs/protocol.md.
#pragma once

#include <cstdint>

namespace mms::proto {

constexpr uint32_t kMagic = 0x504D4D53;  // bytes "SMMP" little-endian: 'S','M','M','P'
constexpr uint16_t kVersion = 1;
constexpr uint16_t kReplyBit = 0x8000;
constexpr uint16_t kError = 0x7FFF;

enum MsgType : uint16_t {
  // daemon
  kPing = 0x0001,             // {} → {"pid", "version"}
  kStatus = 0x0002,           // {} → daemon status (see docs/protocol.md)
  kRegistryChanged = 0x0003,  // {} → {}: re-read the registry now (sent by the CLI after writes)
  kReload = 0x0004,           // {} → {"reloaded": [...]}: as SIGHUP
  kProbe = 0x0005,            // {} → {}: answered on the receiving thread (the server's listener watchdog)

  // pool and predict
  kPredict = 0x0101,  // {"model", "user"?, "tenant"?, "timeout_ms"?, "adapter"?} + input tensors
  kPool = 0x0102,     // {} → per device and tier
  kHealth = 0x0103,   // {"model"?} → health per version
  kLoad = 0x0104,     // {"model"} → load to a device now
  kEvict = 0x0105,    // {"model"} → demote one tier
  kPin = 0x0106,      // {"model"} → pin (persisted by the CLI in the registry)
  kUnpin = 0x0107,    // {"model"}

  // experiments
  kFeedback = 0x0201,  // {"request_id", "metrics": {name: value}}
  kStats = 0x0202,     // {"experiment"?} → per-variant figures and tests

  // shadow runs
  kShadowStats = 0x0301,    // {"model"}
  kShadowSamples = 0x0302,  // {"model", "limit"?}

  // canary rollouts
  kCanaryStatus = 0x0401,  // {"model"?} → live state and figures

  // scheduling
  kLimitStats = 0x0501,  // {} → per model / tenant admitted, limited

  // adapters
  kAdapterStats = 0x0601,  // {} → adapter tiers
};

// "PING", "PREDICT", ... or "UNKNOWN".
const char* MsgTypeName(uint16_t type);
bool IsKnownRequestType(uint16_t type);

}  // namespace mms::proto
