#include "pool/archive_check.h"

#include <vector>

#include <zip.h>

namespace mms {

Status CheckArchiveCrcs(std::string_view bytes, const std::string& what) {
  // An empty buffer is no zip (libzip would call it an empty archive).
  if (bytes.empty()) return InvalidArgument(what + " is not a loadable TorchScript archive: not a zip file");
  zip_error_t err;
  zip_error_init(&err);
  zip_source_t* src = zip_source_buffer_create(bytes.data(), bytes.size(), /*freep=*/0, &err);
  if (!src) {
    zip_error_fini(&err);
    return Internal("cannot read " + what + " as a zip archive: out of memory");
  }
  zip_t* za = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &err);
  if (!za) {
    const int code = zip_error_code_zip(&err);
    const std::string why = zip_error_strerror(&err);
    zip_source_free(src);
    zip_error_fini(&err);
    if (code == ZIP_ER_NOZIP) return InvalidArgument(what + " is not a loadable TorchScript archive: not a zip file");
    return Corrupt(what + " is damaged: its zip directory cannot be read (" + why + "); export it again");
  }
  zip_error_fini(&err);
  struct Closer {
    zip_t* za;
    ~Closer() { zip_discard(za); }  // (read-only: nothing to write back)
  } closer{za};
  std::vector<char> buf(1 << 20);
  const zip_int64_t n = zip_get_num_entries(za, 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    const char* name = zip_get_name(za, static_cast<zip_uint64_t>(i), 0);
    const std::string record = name ? name : "#" + std::to_string(i);
    auto damaged = [&](const std::string& why) {
      return Corrupt(what + " is damaged: its record '" + record + "' " + why +
                     " (the file was changed or corrupted after it was written); export it again");
    };
    zip_file_t* f = zip_fopen_index(za, static_cast<zip_uint64_t>(i), 0);
    if (!f) return damaged(std::string("cannot be opened: ") + zip_strerror(za));
    zip_int64_t got;
    while ((got = zip_fread(f, buf.data(), buf.size())) > 0) {
    }
    // libzip checks a record's CRC-32 as its last bytes are read.
    const bool crc = got < 0 && zip_error_code_zip(zip_file_get_error(f)) == ZIP_ER_CRC;
    const std::string why = got < 0 ? zip_file_strerror(f) : "";
    zip_fclose(f);
    if (crc) return damaged("does not match its CRC-32");
    if (got < 0) return damaged("cannot be read to its end: " + why);
  }
  return Status::Ok();
}

}  // namespace mms
