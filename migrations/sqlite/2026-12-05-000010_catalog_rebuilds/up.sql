-- See migrations/mysql/2026-12-05-000010_catalog_rebuilds/up.sql.
CREATE TABLE catalog_rebuilds (
    id INTEGER NOT NULL PRIMARY KEY,
    source VARCHAR(16) NOT NULL,
    holder VARCHAR(255) NOT NULL,
    started_at DATETIME(6) NOT NULL
);
