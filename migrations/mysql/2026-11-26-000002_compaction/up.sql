-- Compaction: the live share of a segment as last measured (bytes of its
-- records that some counting backup record still uses), and when; NULL
-- when a backup using it stopped counting since (it is measured again;
-- rows from before this migration are measured once, a batch per pass).
-- Status `relocated`: its records were rewritten into `relocated_to` and
-- the object waits out the grace period; `moved`: the object is gone and
-- the row only redirects readers of older maps.
ALTER TABLE segments ADD COLUMN live_bytes BIGINT NULL, ADD COLUMN live_checked_at DATETIME(6) NULL;
CREATE INDEX ix_segments_relocated ON segments (relocated_to);
-- Compaction candidates: live segments whose live share is unknown.
CREATE INDEX ix_segments_live_check ON segments (status, live_checked_at);
