ALTER TABLE backup_disks DROP COLUMN full_reason;
ALTER TABLE backups DROP COLUMN checkpoint_xml;
ALTER TABLE backups DROP COLUMN checkpoint_name;
