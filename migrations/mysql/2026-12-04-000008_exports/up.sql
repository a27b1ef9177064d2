-- Exports (issue 20): one disk of a backup served read-only over NBD by an
-- ekko-backup host for a lifetime. `starting` until the host reports the
-- address it listens on (`url`), `active` while it serves, `ending` once
-- asked to stop, `ended` or `error` for good. The host ends it by itself
-- at `expires_at`; the conductor ends a row whose host fell silent.
-- `nbd_name` is a random secret: the export answers only to it (whoever
-- may see the URL may read the disk), never to the default name.
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
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_exports_project ON exports (project_id, created_at);
CREATE INDEX ix_exports_backup ON exports (backup_id);
CREATE INDEX ix_exports_host ON exports (host, status);
