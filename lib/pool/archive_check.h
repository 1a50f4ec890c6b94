// The integrity of a TorchScript archive's bytes, checked at registration.
//
// A TorchScript file is a zip archive whose entries each carry a CRC-32.
// libtorch reads them without checking it, so a flipped byte in a tensor's
// record (bit rot, a damaged download) loads and serves silently different
// weights. CheckArchiveCrcs reads every entry of the archive in `bytes`
// (libzip, Debian's libzip-dev, over the bytes in memory: the same bytes
// the caller then loads and hashes) and compares each with its CRC-32.
// (Debian's minizip 1.1 was tried first: it ignores zip64 fields, so every
// archive over 4 GiB read as damaged — a review's 4.6 GB model.)
//
// Errors: CORRUPT naming the first entry whose bytes do not match its CRC,
// or that cannot be read (truncated, damaged headers); INVALID_ARGUMENT when
// `bytes` is not a zip archive at all. Thread-safety: a stateless function.
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"

namespace mms {

// `what` names the file in messages.
Status CheckArchiveCrcs(std::string_view bytes, const std::string& what);

}  // namespace mms
