//! Segments and the reference intervals that say which backup records use
//! them (see migrations/*/up.sql `segment_refs` and docs/design.md).
//!
//! For each disk, backup records are numbered by `seq`. A disk's record at
//! `seq` references a segment when some chunk or index page of its tree is
//! stored there. Instead of one row per record and segment, Ekko keeps
//! intervals `[from_seq, to_seq]` with a constant reference count, so a
//! backup writes rows only for the segments whose count changed.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::schema::{segment_refs, segments};
use super::{now, DbConnection, DbResult, OptionalRow};

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = segments)]
pub struct Segment {
    pub id: i64,
    pub project_id: String,
    pub status: String,
    pub size: i64,
    pub chunk_count: i32,
    pub relocated_to: Option<i64>,
    pub created_at: NaiveDateTime,
    pub condemned_at: Option<NaiveDateTime>,
    pub verified_at: Option<NaiveDateTime>,
    pub claimed_by: Option<String>,
    pub claim_until: Option<NaiveDateTime>,
}

impl Segment {
    pub fn live(id: i64, project_id: &str, size: i64, chunk_count: i32) -> Segment {
        Segment {
            id,
            project_id: project_id.to_string(),
            status: "live".into(),
            size,
            chunk_count,
            relocated_to: None,
            created_at: now(),
            condemned_at: None,
            verified_at: None,
            claimed_by: None,
            claim_until: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = segment_refs)]
pub struct SegmentRef {
    pub id: i64,
    pub disk_id: String,
    pub segment_id: i64,
    pub from_seq: i64,
    pub to_seq: Option<i64>,
    pub refs: i64,
}

pub fn insert(conn: &mut DbConnection, seg: &Segment) -> DbResult<()> {
    diesel::insert_into(segments::table)
        .values(seg)
        .execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, id: i64) -> DbResult<Segment> {
    segments::table
        .find(id)
        .select(Segment::as_select())
        .first(conn)
        .found(|| format!("segment {id:016x}"))
}

/// Record that from backup record `seq` on, disk `disk_id` holds
/// `refs` references into `segment_id` (0 = none any more). Closes the
/// open interval of that pair at `seq - 1` and opens a new one.
pub fn set_ref_count(
    conn: &mut DbConnection,
    disk_id: &str,
    seq: i64,
    segment_id: i64,
    refs: i64,
) -> DbResult<()> {
    diesel::update(
        segment_refs::table
            .filter(segment_refs::disk_id.eq(disk_id))
            .filter(segment_refs::segment_id.eq(segment_id))
            .filter(segment_refs::to_seq.is_null()),
    )
    .set(segment_refs::to_seq.eq(seq - 1))
    .execute(conn)?;
    // An interval that would end before it starts never held a record.
    diesel::delete(
        segment_refs::table
            .filter(segment_refs::disk_id.eq(disk_id))
            .filter(segment_refs::segment_id.eq(segment_id))
            .filter(segment_refs::to_seq.lt(segment_refs::from_seq.nullable())),
    )
    .execute(conn)?;
    if refs > 0 {
        diesel::insert_into(segment_refs::table)
            .values((
                segment_refs::disk_id.eq(disk_id),
                segment_refs::segment_id.eq(segment_id),
                segment_refs::from_seq.eq(seq),
                segment_refs::refs.eq(refs),
            ))
            .execute(conn)?;
    }
    Ok(())
}

pub fn refs_of_segment(conn: &mut DbConnection, segment_id: i64) -> DbResult<Vec<SegmentRef>> {
    Ok(segment_refs::table
        .filter(segment_refs::segment_id.eq(segment_id))
        .order(segment_refs::from_seq.asc())
        .select(SegmentRef::as_select())
        .load(conn)?)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Whether any backup record that still counts uses the segment: an open
/// interval (the disk's head), or a closed one containing a record whose
/// backup is not `deleted`.
pub fn is_referenced(conn: &mut DbConnection, segment_id: i64) -> DbResult<bool> {
    let row: Count = diesel::sql_query(
        "SELECT COUNT(*) AS n FROM segment_refs r \
         WHERE r.segment_id = ? AND (r.to_seq IS NULL OR EXISTS ( \
           SELECT 1 FROM backup_disks bd JOIN backups b ON b.id = bd.backup_id \
           WHERE bd.disk_id = r.disk_id AND bd.seq >= r.from_seq AND bd.seq <= r.to_seq \
             AND b.status <> ?))",
    )
    .bind::<BigInt, _>(segment_id)
    .bind::<Text, _>("deleted")
    .get_result(conn)?;
    Ok(row.n > 0)
}

/// The reference count of `disk`'s open interval on `segment` (0 if none).
pub fn open_count(conn: &mut DbConnection, disk_id: &str, segment_id: i64) -> DbResult<i64> {
    Ok(segment_refs::table
        .filter(segment_refs::disk_id.eq(disk_id))
        .filter(segment_refs::segment_id.eq(segment_id))
        .filter(segment_refs::to_seq.is_null())
        .select(segment_refs::refs)
        .first(conn)
        .optional()?
        .unwrap_or(0))
}

/// A committing backup reuses `segment`: it must exist in the project and
/// not be on its way out; a condemned segment (not yet deleted, by the
/// grace period) becomes live again.
pub fn reuse(conn: &mut DbConnection, segment_id: i64, project_id: &str) -> DbResult<()> {
    let seg = get(conn, segment_id)?;
    if seg.project_id != project_id {
        return Err(super::DbError::Conflict(format!(
            "segment {segment_id:016x} belongs to another project"
        )));
    }
    // Always an UPDATE: it locks the row until the commit ends, so garbage
    // collection cannot claim the segment in between (see
    // `claim_for_deletion`).
    let n = diesel::update(
        segments::table
            .find(segment_id)
            .filter(segments::status.eq_any(["live", "condemned"])),
    )
    .set((
        segments::status.eq("live"),
        segments::condemned_at.eq(None::<NaiveDateTime>),
    ))
    .execute(conn)?;
    if n == 0 {
        return Err(super::DbError::Conflict(format!(
            "segment {segment_id:016x} is {}: the backup must be retried without reusing it",
            seg.status
        )));
    }
    Ok(())
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Live segments created before `created_before` that no record which
/// still counts references (see [`is_referenced`]), at most `limit`.
pub fn unreferenced(
    conn: &mut DbConnection,
    created_before: NaiveDateTime,
    limit: i64,
) -> DbResult<Vec<i64>> {
    let rows: Vec<IdRow> = diesel::sql_query(
        "SELECT s.id AS id FROM segments s \
         WHERE s.status = ? AND s.created_at < ? AND NOT EXISTS ( \
           SELECT 1 FROM segment_refs r WHERE r.segment_id = s.id AND (r.to_seq IS NULL OR EXISTS ( \
             SELECT 1 FROM backup_disks bd JOIN backups b ON b.id = bd.backup_id \
             WHERE bd.disk_id = r.disk_id AND bd.seq >= r.from_seq AND bd.seq <= r.to_seq \
               AND b.status <> ?))) \
         ORDER BY s.id LIMIT ?",
    )
    .bind::<Text, _>("live")
    .bind::<diesel::sql_types::Timestamp, _>(created_before)
    .bind::<Text, _>("deleted")
    .bind::<BigInt, _>(limit)
    .load(conn)?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Mark a live segment condemned (its deletion waits for the grace period).
pub fn condemn(conn: &mut DbConnection, id: i64) -> DbResult<bool> {
    let n = diesel::update(segments::table.find(id).filter(segments::status.eq("live")))
        .set((
            segments::status.eq("condemned"),
            segments::condemned_at.eq(now()),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// Segments condemned before `before`, at most `limit`.
pub fn condemned_before(
    conn: &mut DbConnection,
    before: NaiveDateTime,
    limit: i64,
) -> DbResult<Vec<Segment>> {
    Ok(segments::table
        .filter(segments::status.eq("condemned"))
        .filter(segments::condemned_at.lt(before))
        .order(segments::id.asc())
        .limit(limit)
        .select(Segment::as_select())
        .load(conn)?)
}

/// Claim a condemned segment for deletion, in one transaction: it must
/// still be condemned (a committing backup that reused it made it live)
/// and still unreferenced. Locks the row against a concurrent
/// [`reuse`], which then fails its backup instead.
pub fn claim_for_deletion(conn: &mut DbConnection, id: i64, worker: &str) -> DbResult<bool> {
    use diesel::Connection;
    conn.transaction(|conn| {
        let n = diesel::update(
            segments::table
                .find(id)
                .filter(segments::status.eq("condemned")),
        )
        .set((
            segments::status.eq("deleting"),
            segments::claimed_by.eq(worker),
            segments::claim_until.eq(now() + chrono::Duration::minutes(10)),
        ))
        .execute(conn)?;
        if n == 0 {
            return Ok(false);
        }
        if is_referenced(conn, id)? {
            diesel::update(segments::table.find(id))
                .set((
                    segments::status.eq("live"),
                    segments::condemned_at.eq(None::<NaiveDateTime>),
                    segments::claimed_by.eq(None::<String>),
                    segments::claim_until.eq(None::<NaiveDateTime>),
                ))
                .execute(conn)?;
            return Ok(false);
        }
        Ok(true)
    })
}

/// Segments a crashed pass left `deleting` (their claim ran out): finish
/// them. A claim held by a running pass is left to it.
pub fn deleting(conn: &mut DbConnection, limit: i64) -> DbResult<Vec<Segment>> {
    Ok(segments::table
        .filter(segments::status.eq("deleting"))
        .filter(segments::claim_until.lt(now()))
        .order(segments::id.asc())
        .limit(limit)
        .select(Segment::as_select())
        .load(conn)?)
}

/// Forget a deleted segment and its (dead) reference intervals.
pub fn forget(conn: &mut DbConnection, id: i64) -> DbResult<()> {
    use diesel::Connection;
    conn.transaction(|conn| {
        diesel::delete(segment_refs::table.filter(segment_refs::segment_id.eq(id)))
            .execute(conn)?;
        diesel::delete(
            segments::table
                .find(id)
                .filter(segments::status.eq("deleting")),
        )
        .execute(conn)?;
        Ok(())
    })
}

/// (status, segments, bytes) for every segment status.
pub fn totals(conn: &mut DbConnection) -> DbResult<Vec<(String, i64, i64)>> {
    let rows: Vec<(String, i64)> = segments::table
        .select((segments::status, segments::size))
        .load(conn)?;
    let mut out: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for (status, size) in rows {
        let e = out.entry(status).or_default();
        e.0 += 1;
        e.1 += size;
    }
    Ok(out.into_iter().map(|(s, (n, b))| (s, n, b)).collect())
}
