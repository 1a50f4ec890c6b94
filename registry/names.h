// Model names, versions, aliases, stages and references: the rules every
// command applies the same way (no SQLite here; the daemon and the CLI share
// it).
//
//   name     [a-z0-9][a-z0-9._-]{0,62}
//   version  a positive integer or dotted numbers: 3, 1.2.0 (no leading zeros)
//   alias    same rule as a name (e.g. "champion")
//   ref      name            its production version, else its highest version
//            name:version    that version
//            name@alias      the version the alias points at
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"

namespace mms {

enum class Stage { kNone, kShadow, kCanary, kProduction, kArchived };

const char* StageName(Stage s);
Result<Stage> ParseStage(std::string_view s);

Status ValidateName(std::string_view name, std::string_view what = "model name");
// A tenant id (a request's --tenant, a tenant's limit): 1-128 bytes, no
// control characters (they would forge lines in `mms limit list` or drive
// the terminal of whoever reads it).
Status ValidateTenant(std::string_view tenant);
// A rate limit's range (mms limit set --qps, [limits] *_qps): from one
// request in 11.6 days to 1e9 requests/s. Below, a limit is a stop in
// disguise (5e-324 would pass one request, then none for ever).
constexpr double kMinQps = 1e-6, kMaxQps = 1e9;
Status ValidateVersion(std::string_view version);
// Sortable form of a valid version: "1.10" > "1.9" > "1".
std::string VersionSortKey(std::string_view version);
// Negative, zero, positive like strcmp, by numeric components.
int CompareVersions(std::string_view a, std::string_view b);

struct Ref {
  enum class Kind { kName, kVersion, kAlias };
  Kind kind = Kind::kName;
  std::string name;
  std::string version;  // kVersion
  std::string alias;    // kAlias
  std::string ToString() const;
};

// Parses and validates a reference; the error states the accepted forms.
Result<Ref> ParseRef(std::string_view text);

}  // namespace mms
