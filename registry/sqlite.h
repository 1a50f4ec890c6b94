// A thin RAII layer over the SQLite C API that turns every failure into a
// Status. Statements are always parameterized (Bind*); no SQL is built from
// user input.
//
// Thread-safety: a Db is used by one thread at a time (the Registry holds
// its mutex around every use).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "core/status.h"

namespace mms::sql {

class Stmt;

class Db {
 public:
  // Opens (creating when `create`) the file. CORRUPT for "not a database".
  static Result<std::unique_ptr<Db>> Open(const std::string& path, bool create, int64_t busy_timeout_ms);
  ~Db();
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  // Runs one or more statements without parameters (DDL, PRAGMA).
  Status Exec(const std::string& sql);
  Result<Stmt> Prepare(std::string_view sql);
  int64_t LastInsertId() const;
  int Changes() const;
  sqlite3* raw() const { return db_; }
  const std::string& path() const { return path_; }
  // The Status for the connection's last error.
  Status Error(const std::string& what) const;

 private:
  Db(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  sqlite3* db_;
  std::string path_;
};

// A prepared statement. Step() returns true while there are rows.
class Stmt {
 public:
  Stmt(Stmt&& o) noexcept : db_(o.db_), st_(o.st_) { o.st_ = nullptr; }
  Stmt& operator=(Stmt&&) = delete;
  ~Stmt();

  template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
  Stmt& Bind(int i, T v) {
    return BindInt(i, static_cast<int64_t>(v));
  }
  Stmt& Bind(int i, double v);
  Stmt& Bind(int i, std::string_view v);
  Stmt& Bind(int i, const char* v) { return Bind(i, std::string_view(v)); }
  Stmt& Bind(int i, const std::string& v) { return Bind(i, std::string_view(v)); }
  Stmt& BindNull(int i);
  template <class T>
  Stmt& Bind(int i, const std::optional<T>& v) {
    return v ? Bind(i, *v) : BindNull(i);
  }

  // True: a row is available. False: done. Error: the failure.
  Result<bool> Step();
  // Runs to completion (INSERT/UPDATE/DELETE).
  Status Run();

  int64_t Int(int col) const;
  double Double(int col) const;
  std::string Text(int col) const;
  bool IsNull(int col) const;

 private:
  friend class Db;
  Stmt(Db* db, sqlite3_stmt* st) : db_(db), st_(st) {}
  Stmt& BindInt(int i, int64_t v);
  Db* db_;
  sqlite3_stmt* st_;
};

// Runs `sql` with `args` bound to ?1.. and returns `row(stmt)` for every row.
template <class T, class RowFn>
Result<std::vector<T>> Collect(Db* db, std::string_view sql, const std::vector<std::string>& args, RowFn row) {
  MMS_ASSIGN_OR_RETURN(auto st, db->Prepare(sql));
  for (size_t i = 0; i < args.size(); ++i) st.Bind(static_cast<int>(i + 1), args[i]);
  std::vector<T> out;
  while (true) {
    MMS_ASSIGN_OR_RETURN(bool more, st.Step());
    if (!more) break;
    out.push_back(row(st));
  }
  return out;
}

// BEGIN IMMEDIATE ... COMMIT, rolled back on destruction unless committed.
// IMMEDIATE takes the write lock up front, so concurrent writers wait
// (busy timeout) instead of failing on upgrade.
class Tx {
 public:
  static Result<Tx> Begin(Db* db);
  Tx(Tx&& o) noexcept : db_(o.db_) { o.db_ = nullptr; }
  ~Tx();
  Status Commit();

 private:
  explicit Tx(Db* db) : db_(db) {}
  Db* db_;
};

}  // namespace mms::sql
