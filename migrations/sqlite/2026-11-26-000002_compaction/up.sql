-- See migrations/mysql/2026-11-26-000002_compaction/up.sql.
ALTER TABLE segments ADD COLUMN live_bytes BIGINT NULL;
ALTER TABLE segments ADD COLUMN live_checked_at DATETIME(6) NULL;
CREATE INDEX ix_segments_relocated ON segments (relocated_to);
-- Compaction candidates: live segments whose live share is unknown.
CREATE INDEX ix_segments_live_check ON segments (status, live_checked_at);
