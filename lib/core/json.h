// Parsing JSON that comes from a user: a file given on the command line
// (--metrics, a tensor file, an adapter's adapter_config.json) or a header
// read from one.
//
// nlohmann::json silently keeps the last of a key given twice, and parses
// any depth (iteratively) but prints (dump) a document recursively: a
// --metrics file nested 100,000 deep was accepted and then overflowed the
// stack when stored. ParseJsonStrict refuses both; a reader that walks
// without recursion and prints nothing (tensor files) passes SIZE_MAX.
//
// Errors: INVALID_ARGUMENT ("not valid JSON: ...", "the key 'k' appears
// twice in one object", "nested deeper than 64 levels"). Thread-safety: a
// stateless function.
#pragma once

#include <cstddef>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace mms {

inline constexpr size_t kMaxJsonDepth = 64;

Result<nlohmann::json> ParseJsonStrict(std::string_view text, size_t max_depth = kMaxJsonDepth);

}  // namespace mms
