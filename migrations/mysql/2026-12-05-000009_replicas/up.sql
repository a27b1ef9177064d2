-- Second copies (issue 22): `[replication]` names a second object store.
-- `store` is that store's key (its name and a digest of its location, so
-- pointing replication elsewhere starts over instead of believing old rows).
--
-- replica_objects: the store holds object `name` of the project's
-- container, as the first store held it (read back and compared after the
-- upload): segments (`segment_id` set), relocation notes and manifests.
CREATE TABLE replica_objects (
    store VARCHAR(128) NOT NULL,
    project_id VARCHAR(64) NOT NULL,
    name VARCHAR(128) NOT NULL,
    segment_id BIGINT NULL,
    size BIGINT NOT NULL,
    copied_at DATETIME(6) NOT NULL,
    PRIMARY KEY (store, project_id, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- backup_replicas: every object the backup needs was in the store when the
-- row was written (its segments, resolved through compaction's redirects,
-- and its manifest). Compaction afterwards is caught up by the next pass.
CREATE TABLE backup_replicas (
    backup_id VARCHAR(36) NOT NULL,
    store VARCHAR(128) NOT NULL,
    bytes_copied BIGINT NOT NULL,
    copied_at DATETIME(6) NOT NULL,
    PRIMARY KEY (backup_id, store)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- Garbage collection forgets a segment's copies in every store, and a
-- deleted backup's manifest copies: by segment, by name.
CREATE INDEX ix_replica_objects_segment ON replica_objects (segment_id);
CREATE INDEX ix_replica_objects_name ON replica_objects (project_id, name);
CREATE INDEX ix_backup_replicas_store ON backup_replicas (store, copied_at);
