//! Second copies (`[replication]`): which objects a second store holds,
//! and which backups it holds whole.
//!
//! A store is named by its key (`store::Replica::key`). A row of
//! `replica_objects` says the store holds that object of the project's
//! container as the first store held it; `segment_id` is set for segment
//! objects and relocation notes. A row of `backup_replicas` says every
//! object the backup needed was held when it was written.

use std::collections::HashSet;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};

use super::schema::{backup_replicas, replica_objects};
use super::{now, DbConnection, DbResult};

/// Names per `IN (…)` list.
const IN_BATCH: usize = 500;

/// Record that `store` holds `name` of `project_id` (again is fine).
pub fn record_object(
    conn: &mut DbConnection,
    store: &str,
    project_id: &str,
    name: &str,
    segment_id: Option<i64>,
    size: i64,
) -> DbResult<()> {
    let inserted = diesel::insert_into(replica_objects::table)
        .values((
            replica_objects::store.eq(store),
            replica_objects::project_id.eq(project_id),
            replica_objects::name.eq(name),
            replica_objects::segment_id.eq(segment_id),
            replica_objects::size.eq(size),
            replica_objects::copied_at.eq(now()),
        ))
        .execute(conn);
    // Already recorded (a pass before, or another process): the same fact.
    super::inserted_once(inserted).map(drop)
}

/// Which of `names` `store` holds for the project.
pub fn held(
    conn: &mut DbConnection,
    store: &str,
    project_id: &str,
    names: &[String],
) -> DbResult<HashSet<String>> {
    let mut out = HashSet::new();
    for batch in names.chunks(IN_BATCH) {
        let found: Vec<String> = replica_objects::table
            .filter(replica_objects::store.eq(store))
            .filter(replica_objects::project_id.eq(project_id))
            .filter(replica_objects::name.eq_any(batch))
            .select(replica_objects::name)
            .load(conn)?;
        out.extend(found);
    }
    Ok(out)
}

/// Forget one object of `store` (deleted from it).
pub fn forget_object(
    conn: &mut DbConnection,
    store: &str,
    project_id: &str,
    name: &str,
) -> DbResult<()> {
    diesel::delete(
        replica_objects::table
            .filter(replica_objects::store.eq(store))
            .filter(replica_objects::project_id.eq(project_id))
            .filter(replica_objects::name.eq(name)),
    )
    .execute(conn)?;
    Ok(())
}

/// Forget every store's copy of a project's manifest (the backup is gone).
pub fn forget_everywhere(conn: &mut DbConnection, project_id: &str, name: &str) -> DbResult<()> {
    diesel::delete(
        replica_objects::table
            .filter(replica_objects::project_id.eq(project_id))
            .filter(replica_objects::name.eq(name)),
    )
    .execute(conn)?;
    Ok(())
}

#[derive(QueryableByName)]
struct Pending {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    project_id: String,
}

/// Available backups `store` does not hold yet, oldest first: (id, project).
pub fn pending_backups(
    conn: &mut DbConnection,
    store: &str,
    limit: i64,
) -> DbResult<Vec<(String, String)>> {
    let rows: Vec<Pending> = diesel::sql_query(
        "SELECT b.id AS id, b.project_id AS project_id FROM backups b \
         WHERE b.status = 'available' AND NOT EXISTS ( \
           SELECT 1 FROM backup_replicas r WHERE r.backup_id = b.id AND r.store = ?) \
         ORDER BY b.created_at, b.id LIMIT ?",
    )
    .bind::<Text, _>(store)
    .bind::<BigInt, _>(limit)
    .load(conn)?;
    Ok(rows.into_iter().map(|r| (r.id, r.project_id)).collect())
}

/// When the oldest available backup `store` does not hold yet was
/// completed (the replication lag), if any.
pub fn oldest_pending(conn: &mut DbConnection, store: &str) -> DbResult<Option<NaiveDateTime>> {
    #[derive(QueryableByName)]
    struct Oldest {
        #[diesel(sql_type = Nullable<diesel::sql_types::Timestamp>)]
        at: Option<NaiveDateTime>,
    }
    let row: Oldest = diesel::sql_query(
        "SELECT MIN(COALESCE(b.completed_at, b.created_at)) AS at FROM backups b \
         WHERE b.status = 'available' AND NOT EXISTS ( \
           SELECT 1 FROM backup_replicas r WHERE r.backup_id = b.id AND r.store = ?)",
    )
    .bind::<Text, _>(store)
    .get_result(conn)?;
    Ok(row.at)
}

/// A segment a backup's records use: its id, and where compaction moved
/// its records (if it did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, QueryableByName)]
pub struct UsedSegment {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub relocated_to: Option<i64>,
}

/// The segments the records of `backup_id` use (every disk's record: the
/// reference intervals covering it, and its map's root segment).
pub fn segments_of_backup(conn: &mut DbConnection, backup_id: &str) -> DbResult<Vec<UsedSegment>> {
    Ok(diesel::sql_query(
        "SELECT DISTINCT s.id AS id, s.relocated_to AS relocated_to \
         FROM backup_disks bd \
         JOIN segment_refs r ON r.disk_id = bd.disk_id AND r.from_seq <= bd.seq \
           AND (r.to_seq IS NULL OR r.to_seq >= bd.seq) \
         JOIN segments s ON s.id = r.segment_id \
         WHERE bd.backup_id = ? AND r.refs > 0 \
         UNION \
         SELECT s.id AS id, s.relocated_to AS relocated_to \
         FROM backup_disks bd JOIN segments s ON s.id = bd.root_segment \
         WHERE bd.backup_id = ?",
    )
    .bind::<Text, _>(backup_id)
    .bind::<Text, _>(backup_id)
    .load(conn)?)
}

/// Record that `store` holds every object `backup_id` needs.
pub fn mark_backup(
    conn: &mut DbConnection,
    store: &str,
    backup_id: &str,
    bytes_copied: i64,
) -> DbResult<()> {
    let inserted = diesel::insert_into(backup_replicas::table)
        .values((
            backup_replicas::backup_id.eq(backup_id),
            backup_replicas::store.eq(store),
            backup_replicas::bytes_copied.eq(bytes_copied),
            backup_replicas::copied_at.eq(now()),
        ))
        .execute(conn);
    // Already recorded (a pass before, or another process): the same fact.
    super::inserted_once(inserted).map(drop)
}

/// The stores that hold a backup whole: (store key, when it was copied).
pub fn stores_of_backup(
    conn: &mut DbConnection,
    backup_id: &str,
) -> DbResult<Vec<(String, NaiveDateTime)>> {
    Ok(backup_replicas::table
        .filter(backup_replicas::backup_id.eq(backup_id))
        .select((backup_replicas::store, backup_replicas::copied_at))
        .order(backup_replicas::store.asc())
        .load(conn)?)
}

/// Objects and bytes `store` holds, for the status report.
pub fn totals(conn: &mut DbConnection, store: &str) -> DbResult<(i64, i64)> {
    let sizes: Vec<i64> = replica_objects::table
        .filter(replica_objects::store.eq(store))
        .select(replica_objects::size)
        .load(conn)?;
    Ok((sizes.len() as i64, sizes.iter().sum()))
}

/// Whether scrub found damage in a segment the record of `disk_id` at
/// `seq` is read from in the first store (through compaction's redirects).
pub fn first_copy_damaged(conn: &mut DbConnection, disk_id: &str, seq: i64) -> DbResult<bool> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let c: Count = diesel::sql_query(
        "SELECT COUNT(*) AS n FROM segment_refs r JOIN segments s ON s.id = r.segment_id \
         JOIN bad_chunks bc ON bc.segment_id = COALESCE(s.relocated_to, s.id) \
         WHERE r.disk_id = ? AND r.from_seq <= ? AND (r.to_seq IS NULL OR r.to_seq >= ?) \
           AND bc.repaired_segment IS NULL",
    )
    .bind::<Text, _>(disk_id)
    .bind::<BigInt, _>(seq)
    .bind::<BigInt, _>(seq)
    .get_result(conn)?;
    Ok(c.n > 0)
}

/// Which of `ids` scrub found damaged (a copy of them would copy damage).
pub fn damaged(conn: &mut DbConnection, ids: &[i64]) -> DbResult<Vec<i64>> {
    use super::schema::bad_chunks;
    let mut out = Vec::new();
    for batch in ids.chunks(IN_BATCH) {
        let found: Vec<i64> = bad_chunks::table
            .filter(bad_chunks::segment_id.eq_any(batch))
            .filter(bad_chunks::repaired_segment.is_null())
            .select(bad_chunks::segment_id)
            .distinct()
            .load(conn)?;
        out.extend(found);
    }
    Ok(out)
}

/// Whether `store` holds `backup_id` whole.
pub fn holds_backup(conn: &mut DbConnection, store: &str, backup_id: &str) -> DbResult<bool> {
    Ok(stores_of_backup(conn, backup_id)?
        .iter()
        .any(|(s, _)| s == store))
}

/// Available backups `store` holds, and those it does not hold yet.
pub fn counts(conn: &mut DbConnection, store: &str) -> DbResult<(i64, i64)> {
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        held: i64,
        #[diesel(sql_type = BigInt)]
        pending: i64,
    }
    let c: Counts = diesel::sql_query(
        "SELECT COALESCE(SUM(CASE WHEN r.backup_id IS NULL THEN 0 ELSE 1 END), 0) AS held, \
           COALESCE(SUM(CASE WHEN r.backup_id IS NULL THEN 1 ELSE 0 END), 0) AS pending \
         FROM backups b LEFT JOIN backup_replicas r ON r.backup_id = b.id AND r.store = ? \
         WHERE b.status = 'available'",
    )
    .bind::<Text, _>(store)
    .get_result(conn)?;
    Ok((c.held, c.pending))
}
