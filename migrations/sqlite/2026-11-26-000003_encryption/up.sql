-- See migrations/mysql/2026-11-26-000003_encryption/up.sql.
CREATE TABLE project_keys (
    project_id VARCHAR(64) NOT NULL PRIMARY KEY,
    master_key_id VARCHAR(32) NOT NULL,
    wrapped TEXT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    rotated_at DATETIME(6) NULL
);
