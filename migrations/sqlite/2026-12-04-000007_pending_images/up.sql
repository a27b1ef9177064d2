-- See migrations/mysql/2026-12-04-000007_pending_images/up.sql.
CREATE TABLE pending_images (
    image_id VARCHAR(64) NOT NULL PRIMARY KEY,
    restore_id VARCHAR(36) NOT NULL,
    project_id VARCHAR(64) NOT NULL,
    glance_url VARCHAR(255) NOT NULL,
    user_token TEXT NOT NULL,
    finished_bytes BIGINT NULL,
    attempts INT NOT NULL DEFAULT 0,
    last_error TEXT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL
);
CREATE INDEX ix_pending_images_restore ON pending_images (restore_id);
