-- A catalog rebuild (`ekko-manage catalog rebuild`) that has started and
-- not finished: the catalog knows only part of the store, so nothing may
-- delete objects (retention, garbage collection, the orphan sweep and
-- replication refuse) until it is finished or the database is recreated.
-- One row at most (id 1): `holder` is the host and process running it.
CREATE TABLE catalog_rebuilds (
    id INTEGER NOT NULL PRIMARY KEY,
    source VARCHAR(16) NOT NULL,
    holder VARCHAR(255) NOT NULL,
    started_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
