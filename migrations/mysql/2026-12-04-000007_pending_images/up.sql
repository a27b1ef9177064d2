-- Glance images Ekko created for restores and has not handed over yet
-- (issue 19). A row lives from the image's creation until the restore
-- completed with the image verified active (the row goes, the image stays
-- the tenant's), or until the image of a failed restore was deleted from
-- Glance. A crash or Glance outage at any point leaves the row, and a
-- later housekeeping pass settles it.
--
-- `finished_bytes` is set when the host reports the upload done: the
-- controller then checks the image in Glance before the restore completes
-- (a Glance outage then delays the check, never the status queue).
--
-- `user_token` is the tenant's token, sent with Ekko's service token so
-- Glance accepts it once expired (keystonemiddleware's allow-expired path,
-- bounded by Keystone's [token] allow_expired_window); it is cleared with
-- the row.
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
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_pending_images_restore ON pending_images (restore_id);
