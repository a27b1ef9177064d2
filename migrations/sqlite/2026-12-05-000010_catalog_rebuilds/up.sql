-- See migrations/mysql/2026-12-05-000010_catalog_rebuilds/up.sql.
CREATE TABLE catalog_rebuilds (
    source VARCHAR(16) NOT NULL PRIMARY KEY,
    started_at DATETIME(6) NOT NULL
);
