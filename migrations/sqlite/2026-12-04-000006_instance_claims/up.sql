-- See migrations/mysql/2026-12-04-000006_instance_claims/up.sql.
UPDATE instances SET last_seen_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE last_seen_at IS NULL;
UPDATE disks SET last_seen_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE last_seen_at IS NULL;
ALTER TABLE instances ADD COLUMN contested_by VARCHAR(255) NULL;
ALTER TABLE instances ADD COLUMN contested_at DATETIME(6) NULL;
