// A reader for protobuf's text format (the language of Triton's
// config.pbtxt) without a schema: a tree of named fields whose values are
// scalars or nested messages, for a caller that knows which fields it wants.
//
// The grammar is protobuf's (protobuf.dev, "Text Format Language
// Specification"): `name: value` (the colon optional before a message),
// messages in { } or < >, lists in [ ] (a list gives one field per element),
// fields ended by nothing, ',' or ';', # comments, strings in ' or " with
// C escapes and adjacent strings joined, extension names in [ ]. A scalar
// needs the colon, as protobuf's own parser (Triton's) requires. Without a
// schema it cannot refuse what only the schema rules out (a misspelt field,
// a singular field twice, a wrong type): the caller checks the fields it
// reads (triton_config.h). protobuf's TextFormat cannot be used without the
// whole schema: with unknown fields allowed it still refuses an unknown
// list of messages (`output [ { ... } ]`), which every Triton config has.
//
// Thread-safety: pure functions; a PbtxtMessage is a value.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace mms {

struct PbtxtMessage;

struct PbtxtField {
  enum class Kind { kMessage, kIdentifier, kNumber, kString };
  std::string name;  // as written ("[type.googleapis.com/x]" for an extension)
  int line = 0;      // 1-based: of the value, for messages about it
  int column = 0;
  Kind kind = Kind::kIdentifier;
  // A scalar's text: a number or identifier as written ("-1", "0x10",
  // "TYPE_FP32", "-inf"), a string unescaped and joined.
  std::string text;
  std::shared_ptr<const PbtxtMessage> message;  // set for kMessage, else null
};

struct PbtxtMessage {
  std::vector<PbtxtField> fields;  // in the order written
  // The fields called `name`, in order (a repeated field, or a list).
  std::vector<const PbtxtField*> All(std::string_view name) const;
  // The last field called `name` (protobuf: the last of a singular field
  // wins), or null.
  const PbtxtField* Last(std::string_view name) const;
};

// Parses `text`. INVALID_ARGUMENT "SOURCE:LINE:COLUMN: what was expected"
// (SOURCE being `source`) for text protobuf would refuse, and for messages
// nested deeper than 100 (protobuf's own limit; it bounds the stack).
Result<PbtxtMessage> ParsePbtxt(std::string_view text, const std::string& source);

}  // namespace mms
