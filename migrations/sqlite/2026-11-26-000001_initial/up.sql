-- Ekko catalog, SQLite dialect. Kept table-for-table in step with
-- ../../mysql/2026-11-26-000001_initial/up.sql; src/db/schema.rs maps both.
-- Timestamps are UTC, set by the application.

CREATE TABLE hosts (
    name VARCHAR(255) NOT NULL PRIMARY KEY,
    version VARCHAR(64) NOT NULL,
    capacity INT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    heartbeat_at DATETIME(6) NOT NULL
);

CREATE TABLE instances (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    project_id VARCHAR(64) NOT NULL,
    host VARCHAR(255) NOT NULL,
    name VARCHAR(255) NOT NULL,
    status VARCHAR(16) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL
);
CREATE INDEX ix_instances_project ON instances (project_id, created_at);
CREATE INDEX ix_instances_host ON instances (host);

-- One row per disk. head_seq is the sequence number of the newest committed
-- backup record of the disk (0 = none): the base every incremental is
-- computed against, and the record whose segments stay pinned.
CREATE TABLE disks (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    instance_id VARCHAR(36) NOT NULL,
    project_id VARCHAR(64) NOT NULL,
    device VARCHAR(64) NOT NULL,
    node_name VARCHAR(128) NOT NULL,
    virtual_size BIGINT NOT NULL,
    head_seq BIGINT NOT NULL,
    bitmap_name VARCHAR(128) NULL,
    needs_full_read BOOLEAN NOT NULL,
    retired_at DATETIME(6) NULL,
    created_at DATETIME(6) NOT NULL,
    CONSTRAINT uq_disks_instance_device UNIQUE (instance_id, device),
    CONSTRAINT fk_disks_instance FOREIGN KEY (instance_id) REFERENCES instances (id) ON DELETE CASCADE
);
CREATE INDEX ix_disks_project ON disks (project_id);

CREATE TABLE policies (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    project_id VARCHAR(64) NOT NULL,
    name VARCHAR(255) NOT NULL,
    description TEXT NOT NULL,
    schedule VARCHAR(255) NULL,
    timezone VARCHAR(64) NOT NULL,
    keep_last INT NULL,
    keep_hourly INT NULL,
    keep_daily INT NULL,
    keep_weekly INT NULL,
    keep_monthly INT NULL,
    keep_yearly INT NULL,
    min_age_seconds BIGINT NOT NULL,
    enabled BOOLEAN NOT NULL,
    next_run_at DATETIME(6) NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL
);
CREATE INDEX ix_policies_project ON policies (project_id);
CREATE INDEX ix_policies_next_run ON policies (enabled, next_run_at);

-- An instance follows at most one policy.
CREATE TABLE policy_instances (
    instance_id VARCHAR(36) NOT NULL PRIMARY KEY,
    policy_id VARCHAR(36) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    CONSTRAINT fk_pi_policy FOREIGN KEY (policy_id) REFERENCES policies (id) ON DELETE CASCADE,
    CONSTRAINT fk_pi_instance FOREIGN KEY (instance_id) REFERENCES instances (id) ON DELETE CASCADE
);
CREATE INDEX ix_pi_policy ON policy_instances (policy_id);

-- Exactly-once scheduling: the scheduler that inserts (policy, slot) first
-- creates the backups of that slot; everyone else gets a duplicate key.
CREATE TABLE schedule_runs (
    policy_id VARCHAR(36) NOT NULL,
    scheduled_for DATETIME(6) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (policy_id, scheduled_for)
);

-- A backup of one instance (all its disks). Status: queued, running,
-- available, error, deleting, deleted.
CREATE TABLE backups (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    project_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64) NOT NULL,
    instance_id VARCHAR(36) NOT NULL,
    policy_id VARCHAR(36) NULL,
    name VARCHAR(255) NOT NULL,
    description TEXT NOT NULL,
    status VARCHAR(16) NOT NULL,
    mode VARCHAR(8) NOT NULL,
    kind VARCHAR(16) NULL,
    consistency VARCHAR(16) NULL,
    progress INT NOT NULL,
    logical_bytes BIGINT NOT NULL,
    read_bytes BIGINT NOT NULL,
    new_bytes BIGINT NOT NULL,
    stored_bytes BIGINT NOT NULL,
    error TEXT NULL,
    protected BOOLEAN NOT NULL,
    metadata TEXT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    started_at DATETIME(6) NULL,
    completed_at DATETIME(6) NULL,
    deleted_at DATETIME(6) NULL
);
CREATE INDEX ix_backups_project ON backups (project_id, created_at);
CREATE INDEX ix_backups_instance ON backups (instance_id, created_at);
CREATE INDEX ix_backups_status ON backups (status);

-- One record per disk per backup: its place (seq) in the disk's history and
-- the root of its index tree. Constant size, whatever the disk size.
CREATE TABLE backup_disks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    backup_id VARCHAR(36) NOT NULL,
    disk_id VARCHAR(36) NOT NULL,
    seq BIGINT NOT NULL,
    virtual_size BIGINT NOT NULL,
    chunk_size INT NOT NULL,
    root_digest BINARY(32) NOT NULL,
    root_segment BIGINT NOT NULL,
    bitmap_name VARCHAR(128) NULL,
    full_read BOOLEAN NOT NULL,
    read_bytes BIGINT NOT NULL,
    new_bytes BIGINT NOT NULL,
    stored_bytes BIGINT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    CONSTRAINT uq_backup_disks_seq UNIQUE (disk_id, seq),
    CONSTRAINT fk_bd_backup FOREIGN KEY (backup_id) REFERENCES backups (id) ON DELETE CASCADE
);
CREATE INDEX ix_backup_disks_backup ON backup_disks (backup_id);

-- Segment objects of a project. Ids are random 63-bit numbers chosen by the
-- writer (compute hosts hold no database credentials). Status: pending,
-- live, condemned, deleting, relocated, deleted.
CREATE TABLE segments (
    id BIGINT NOT NULL PRIMARY KEY,
    project_id VARCHAR(64) NOT NULL,
    status VARCHAR(16) NOT NULL,
    size BIGINT NOT NULL,
    chunk_count INT NOT NULL,
    relocated_to BIGINT NULL,
    created_at DATETIME(6) NOT NULL,
    condemned_at DATETIME(6) NULL,
    verified_at DATETIME(6) NULL,
    claimed_by VARCHAR(255) NULL,
    claim_until DATETIME(6) NULL
);
CREATE INDEX ix_segments_project_status ON segments (project_id, status);
CREATE INDEX ix_segments_status ON segments (status, condemned_at);

-- Reference intervals: disk `disk_id` has `refs` references (chunks and
-- index pages) into `segment_id` in every backup record with
-- from_seq <= seq <= to_seq (to_seq NULL = up to the disk's head). A backup
-- adds rows only for segments whose count changed, so rows grow with what
-- changed, not with disk size. A segment is garbage when none of its
-- intervals contains a live record and none is open.
CREATE TABLE segment_refs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    disk_id VARCHAR(36) NOT NULL,
    segment_id BIGINT NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq BIGINT NULL,
    refs BIGINT NOT NULL
);
CREATE INDEX ix_segment_refs_segment ON segment_refs (segment_id);
CREATE INDEX ix_segment_refs_disk ON segment_refs (disk_id, segment_id, to_seq);

-- Chunks a scrub found damaged; the next backup must not dedup against them.
CREATE TABLE bad_chunks (
    project_id VARCHAR(64) NOT NULL,
    digest BINARY(32) NOT NULL,
    segment_id BIGINT NOT NULL,
    found_at DATETIME(6) NOT NULL,
    repaired_segment BIGINT NULL,
    PRIMARY KEY (project_id, digest, segment_id)
);

-- Work sent to workers. Status: queued, running, succeeded, failed, cancelled.
CREATE TABLE jobs (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    kind VARCHAR(16) NOT NULL,
    project_id VARCHAR(64) NOT NULL,
    backup_id VARCHAR(36) NULL,
    restore_id VARCHAR(36) NULL,
    host VARCHAR(255) NULL,
    status VARCHAR(16) NOT NULL,
    attempts INT NOT NULL,
    max_attempts INT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    started_at DATETIME(6) NULL,
    heartbeat_at DATETIME(6) NULL,
    deadline_at DATETIME(6) NULL
);
CREATE INDEX ix_jobs_status ON jobs (status, created_at);
CREATE INDEX ix_jobs_backup ON jobs (backup_id);

CREATE TABLE restores (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    project_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64) NOT NULL,
    backup_id VARCHAR(36) NOT NULL,
    target TEXT NOT NULL,
    format VARCHAR(8) NOT NULL,
    status VARCHAR(16) NOT NULL,
    progress INT NOT NULL,
    bytes_written BIGINT NOT NULL,
    error TEXT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    completed_at DATETIME(6) NULL
);
CREATE INDEX ix_restores_project ON restores (project_id, created_at);
CREATE INDEX ix_restores_backup ON restores (backup_id, status);

CREATE TABLE quotas (
    project_id VARCHAR(64) NOT NULL,
    resource VARCHAR(32) NOT NULL,
    hard_limit BIGINT NOT NULL,
    PRIMARY KEY (project_id, resource)
);
