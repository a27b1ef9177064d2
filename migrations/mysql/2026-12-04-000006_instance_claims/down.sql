ALTER TABLE instances DROP COLUMN contested_at;
ALTER TABLE instances DROP COLUMN contested_by;
