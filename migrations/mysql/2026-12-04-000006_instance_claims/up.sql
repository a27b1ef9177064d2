-- Which host may hold an instance (issue 17, review findings 2 and 3).
--
-- Rows from before 000004 were never "seen": count them as seen now, so
-- the first retention pass after an upgrade does not retire every disk
-- and no host can take over an instance its own host has not reported
-- yet. (Timestamps are UTC, as the service writes them.)
UPDATE instances SET last_seen_at = UTC_TIMESTAMP(6) WHERE last_seen_at IS NULL;
UPDATE disks SET last_seen_at = UTC_TIMESTAMP(6) WHERE last_seen_at IS NULL;

-- A second live host reporting an instance its host still reports: the
-- instance stays where it is, the claim is kept here and the instance's
-- backups are refused until one of the two stops reporting it (or an
-- operator moves it): a host can no longer capture another's instance.
ALTER TABLE instances ADD COLUMN contested_by VARCHAR(255) NULL;
ALTER TABLE instances ADD COLUMN contested_at DATETIME(6) NULL;
