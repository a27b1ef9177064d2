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

use super::schema::{bad_chunks, replica_objects, segment_refs, segments};
use super::{now, DbConnection, DbResult, OptionalRow};
pub use crate::status::SegmentStatus;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = segments)]
pub struct Segment {
    pub id: i64,
    pub project_id: String,
    pub status: SegmentStatus,
    pub size: i64,
    pub chunk_count: i32,
    pub relocated_to: Option<i64>,
    pub created_at: NaiveDateTime,
    pub condemned_at: Option<NaiveDateTime>,
    pub verified_at: Option<NaiveDateTime>,
    pub claimed_by: Option<String>,
    pub claim_until: Option<NaiveDateTime>,
    /// Bytes of its records still used, as last measured for compaction.
    pub live_bytes: Option<i64>,
    pub live_checked_at: Option<NaiveDateTime>,
}

impl Segment {
    pub fn live(id: i64, project_id: &str, size: i64, chunk_count: i32) -> Segment {
        Segment {
            id,
            project_id: project_id.to_string(),
            status: SegmentStatus::Live,
            size,
            chunk_count,
            relocated_to: None,
            created_at: now(),
            condemned_at: None,
            verified_at: None,
            claimed_by: None,
            claim_until: None,
            // Born whole: every record is used by the map that wrote it.
            live_bytes: Some(size),
            live_checked_at: Some(now()),
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

/// A redirect row (catalog rebuild): segment `id`'s records are in `to`,
/// its own object is gone.
pub fn insert_redirect(
    conn: &mut DbConnection,
    id: i64,
    project_id: &str,
    to: i64,
) -> DbResult<()> {
    let mut seg = Segment::live(id, project_id, 0, 0);
    seg.status = SegmentStatus::Moved;
    seg.relocated_to = Some(to);
    insert(conn, &seg)
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

/// End every open interval of `disk_id` before record `seq` (its new map
/// was built from scratch and counts all its references itself).
pub fn end_open_refs(conn: &mut DbConnection, disk_id: &str, seq: i64) -> DbResult<()> {
    diesel::update(
        segment_refs::table
            .filter(segment_refs::disk_id.eq(disk_id))
            .filter(segment_refs::to_seq.is_null()),
    )
    .set(segment_refs::to_seq.eq(seq - 1))
    .execute(conn)?;
    diesel::delete(
        segment_refs::table
            .filter(segment_refs::disk_id.eq(disk_id))
            .filter(segment_refs::to_seq.lt(segment_refs::from_seq.nullable())),
    )
    .execute(conn)?;
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

/// An interval `r` that still counts: open (the disk's head), holding a
/// record whose backup is not deleted, or holding a record a queued or
/// running job is planned on (`job_pins`: its base or a dedup source).
const COUNTS: &str = "(r.to_seq IS NULL OR EXISTS ( \
    SELECT 1 FROM backup_disks bd JOIN backups b ON b.id = bd.backup_id \
    WHERE bd.disk_id = r.disk_id AND bd.seq >= r.from_seq AND bd.seq <= r.to_seq \
      AND b.status <> 'deleted') OR EXISTS ( \
    SELECT 1 FROM job_pins p JOIN jobs j ON j.id = p.job_id \
    WHERE p.disk_id = r.disk_id AND p.seq >= r.from_seq AND p.seq <= r.to_seq \
      AND j.status IN ('queued', 'running')))";

/// `s` (a segment row) is unreferenced: no counting interval names it, or
/// names a segment whose records compaction moved into it.
fn unreferenced_sql() -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM segment_refs r WHERE r.segment_id = s.id AND {COUNTS}) \
         AND NOT EXISTS (SELECT 1 FROM segments x JOIN segment_refs r ON r.segment_id = x.id \
           WHERE x.relocated_to = s.id AND {COUNTS})"
    )
}

/// Whether any backup record that still counts uses the segment's records
/// (through its own id, or an id compaction redirected to it).
pub fn is_referenced(conn: &mut DbConnection, segment_id: i64) -> DbResult<bool> {
    let row: Count = diesel::sql_query(format!(
        "SELECT COUNT(*) AS n FROM segments s WHERE s.id = ? AND NOT ({})",
        unreferenced_sql()
    ))
    .bind::<BigInt, _>(segment_id)
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
    // A segment the catalog does not know (any more) is a verdict on this
    // commit, not a reason to retry it.
    let seg = match get(conn, segment_id) {
        Err(super::DbError::NotFound(_)) => {
            return Err(super::DbError::Conflict(format!(
                "segment {segment_id:016x} is not in the catalog"
            )))
        }
        other => other?,
    };
    if seg.project_id != project_id {
        return Err(super::DbError::Conflict(format!(
            "segment {segment_id:016x} belongs to another project"
        )));
    }
    // Compacted: its records live on in the segment it was moved into.
    if let (Some(target), SegmentStatus::Relocated | SegmentStatus::Moved) =
        (seg.relocated_to, seg.status)
    {
        return reuse(conn, target, project_id);
    }
    // Always an UPDATE: it locks the row until the commit ends, so garbage
    // collection cannot claim the segment in between (see
    // `claim_for_deletion`).
    let n = diesel::update(
        segments::table
            .find(segment_id)
            .filter(segments::status.eq_any([SegmentStatus::Live, SegmentStatus::Condemned])),
    )
    .set((
        segments::status.eq(SegmentStatus::Live),
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
    unreferenced_in(conn, SegmentStatus::Live, created_before, limit)
}

fn unreferenced_in(
    conn: &mut DbConnection,
    status: SegmentStatus,
    created_before: NaiveDateTime,
    limit: i64,
) -> DbResult<Vec<i64>> {
    let rows: Vec<IdRow> = diesel::sql_query(format!(
        "SELECT s.id AS id FROM segments s WHERE s.status = ? AND s.created_at < ? AND {} \
         ORDER BY s.id LIMIT ?",
        unreferenced_sql()
    ))
    .bind::<Text, _>(status.as_str())
    .bind::<diesel::sql_types::Timestamp, _>(created_before)
    .bind::<BigInt, _>(limit)
    .load(conn)?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Mark a live segment condemned (its deletion waits for the grace period).
pub fn condemn(conn: &mut DbConnection, id: i64) -> DbResult<bool> {
    let n = diesel::update(
        segments::table
            .find(id)
            .filter(segments::status.eq(SegmentStatus::Live)),
    )
    .set((
        segments::status.eq(SegmentStatus::Condemned),
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
    in_status_since_before(conn, SegmentStatus::Condemned, before, limit)
}

/// Segments in `status` since before `before` (`condemned_at` records
/// when they left `live`), oldest id first.
fn in_status_since_before(
    conn: &mut DbConnection,
    status: SegmentStatus,
    before: NaiveDateTime,
    limit: i64,
) -> DbResult<Vec<Segment>> {
    Ok(segments::table
        .filter(segments::status.eq(status))
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
                .filter(segments::status.eq(SegmentStatus::Condemned)),
        )
        .set((
            segments::status.eq(SegmentStatus::Deleting),
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
                    segments::status.eq(SegmentStatus::Live),
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
        .filter(segments::status.eq(SegmentStatus::Deleting))
        .filter(segments::claim_until.lt(now()))
        .order(segments::id.asc())
        .limit(limit)
        .select(Segment::as_select())
        .load(conn)?)
}

/// Forget a deleted segment (or an unused redirect), its dead reference
/// intervals, damage records and second copies.
pub fn forget(conn: &mut DbConnection, id: i64) -> DbResult<()> {
    use diesel::Connection;
    conn.transaction(|conn| {
        diesel::delete(segment_refs::table.filter(segment_refs::segment_id.eq(id)))
            .execute(conn)?;
        diesel::delete(bad_chunks::table.filter(bad_chunks::segment_id.eq(id))).execute(conn)?;
        let gone = diesel::delete(
            segments::table
                .find(id)
                .filter(segments::status.eq_any([SegmentStatus::Deleting, SegmentStatus::Moved])),
        )
        .execute(conn)?;
        if gone > 0 {
            // The callers deleted its objects from every store first.
            diesel::delete(replica_objects::table.filter(replica_objects::segment_id.eq(id)))
                .execute(conn)?;
        }
        Ok(())
    })
}

/// Where compaction moved a project's segments: (id, relocated_to).
pub fn relocations(conn: &mut DbConnection, project_id: &str) -> DbResult<Vec<(i64, i64)>> {
    let rows: Vec<(i64, Option<i64>)> = segments::table
        .filter(segments::project_id.eq(project_id))
        .filter(segments::relocated_to.is_not_null())
        .select((segments::id, segments::relocated_to))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, to)| Some((id, to?)))
        .collect())
}

/// The ids redirected to `id` (segments compacted into it).
pub fn redirected_to(conn: &mut DbConnection, id: i64) -> DbResult<Vec<i64>> {
    Ok(segments::table
        .filter(segments::relocated_to.eq(id))
        .select(segments::id)
        .load(conn)?)
}

/// Live segments whose live share is to be measured (a backup using them
/// was deleted since; see [`lost_a_user`]), created before
/// `created_before`, at most `limit`.
pub fn compaction_candidates(
    conn: &mut DbConnection,
    created_before: NaiveDateTime,
    limit: i64,
) -> DbResult<Vec<Segment>> {
    Ok(segments::table
        .filter(segments::status.eq(SegmentStatus::Live))
        .filter(segments::live_checked_at.is_null())
        .filter(segments::created_at.lt(created_before))
        .order(segments::id.asc())
        .limit(limit)
        .select(Segment::as_select())
        .load(conn)?)
}

/// The segments the records of `backup_id` use (directly, or as the home
/// of a redirected id) lost a user: their live share is measured again by
/// the next compaction. Called as the backup stops counting (deleted, or a
/// deleted head replaced), in the same transaction.
pub fn lost_a_user(conn: &mut DbConnection, backup_id: &str) -> DbResult<()> {
    let used: Vec<IdRow> = diesel::sql_query(
        "SELECT DISTINCT r.segment_id AS id FROM backup_disks bd \
         JOIN segment_refs r ON r.disk_id = bd.disk_id AND r.from_seq <= bd.seq \
           AND (r.to_seq IS NULL OR r.to_seq >= bd.seq) \
         WHERE bd.backup_id = ?",
    )
    .bind::<Text, _>(backup_id)
    .load(conn)?;
    let mut ids: Vec<i64> = used.into_iter().map(|r| r.id).collect();
    let homes: Vec<Option<i64>> = segments::table
        .filter(segments::id.eq_any(&ids))
        .filter(segments::relocated_to.is_not_null())
        .select(segments::relocated_to)
        .load(conn)?;
    ids.extend(homes.into_iter().flatten());
    for batch in ids.chunks(1000) {
        diesel::update(
            segments::table
                .filter(segments::id.eq_any(batch))
                .filter(segments::status.eq(SegmentStatus::Live)),
        )
        .set(segments::live_checked_at.eq(None::<NaiveDateTime>))
        .execute(conn)?;
    }
    Ok(())
}

/// A backup record whose map must be walked to find the records it uses.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct RecordRoot {
    #[diesel(sql_type = Text)]
    pub disk_id: String,
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub backup_id: String,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    pub root_digest: Vec<u8>,
    #[diesel(sql_type = BigInt)]
    pub root_segment: i64,
    #[diesel(sql_type = BigInt)]
    pub virtual_size: i64,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub chunk_size: i32,
    /// 1 for the disk's head (its map is the base of the next incremental).
    #[diesel(sql_type = BigInt)]
    pub is_head: i64,
}

/// The records that still count and use any of `ids` (directly or through
/// a redirect): every non-deleted record of a counting interval, the head
/// of an open one whatever its backup's status, and every record a queued
/// or running job is planned on.
pub fn records_using(conn: &mut DbConnection, ids: &[i64]) -> DbResult<Vec<RecordRoot>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut all: Vec<i64> = segments::table
        .filter(segments::relocated_to.eq_any(ids))
        .select(segments::id)
        .load(conn)?;
    all.extend_from_slice(ids);
    // Integers only: safe to inline.
    let list = all.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    Ok(diesel::sql_query(format!(
        "SELECT DISTINCT bd.disk_id AS disk_id, bd.seq AS seq, bd.backup_id AS backup_id, \
           bd.root_digest AS root_digest, bd.root_segment AS root_segment, \
           bd.virtual_size AS virtual_size, bd.chunk_size AS chunk_size, \
           CASE WHEN bd.seq = d.head_seq THEN 1 ELSE 0 END AS is_head \
         FROM segment_refs r \
         JOIN backup_disks bd ON bd.disk_id = r.disk_id AND bd.seq >= r.from_seq \
           AND (r.to_seq IS NULL OR bd.seq <= r.to_seq) \
         JOIN backups b ON b.id = bd.backup_id \
         JOIN disks d ON d.id = bd.disk_id \
         WHERE r.segment_id IN ({list}) \
           AND (b.status <> 'deleted' OR (r.to_seq IS NULL AND bd.seq = d.head_seq) \
             OR EXISTS (SELECT 1 FROM job_pins p JOIN jobs j ON j.id = p.job_id \
               WHERE p.disk_id = bd.disk_id AND p.seq = bd.seq \
                 AND j.status IN ('queued', 'running'))) \
         ORDER BY bd.disk_id, bd.seq"
    ))
    .load(conn)?)
}

/// Record a segment's measured live share.
pub fn set_live_bytes(conn: &mut DbConnection, id: i64, live: Option<i64>) -> DbResult<()> {
    diesel::update(segments::table.find(id))
        .set((
            segments::live_bytes.eq(live),
            segments::live_checked_at.eq(now()),
        ))
        .execute(conn)?;
    Ok(())
}

/// Switch the catalog from `old` to `new` (its live records rewritten), in
/// one transaction: `new` becomes live, `old` is `relocated` to it (its
/// object waits out the grace period), and segments earlier compacted into
/// `old` now redirect to `new` (one hop for every reader). False, changing
/// nothing, if `old` is no longer live (another pass compacted or
/// condemned it first).
pub fn relocate(conn: &mut DbConnection, old: i64, new: &Segment) -> DbResult<bool> {
    use diesel::Connection;
    conn.transaction(|conn| {
        let n = diesel::update(
            segments::table
                .find(old)
                .filter(segments::status.eq(SegmentStatus::Live)),
        )
        .set((
            segments::status.eq(SegmentStatus::Relocated),
            segments::relocated_to.eq(new.id),
            segments::condemned_at.eq(now()),
        ))
        .execute(conn)?;
        if n == 0 {
            return Ok(false);
        }
        insert(conn, new)?;
        diesel::update(segments::table.filter(segments::relocated_to.eq(old)))
            .set(segments::relocated_to.eq(new.id))
            .execute(conn)?;
        Ok(true)
    })
}

/// Relocated segments whose old object may go: relocated before `before`.
pub fn relocated_before(
    conn: &mut DbConnection,
    before: NaiveDateTime,
    limit: i64,
) -> DbResult<Vec<Segment>> {
    in_status_since_before(conn, SegmentStatus::Relocated, before, limit)
}

/// A relocated segment's object is deleted: the row stays as a redirect.
pub fn mark_moved(conn: &mut DbConnection, id: i64) -> DbResult<()> {
    diesel::update(
        segments::table
            .find(id)
            .filter(segments::status.eq(SegmentStatus::Relocated)),
    )
    .set(segments::status.eq(SegmentStatus::Moved))
    .execute(conn)?;
    Ok(())
}

/// Redirect rows (`moved`) that no counting record uses any more.
pub fn unused_redirects(conn: &mut DbConnection, limit: i64) -> DbResult<Vec<Segment>> {
    let ids = unreferenced_in(conn, SegmentStatus::Moved, now(), limit)?;
    Ok(segments::table
        .filter(segments::id.eq_any(ids))
        .select(Segment::as_select())
        .load(conn)?)
}

/// The segments scrub checks next: live ones never verified first, then
/// the longest unverified; `percent` of them.
pub fn due_for_scrub(conn: &mut DbConnection, percent: f64) -> DbResult<Vec<Segment>> {
    let live: i64 = segments::table
        .filter(segments::status.eq(SegmentStatus::Live))
        .count()
        .get_result(conn)?;
    let n = ((live as f64) * percent / 100.0).ceil() as i64;
    if n <= 0 {
        return Ok(Vec::new());
    }
    Ok(segments::table
        .filter(segments::status.eq(SegmentStatus::Live))
        .order((
            segments::verified_at.is_not_null(),
            segments::verified_at.asc(),
            segments::id.asc(),
        ))
        .limit(n)
        .select(Segment::as_select())
        .load(conn)?)
}

pub fn set_verified(conn: &mut DbConnection, id: i64) -> DbResult<()> {
    diesel::update(segments::table.find(id))
        .set(segments::verified_at.eq(now()))
        .execute(conn)?;
    Ok(())
}

/// Scrub found record `digest` of `segment` damaged or missing: it is never
/// reused (backups store a fresh copy instead).
pub fn mark_bad(
    conn: &mut DbConnection,
    project_id: &str,
    digest: &[u8],
    segment_id: i64,
) -> DbResult<()> {
    let known: i64 = bad_chunks::table
        .filter(bad_chunks::project_id.eq(project_id))
        .filter(bad_chunks::digest.eq(digest))
        .filter(bad_chunks::segment_id.eq(segment_id))
        .count()
        .get_result(conn)?;
    if known == 0 {
        diesel::insert_into(bad_chunks::table)
            .values((
                bad_chunks::project_id.eq(project_id),
                bad_chunks::digest.eq(digest),
                bad_chunks::segment_id.eq(segment_id),
                bad_chunks::found_at.eq(now()),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// A project's damaged records, as (digest, segment).
pub fn bad_records(conn: &mut DbConnection, project_id: &str) -> DbResult<Vec<(Vec<u8>, i64)>> {
    Ok(bad_chunks::table
        .filter(bad_chunks::project_id.eq(project_id))
        .select((bad_chunks::digest, bad_chunks::segment_id))
        .load(conn)?)
}

/// (status, segments, bytes) for every segment status.
/// Every segment id of a project, whatever its status (the orphan sweep
/// keeps any object the catalog knows).
pub fn ids_of_project(conn: &mut DbConnection, project_id: &str) -> DbResult<Vec<i64>> {
    Ok(segments::table
        .filter(segments::project_id.eq(project_id))
        .select(segments::id)
        .load(conn)?)
}

pub fn totals(conn: &mut DbConnection) -> DbResult<Vec<(SegmentStatus, i64, i64)>> {
    let rows: Vec<(SegmentStatus, i64)> = segments::table
        .select((segments::status, segments::size))
        .load(conn)?;
    let mut out: std::collections::BTreeMap<SegmentStatus, (i64, i64)> = Default::default();
    for (status, size) in rows {
        let e = out.entry(status).or_default();
        e.0 += 1;
        e.1 += size;
    }
    Ok(out.into_iter().map(|(s, (n, b))| (s, n, b)).collect())
}
