ALTER TABLE disks DROP COLUMN last_seen_at;
ALTER TABLE instances DROP COLUMN last_seen_at;
DROP TABLE job_pins;
