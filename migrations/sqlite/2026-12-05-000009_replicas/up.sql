-- See migrations/mysql/2026-12-05-000009_replicas/up.sql.
CREATE TABLE replica_objects (
    store VARCHAR(128) NOT NULL,
    project_id VARCHAR(64) NOT NULL,
    name VARCHAR(128) NOT NULL,
    segment_id BIGINT NULL,
    size BIGINT NOT NULL,
    copied_at DATETIME(6) NOT NULL,
    PRIMARY KEY (store, project_id, name)
);
CREATE TABLE backup_replicas (
    backup_id VARCHAR(36) NOT NULL,
    store VARCHAR(128) NOT NULL,
    bytes_copied BIGINT NOT NULL,
    copied_at DATETIME(6) NOT NULL,
    PRIMARY KEY (backup_id, store)
);
-- Garbage collection forgets a segment's copies in every store, and a
-- deleted backup's manifest copies: by segment, by name.
CREATE INDEX ix_replica_objects_segment ON replica_objects (segment_id);
CREATE INDEX ix_replica_objects_name ON replica_objects (project_id, name);
CREATE INDEX ix_backup_replicas_store ON backup_replicas (store, copied_at);
