// Tensor files the CLI reads and writes, and the packed-weights container:
//
// * JSON: {"x": {"dtype": "int64", "shape": [4], "data": [1, 2, 3, 4]}, ...}
//   Data is flat and row-major (one value, or a list of one, for shape []),
//   or nested exactly as the shape ([[1, 2], [3, 4]] for [2, 2]); any other
//   nesting is refused, whatever its count. bool as true/false (or 0/1);
//   float16/bfloat16 as numbers. Floats that the dtype cannot hold (1e39 as
//   float32, 70000 as float16) are refused, not made infinite. JSON has no
//   NaN or infinity: the writer emits the strings "nan", "inf" and "-inf" for
//   every float dtype and the reader takes exactly those back, so an output
//   file is a valid input file.
// * safetensors: 8-byte little-endian header length N, N bytes of JSON
//   ({"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
//   "__metadata__": {str: str}}), then the data; offsets are relative to the
//   data start. The reader rejects out-of-bounds and overlapping ranges,
//   shapes whose byte size overflows 64 bits, and byte counts that do not
//   match dtype × shape; our writer may leave
//   alignment gaps between tensors (readers that demand no gaps read
//   user files, not our packed ones).
//
// No libtorch: the CLI links this. Thread-safety: stateless functions.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "protocol/tensor.h"

namespace mms {

// Every element as a double (half and bfloat16 widened, bool as 0/1).
std::vector<double> TensorToDoubles(const Tensor& t);
// A tensor named and shaped as `like`, of its dtype, holding `values`
// (values.size() == like.numel()): floats rounded to the dtype, integers
// truncated (the caller keeps them in the dtype's range), bool as v != 0.
Tensor TensorFromDoubles(const Tensor& like, const std::vector<double>& values);

// ---- JSON tensor files
Result<std::vector<Tensor>> TensorsFromJson(const nlohmann::json& j);
nlohmann::json TensorsToJson(const std::vector<Tensor>& tensors);

// ---- safetensors
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // relative to the data start
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // in file order of offsets
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // absolute offset of the data start (8 + N)
};

// Parses the header from the first bytes of a file of `file_size` bytes;
// `prefix` must hold at least 8 + N bytes (ReadSafetensorsHeader reads them).
Result<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* prefix, size_t prefix_size, uint64_t file_size);
Result<SafetensorsHeader> ReadSafetensorsHeader(const std::string& path);

Result<std::vector<Tensor>> ReadSafetensorsFile(const std::string& path);
// Writes tensors with each data block aligned to `alignment` bytes from the
// file start (the header is padded with spaces to make the data start aligned,
// to 8 bytes at least). The format allows no holes between tensors: a gap left
// for alignment is a filler entry named kSafetensorsPadPrefix + N (U8, zeros),
// which ParseSafetensorsHeader skips.
// With `checksum`, the metadata also records the XXH3-64 of the tensors'
// bytes in file order (kSafetensorsChecksumKey) and of what the header says
// (kSafetensorsHeaderChecksumKey: each tensor's name, dtype, shape and
// offsets, and the other metadata): mms's packed files do, so that every
// load can check them (VerifySafetensorsChecksum).
Status WriteSafetensorsFile(const std::string& path, const std::vector<Tensor>& tensors,
                            const std::map<std::string, std::string>& metadata = {}, size_t alignment = 64,
                            bool checksum = false);
inline constexpr const char* kSafetensorsChecksumKey = "mms.xxh3_64";
inline constexpr const char* kSafetensorsHeaderChecksumKey = "mms.header_xxh3_64";
inline constexpr const char* kSafetensorsPadPrefix = "__mms_pad_";
// Checks `data` — the file's data region from its start, `size` bytes, as
// read — and the header `h` against the checksums `h` records: CORRUPT
// naming `path` when they differ (the file was changed or damaged since it
// was written); OK when all match, and for a checksum `h` does not record
// (files written before it: no header checksum before 2026-11-30).
Status VerifySafetensorsChecksum(const SafetensorsHeader& h, const uint8_t* data, uint64_t size,
                                 const std::string& path);
// The same check for `data` still being read, on another thread: before it
// hashes bytes [0, end) it calls `ready(end)`, which blocks until they are in
// `data` and returns true, or returns false (the read failed: report the
// read's error), and then this returns CANCELLED. Hashes in pieces of at most
// 8 MiB, so that the hash follows a read of the same pieces one behind.
Status VerifySafetensorsChecksumAsRead(const SafetensorsHeader& h, const uint8_t* data, uint64_t size,
                                       const std::string& path, const std::function<bool(uint64_t end)>& ready);

// Reads the first n bytes of the data region of the safetensors file at
// `path` (header `h`, as read from it) into dst, and checks them against the
// checksums `h` records (as VerifySafetensorsChecksum). From 16 MiB on, a
// second thread hashes each 8 MiB piece while the next is read: the hash
// (~15 GB/s on one core) was ~70% of a read from the page cache into huge
// pages, so in sequence a load took ~1.6x the read, overlapped about the
// read's time (docs/benchmarks.md, section 2); where no thread can be
// started, the two run in sequence. Errors: IO (cannot open or read),
// INVALID_ARGUMENT "is truncated" (the file ends before n bytes), CORRUPT
// (a checksum differs, or an entry ends past n) — the read's error first.
Status ReadSafetensorsData(const std::string& path, const SafetensorsHeader& h, uint8_t* dst, uint64_t n);

// Whether `path` names a safetensors file by its extension (any case).
bool IsSafetensorsPath(const std::string& path);
// Reads a tensor file by extension: .json or .safetensors (or by content).
// A key given twice (an input in JSON, an entry in a safetensors header) is
// refused; a UTF-8 byte order mark before JSON is skipped.
Result<std::vector<Tensor>> ReadTensorFile(const std::string& path, uint64_t max_bytes = UINT64_MAX);
// Writes JSON, or safetensors (contiguous, no alignment) for a .safetensors path.
Status WriteTensorFile(const std::string& path, const std::vector<Tensor>& tensors);

}  // namespace mms
