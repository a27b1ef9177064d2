-- Compaction: the live share of a segment as last measured (bytes of its
-- records that some counting backup record still uses), and when, so a
-- pass re-measures a segment only after another backup using it was
-- deleted. Status `relocated`: its records were rewritten into
-- `relocated_to` and the object waits out the grace period; `moved`: the
-- object is gone and the row only redirects readers of older maps.
ALTER TABLE segments ADD COLUMN live_bytes BIGINT NULL, ADD COLUMN live_checked_at DATETIME(6) NULL;
CREATE INDEX ix_segments_relocated ON segments (relocated_to);
