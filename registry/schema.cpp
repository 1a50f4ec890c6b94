#include "registry/schema.h"

namespace mms {

const std::vector<std::string>& RegistryMigrations() {
  static const std::vector<std::string>* m = new std::vector<std::string>{
      // 1: models, versions, labels, aliases, pins, audit log.
      R"sql(
CREATE TABLE models (
  id         INTEGER PRIMARY KEY,
  name       TEXT NOT NULL UNIQUE,
  created_ms INTEGER NOT NULL
);
CREATE TABLE versions (
  id               INTEGER PRIMARY KEY,
  model_id         INTEGER NOT NULL REFERENCES models(id),
  version          TEXT NOT NULL,
  sort_key         TEXT NOT NULL,
  artifact_path    TEXT NOT NULL,
  format           TEXT NOT NULL DEFAULT 'torchscript',
  size_bytes       INTEGER NOT NULL,
  sha256           TEXT NOT NULL,
  created_ms       INTEGER NOT NULL,
  created_by       TEXT NOT NULL,
  description      TEXT NOT NULL DEFAULT '',
  data_fingerprint TEXT NOT NULL DEFAULT '',
  metrics_json     TEXT NOT NULL DEFAULT '{}',
  device_bytes     INTEGER NOT NULL DEFAULT 0,
  host_bytes       INTEGER NOT NULL DEFAULT 0,
  sla_p99_ms       REAL,
  stage            TEXT NOT NULL DEFAULT 'none'
                   CHECK (stage IN ('none','shadow','canary','production','archived')),
  packed_dir       TEXT NOT NULL DEFAULT '',
  inputs_json      TEXT NOT NULL DEFAULT '[]',
  sample_input     TEXT NOT NULL DEFAULT '',
  max_batch_size   INTEGER NOT NULL DEFAULT 0,
  UNIQUE (model_id, version)
);
CREATE UNIQUE INDEX versions_one_production ON versions(model_id) WHERE stage = 'production';
CREATE TABLE labels (
  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
  key        TEXT NOT NULL,
  value      TEXT NOT NULL,
  PRIMARY KEY (version_id, key)
);
CREATE TABLE aliases (
  model_id   INTEGER NOT NULL REFERENCES models(id),
  alias      TEXT NOT NULL,
  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
  PRIMARY KEY (model_id, alias)
);
CREATE TABLE pins (
  model_id   INTEGER NOT NULL REFERENCES models(id),
  version_id INTEGER REFERENCES versions(id) ON DELETE CASCADE,
  created_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX pins_unique ON pins(model_id, IFNULL(version_id, 0));
CREATE TABLE audit (
  id      INTEGER PRIMARY KEY AUTOINCREMENT,
  ts_ms   INTEGER NOT NULL,
  actor   TEXT NOT NULL,
  action  TEXT NOT NULL,
  model   TEXT NOT NULL DEFAULT '',
  version TEXT NOT NULL DEFAULT '',
  from_value TEXT NOT NULL DEFAULT '',
  to_value   TEXT NOT NULL DEFAULT '',
  detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_model ON audit(model, id);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
)sql",
      // 2: A/B experiments and their persisted per-variant metrics.
      R"sql(
CREATE TABLE experiments (
  id                TEXT PRIMARY KEY,
  model_id          INTEGER NOT NULL REFERENCES models(id),
  kind              TEXT NOT NULL DEFAULT 'ab' CHECK (kind IN ('ab', 'canary')),
  control_id        INTEGER REFERENCES versions(id) ON DELETE SET NULL,
  treatment_id      INTEGER REFERENCES versions(id) ON DELETE SET NULL,
  control_version   TEXT NOT NULL,
  treatment_version TEXT NOT NULL,
  basis_points      INTEGER NOT NULL CHECK (basis_points BETWEEN 0 AND 10000),
  random            INTEGER NOT NULL DEFAULT 0,
  metrics_json      TEXT NOT NULL DEFAULT '[]',
  state             TEXT NOT NULL CHECK (state IN ('running', 'paused', 'stopped')),
  winner            TEXT NOT NULL DEFAULT '',
  created_ms        INTEGER NOT NULL,
  updated_ms        INTEGER NOT NULL,
  created_by        TEXT NOT NULL
);
CREATE UNIQUE INDEX experiments_one_active ON experiments(model_id) WHERE state != 'stopped';
CREATE TABLE experiment_metrics (
  experiment_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
  variant       TEXT NOT NULL,
  data_json     TEXT NOT NULL,
  updated_ms    INTEGER NOT NULL,
  PRIMARY KEY (experiment_id, variant)
);
)sql",
      // 3: shadow runs and canary rollouts.
      R"sql(
CREATE TABLE shadows (
  id                INTEGER PRIMARY KEY,
  model_id          INTEGER NOT NULL REFERENCES models(id),
  candidate_id      INTEGER REFERENCES versions(id) ON DELETE SET NULL,
  candidate_version TEXT NOT NULL,
  ratio             REAL NOT NULL,
  queue             INTEGER NOT NULL,
  tolerance         REAL NOT NULL,
  state             TEXT NOT NULL CHECK (state IN ('running', 'stopped')),
  started_ms        INTEGER NOT NULL,
  ends_ms           INTEGER,
  stopped_ms        INTEGER,
  reason            TEXT NOT NULL DEFAULT '',
  created_by        TEXT NOT NULL
);
CREATE UNIQUE INDEX shadows_one_running ON shadows(model_id) WHERE state = 'running';
CREATE TABLE canaries (
  id                INTEGER PRIMARY KEY,
  model_id          INTEGER NOT NULL REFERENCES models(id),
  experiment_id     TEXT NOT NULL REFERENCES experiments(id),
  candidate_version TEXT NOT NULL,
  baseline_version  TEXT NOT NULL,
  stages_json       TEXT NOT NULL,
  stage_index       INTEGER NOT NULL,
  stage_duration_ms INTEGER NOT NULL,
  check_interval_ms INTEGER NOT NULL,
  max_error_rate    REAL NOT NULL,
  max_p99_ms        REAL NOT NULL,
  max_p99_ratio     REAL NOT NULL,
  min_requests      INTEGER NOT NULL,
  state             TEXT NOT NULL CHECK (state IN ('running', 'paused', 'promoted', 'rolled_back', 'aborted')),
  stage_elapsed_ms  INTEGER NOT NULL DEFAULT 0,
  stage_start_json  TEXT NOT NULL DEFAULT '{}',
  last_check_json   TEXT NOT NULL DEFAULT '{}',
  reason            TEXT NOT NULL DEFAULT '',
  created_ms        INTEGER NOT NULL,
  updated_ms        INTEGER NOT NULL,
  created_by        TEXT NOT NULL
);
CREATE UNIQUE INDEX canaries_one_active ON canaries(model_id) WHERE state IN ('running', 'paused');
)sql",
      // 4: rate limits per model and tenant; the batching delay per version.
      R"sql(
CREATE TABLE limits (
  kind       TEXT NOT NULL CHECK (kind IN ('model', 'tenant')),
  key        TEXT NOT NULL,
  qps        REAL NOT NULL CHECK (qps > 0),
  burst      REAL NOT NULL CHECK (burst >= 1),
  updated_ms INTEGER NOT NULL,
  PRIMARY KEY (kind, key)
);
ALTER TABLE versions ADD COLUMN max_queue_delay_us INTEGER NOT NULL DEFAULT 0;
)sql",
      // 5: LoRA adapters are versions with a base; lora_json describes an
      // adapter (rank, alpha, targets) or a base taking stacked adapters.
      R"sql(
ALTER TABLE versions ADD COLUMN base_id INTEGER REFERENCES versions(id);
ALTER TABLE versions ADD COLUMN lora_json TEXT NOT NULL DEFAULT '{}';
CREATE INDEX versions_base ON versions(base_id) WHERE base_id IS NOT NULL;
)sql",
      // 6: a version id is never reused. The daemon keys its pool (and
      // every cached figure) by version id; SQLite gives a new row the
      // highest id + 1, so removing the newest version and registering
      // another would hand the new one the old one's id — and a running
      // daemon its old weights. Registration takes ids from id_floor, which
      // only grows (AUTOINCREMENT would need the table rebuilt).
      R"sql(
CREATE TABLE id_floor (
  name TEXT PRIMARY KEY,
  next INTEGER NOT NULL
);
INSERT INTO id_floor SELECT 'versions', COALESCE(MAX(id), 0) + 1 FROM versions;
CREATE TRIGGER versions_id_floor AFTER INSERT ON versions
  BEGIN UPDATE id_floor SET next = MAX(next, NEW.id + 1) WHERE name = 'versions'; END;
)sql",
      // 7: a shadow run's figures, saved by the daemon as it flushes
      // experiment metrics, so a restart or a stop does not lose them.
      R"sql(
ALTER TABLE shadows ADD COLUMN figures_json TEXT NOT NULL DEFAULT '{}';
ALTER TABLE shadows ADD COLUMN figures_ms INTEGER NOT NULL DEFAULT 0;
)sql",
      // 8: paths of files inside the data dir are stored relative to it
      // (StoredPath), so a moved data dir finds its files. Registry::Migrate
      // converts the absolute ones of its data dir after this step: SQL
      // alone does not know where the data dir is. An older mms, which would
      // read a relative path against its working directory, refuses the file.
      R"sql(
SELECT 1;
)sql",
  };
  return *m;
}

}  // namespace mms
