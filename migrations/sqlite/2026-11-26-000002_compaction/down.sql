DROP INDEX ix_segments_live_check;
DROP INDEX ix_segments_relocated;
ALTER TABLE segments DROP COLUMN live_bytes;
ALTER TABLE segments DROP COLUMN live_checked_at;
