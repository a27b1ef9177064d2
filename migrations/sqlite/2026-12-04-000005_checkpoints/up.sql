-- See migrations/mysql/2026-12-04-000005_checkpoints/up.sql.
ALTER TABLE backups ADD COLUMN checkpoint_name VARCHAR(128) NULL;
ALTER TABLE backups ADD COLUMN checkpoint_xml TEXT NULL;
ALTER TABLE backup_disks ADD COLUMN full_reason VARCHAR(32) NULL;
