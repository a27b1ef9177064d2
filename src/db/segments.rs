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
    match seg.status.as_str() {
        "live" => Ok(()),
        "condemned" => {
            diesel::update(
                segments::table
                    .find(segment_id)
                    .filter(segments::status.eq("condemned")),
            )
            .set((
                segments::status.eq("live"),
                segments::condemned_at.eq(None::<NaiveDateTime>),
            ))
            .execute(conn)?;
            Ok(())
        }
        other => Err(super::DbError::Conflict(format!(
            "segment {segment_id:016x} is {other}: the backup must be retried without reusing it"
        ))),
    }
}
