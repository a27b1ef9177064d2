-- Encryption at rest: each encrypted project's key, wrapped by the master
-- key named by `master_key_id` (a key-check value, never the key). A copy
-- lives in the project's container (`keys/project.json`) for a catalog
-- rebuild.
CREATE TABLE project_keys (
    project_id VARCHAR(64) NOT NULL PRIMARY KEY,
    master_key_id VARCHAR(32) NOT NULL,
    wrapped TEXT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    rotated_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
