#include "protocol/messages.h"

namespace mms::proto {
namespace {
struct Name {
  uint16_t type;
  const char* name;
};
constexpr Name kNames[] = {
    {kPing, "PING"},
    {kStatus, "STATUS"},
    {kRegistryChanged, "REGISTRY_CHANGED"},
    {kReload, "RELOAD"},
    {kPredict, "PREDICT"},
    {kPool, "POOL"},
    {kHealth, "HEALTH"},
    {kLoad, "LOAD"},
    {kEvict, "EVICT"},
    {kPin, "PIN"},
    {kUnpin, "UNPIN"},
    {kFeedback, "FEEDBACK"},
    {kStats, "STATS"},
    {kShadowStats, "SHADOW_STATS"},
    {kShadowSamples, "SHADOW_SAMPLES"},
    {kCanaryStatus, "CANARY_STATUS"},
    {kLimitStats, "LIMIT_STATS"},
    {kAdapterStats, "ADAPTER_STATS"},
};
}  // namespace

const char* MsgTypeName(uint16_t type) {
  if (type == kError) return "ERROR";
  for (const auto& n : kNames)
    if (n.type == (type & ~kReplyBit)) return n.name;
  return "UNKNOWN";
}

bool IsKnownRequestType(uint16_t type) {
  for (const auto& n : kNames)
    if (n.type == type) return true;
  return false;
}

}  // namespace mms::proto
