DROP TABLE backup_replicas;
DROP TABLE replica_objects;
