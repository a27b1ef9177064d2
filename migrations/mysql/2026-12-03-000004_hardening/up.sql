-- Hardening (issue 17).
--
-- job_pins: the records a queued or running backup job was planned on
-- (each disk's head, the project's dedup sources). While the job is
-- active they count like any head, so retention (GC, compaction,
-- forgetting redirects) never drops data the job will reference at
-- commit. Rows go when the job ends.
CREATE TABLE job_pins (
    job_id VARCHAR(36) NOT NULL,
    disk_id VARCHAR(36) NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (job_id, disk_id, seq),
    KEY ix_job_pins_record (disk_id, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- When a host last reported an instance or disk in its inventory: disks a
-- live host stopped reporting are retired after [retention] retire_after.
ALTER TABLE instances ADD COLUMN last_seen_at DATETIME(6) NULL;
ALTER TABLE disks ADD COLUMN last_seen_at DATETIME(6) NULL;
