-- See migrations/mysql/2026-12-04-000008_exports/up.sql.
CREATE TABLE exports (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    project_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64) NOT NULL,
    backup_id VARCHAR(36) NOT NULL,
    device VARCHAR(255) NOT NULL,
    host VARCHAR(255) NOT NULL,
    status VARCHAR(16) NOT NULL,
    nbd_name VARCHAR(64) NOT NULL,
    url VARCHAR(512) NULL,
    tls BOOLEAN NOT NULL,
    lifetime BIGINT NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    active_at DATETIME(6) NULL,
    error TEXT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL
);
CREATE INDEX ix_exports_project ON exports (project_id, created_at);
CREATE INDEX ix_exports_backup ON exports (backup_id);
CREATE INDEX ix_exports_host ON exports (host, status);
