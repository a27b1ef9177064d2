DROP TABLE catalog_rebuilds;
