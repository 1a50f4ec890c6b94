// The registry's schema as numbered migrations. Migration i (1-based) takes
// a database from user_version i-1 to i. Never edit a released migration;
// append a new one.
#pragma once

#include <string>
#include <vector>

namespace mms {

constexpr int kRegistryApplicationId = 0x4D4D5352;  // "MMSR"

const std::vector<std::string>& RegistryMigrations();

}  // namespace mms
