#include "registry/sqlite.h"

#include <cerrno>

namespace mms::sql {

namespace {
Code CodeForSqlite(int rc) {
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT: return Code::kCorrupt;
    case SQLITE_BUSY:  // another writer holds it: a conflict to retry, not an absent daemon (exit 3)
    case SQLITE_LOCKED: return Code::kLocked;  // (not IN_USE, which no retry changes)
    case SQLITE_CONSTRAINT: return Code::kAlreadyExists;
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_READONLY:
    case SQLITE_PERM: return Code::kIo;
    default: return Code::kInternal;
  }
}
}  // namespace

Result<std::unique_ptr<Db>> Db::Open(const std::string& path, bool create, int64_t busy_timeout_ms) {
  sqlite3* db = nullptr;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
  int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    if ((rc & 0xff) == SQLITE_CANTOPEN && !create) return NotFound("no registry at " + path);
    return Status(CodeForSqlite(rc), "cannot open registry " + path + ": " + msg);
  }
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, static_cast<int>(busy_timeout_ms));
  return std::unique_ptr<Db>(new Db(db, path));
}

Db::~Db() { sqlite3_close_v2(db_); }

Status Db::Error(const std::string& what) const {
  int rc = sqlite3_extended_errcode(db_);
  std::string msg = sqlite3_errmsg(db_);
  if ((rc & 0xff) == SQLITE_NOTADB)
    return Corrupt(path_ + " is not an SQLite database, or its header is damaged (" + what +
                   "); point --data-dir or [registry] path at an mms registry, or restore a backup (mms restore)");
  if ((rc & 0xff) == SQLITE_CORRUPT)
    return Corrupt("registry " + path_ + " is corrupt (" + msg + "); restore a backup (mms restore)");
  if ((rc & 0xff) == SQLITE_BUSY)
    return Status(Code::kLocked, "registry " + path_ + " is locked by another writer for longer than [registry] "
                                                     "busy_timeout; retry, or raise it");
  // A full disk also comes as an I/O error: creating or growing the -shm or
  // -wal file fails with ENOSPC (SQLite's own SQLITE_FULL is for the
  // database file's pages), and "check that the -wal file is in place" sent
  // the reader after the wrong thing.
  const int os_errno = sqlite3_system_errno(db_);
  const bool full = (rc & 0xff) == SQLITE_FULL ||
                    (((rc & 0xff) == SQLITE_IOERR || (rc & 0xff) == SQLITE_CANTOPEN) && (os_errno == ENOSPC || os_errno == EDQUOT));
  if (full)
    return Status(CodeForSqlite(rc), "registry " + path_ + ": the disk is full (" + what +
                                         "); nothing was changed. Free space on its filesystem and retry (mms model "
                                         "rm needs a little space too: free some by other means first)");
  if ((rc & 0xff) == SQLITE_READONLY)
    return Status(CodeForSqlite(rc), "registry " + path_ + " is read-only for this process (" + what + ": " + msg +
                                         "); nothing was changed. Give this user write access to the file, its "
                                         "-wal and -shm files and their directory, or run as its owner");
  if ((rc & 0xff) == SQLITE_IOERR || (rc & 0xff) == SQLITE_CANTOPEN)
    return Status(CodeForSqlite(rc), "registry " + path_ + ": I/O error (" + what + ": " + msg +
                                         "); nothing was changed. Check the disk and that the file and its -wal "
                                         "file are still in place (not removed under a running mmsd)");
  return Status(CodeForSqlite(rc), what + ": " + msg);
}

Status Db::Exec(const std::string& sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
  if (err) sqlite3_free(err);
  if (rc != SQLITE_OK) return Error("exec");
  return Status::Ok();
}

Result<Stmt> Db::Prepare(std::string_view sql) {
  sqlite3_stmt* st = nullptr;
  int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &st, nullptr);
  if (rc != SQLITE_OK) return Error("prepare");
  return Stmt(this, st);
}

int64_t Db::LastInsertId() const { return sqlite3_last_insert_rowid(db_); }
int Db::Changes() const { return sqlite3_changes(db_); }

Stmt::~Stmt() {
  if (st_) sqlite3_finalize(st_);
}

Stmt& Stmt::BindInt(int i, int64_t v) {
  sqlite3_bind_int64(st_, i, v);
  return *this;
}
Stmt& Stmt::Bind(int i, double v) {
  sqlite3_bind_double(st_, i, v);
  return *this;
}
Stmt& Stmt::Bind(int i, std::string_view v) {
  sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  return *this;
}
Stmt& Stmt::BindNull(int i) {
  sqlite3_bind_null(st_, i);
  return *this;
}

Result<bool> Stmt::Step() {
  int rc = sqlite3_step(st_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return db_->Error("step");
}

Status Stmt::Run() {
  while (true) {
    auto r = Step();
    if (!r.ok()) return r.status();
    if (!*r) return Status::Ok();
  }
}

int64_t Stmt::Int(int col) const { return sqlite3_column_int64(st_, col); }
double Stmt::Double(int col) const { return sqlite3_column_double(st_, col); }
std::string Stmt::Text(int col) const {
  const unsigned char* t = sqlite3_column_text(st_, col);
  return t ? std::string(reinterpret_cast<const char*>(t), static_cast<size_t>(sqlite3_column_bytes(st_, col))) : "";
}
bool Stmt::IsNull(int col) const { return sqlite3_column_type(st_, col) == SQLITE_NULL; }

Result<Tx> Tx::Begin(Db* db) {
  MMS_RETURN_IF_ERROR(db->Exec("BEGIN IMMEDIATE"));
  return Tx(db);
}

Tx::~Tx() {
  if (db_) sqlite3_exec(db_->raw(), "ROLLBACK", nullptr, nullptr, nullptr);
}

Status Tx::Commit() {
  Db* db = db_;
  db_ = nullptr;
  Status st = db->Exec("COMMIT");
  // A failed COMMIT (a deferred constraint, SQLITE_BUSY, a full disk) can leave
  // the transaction open; end it, or every later BEGIN on this connection fails.
  if (!st.ok() && !sqlite3_get_autocommit(db->raw()))
    sqlite3_exec(db->raw(), "ROLLBACK", nullptr, nullptr, nullptr);
  return st;
}

}  // namespace mms::sql
