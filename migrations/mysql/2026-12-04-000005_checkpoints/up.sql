-- libvirt checkpoints (issue 18).
--
-- A backup made through libvirt's backup API carries the checkpoint made
-- at its instant: libvirt keeps a checkpoint's metadata only while a
-- backup runs (Nova's undefine fails on a domain that has checkpoints),
-- the catalog keeps its XML, and the instance's next backup defines it
-- again and reads only what changed since (docs/design.md §7).
ALTER TABLE backups ADD COLUMN checkpoint_name VARCHAR(128) NULL;
ALTER TABLE backups ADD COLUMN checkpoint_xml TEXT NULL;
-- Why a disk was read in full (extract::FullReason: no_checkpoint,
-- checkpoint_invalid, not_qcow2, resized, ...); NULL for an incremental
-- read or a record older than this column.
ALTER TABLE backup_disks ADD COLUMN full_reason VARCHAR(32) NULL;
