#include "pool/archive_check.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <unzip.h>

namespace mms {
namespace {

// minizip's file functions over bytes in memory: one cursor per archive.
struct Cursor {
  std::string_view bytes;
  uint64_t pos = 0;
};

voidpf ZCALLBACK Open(voidpf opaque, const void*, int) { return opaque; }

uLong ZCALLBACK Read(voidpf, voidpf stream, void* buf, uLong size) {
  auto* c = static_cast<Cursor*>(stream);
  if (c->pos >= c->bytes.size()) return 0;
  const uLong n = static_cast<uLong>(std::min<uint64_t>(size, c->bytes.size() - c->pos));
  std::memcpy(buf, c->bytes.data() + c->pos, n);
  c->pos += n;
  return n;
}

uLong ZCALLBACK Write(voidpf, voidpf, const void*, uLong) { return 0; }

ZPOS64_T ZCALLBACK Tell(voidpf, voidpf stream) { return static_cast<Cursor*>(stream)->pos; }

long ZCALLBACK Seek(voidpf, voidpf stream, ZPOS64_T offset, int origin) {
  auto* c = static_cast<Cursor*>(stream);
  uint64_t base = origin == ZLIB_FILEFUNC_SEEK_SET ? 0 : origin == ZLIB_FILEFUNC_SEEK_CUR ? c->pos : c->bytes.size();
  if (offset > c->bytes.size() || base > c->bytes.size() - offset) return -1;
  c->pos = base + offset;
  return 0;
}

int ZCALLBACK Close(voidpf, voidpf) { return 0; }
int ZCALLBACK Error(voidpf, voidpf) { return 0; }

}  // namespace

Status CheckArchiveCrcs(std::string_view bytes, const std::string& what) {
  Cursor cursor{bytes, 0};
  zlib_filefunc64_def io{Open, Read, Write, Tell, Seek, Close, Error, &cursor};
  unzFile zf = unzOpen2_64(what.c_str(), &io);
  if (!zf) return InvalidArgument(what + " is not a loadable TorchScript archive: not a zip file");
  struct Closer {
    unzFile zf;
    ~Closer() { unzClose(zf); }
  } closer{zf};
  std::vector<char> buf(1 << 20);
  int rc = unzGoToFirstFile(zf);
  for (; rc == UNZ_OK; rc = unzGoToNextFile(zf)) {
    char name[512] = {0};
    unz_file_info64 info;
    if (unzGetCurrentFileInfo64(zf, &info, name, sizeof name - 1, nullptr, 0, nullptr, 0) != UNZ_OK)
      return Corrupt(what + " is damaged: an entry of its zip directory cannot be read; export it again");
    auto damaged = [&](const std::string& why) {
      return Corrupt(what + " is damaged: its record '" + std::string(name) + "' " + why +
                     " (the file was changed or corrupted after it was written); export it again");
    };
    if (unzOpenCurrentFile(zf) != UNZ_OK) return damaged("cannot be opened");
    int got;
    while ((got = unzReadCurrentFile(zf, buf.data(), static_cast<unsigned>(buf.size()))) > 0) {
    }
    const int closed = unzCloseCurrentFile(zf);
    if (got < 0) return damaged("cannot be read to its end");
    if (closed == UNZ_CRCERROR) return damaged("does not match its CRC-32");
    if (closed != UNZ_OK) return damaged("cannot be read");
  }
  if (rc != UNZ_END_OF_LIST_OF_FILE)
    return Corrupt(what + " is damaged: its zip directory cannot be walked to its end; export it again");
  return Status::Ok();
}

}  // namespace mms
