-- See migrations/mysql/2026-12-03-000004_hardening/up.sql.
CREATE TABLE job_pins (
    job_id VARCHAR(36) NOT NULL,
    disk_id VARCHAR(36) NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (job_id, disk_id, seq)
);
CREATE INDEX ix_job_pins_record ON job_pins (disk_id, seq);
ALTER TABLE instances ADD COLUMN last_seen_at DATETIME(6) NULL;
ALTER TABLE disks ADD COLUMN last_seen_at DATETIME(6) NULL;
