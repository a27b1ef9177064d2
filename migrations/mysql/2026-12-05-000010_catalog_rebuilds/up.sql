-- A catalog rebuild (`ekko-manage catalog rebuild`) that has started
-- committing and not finished: its catalog knows only part of the store,
-- so nothing may delete objects (retention, garbage collection, the orphan
-- sweep, replication refuse) until it is finished or the database is
-- recreated. At most one row.
CREATE TABLE catalog_rebuilds (
    source VARCHAR(16) NOT NULL PRIMARY KEY,
    started_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
