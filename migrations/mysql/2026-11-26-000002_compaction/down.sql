DROP INDEX ix_segments_live_check ON segments;
DROP INDEX ix_segments_relocated ON segments;
ALTER TABLE segments DROP COLUMN live_bytes, DROP COLUMN live_checked_at;
