//! Glance images Ekko created for restores and has not handed over yet: a
//! row from the image's creation until the restore completed (the image is
//! the tenant's) or the image of a failed restore was deleted. Housekeeping
//! settles what a crash or a Glance outage left.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::pending_images;
use super::{now, DbConnection, DbResult, OptionalRow};

#[derive(Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = pending_images)]
pub struct PendingImage {
    pub image_id: String,
    pub restore_id: String,
    pub project_id: String,
    /// Glance's URL (without `/v2`) as resolved when the image was created.
    pub glance_url: String,
    /// The tenant's token; only ever sent with Ekko's service token.
    pub user_token: String,
    /// What the host reported writing, once it reported the upload done.
    pub finished_bytes: Option<i64>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

// The token stays out of logs.
impl std::fmt::Debug for PendingImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingImage")
            .field("image_id", &self.image_id)
            .field("restore_id", &self.restore_id)
            .field("project_id", &self.project_id)
            .field("glance_url", &self.glance_url)
            .field("finished_bytes", &self.finished_bytes)
            .field("attempts", &self.attempts)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

impl PendingImage {
    pub fn new(
        image_id: &str,
        restore_id: &str,
        project_id: &str,
        glance_url: &str,
        user_token: &str,
    ) -> PendingImage {
        let at = now();
        PendingImage {
            image_id: image_id.into(),
            restore_id: restore_id.into(),
            project_id: project_id.into(),
            glance_url: glance_url.into(),
            user_token: user_token.into(),
            finished_bytes: None,
            attempts: 0,
            last_error: None,
            created_at: at,
            updated_at: at,
        }
    }
}

pub fn insert(conn: &mut DbConnection, p: &PendingImage) -> DbResult<()> {
    diesel::insert_into(pending_images::table)
        .values(p)
        .execute(conn)?;
    Ok(())
}

/// The pending image of a restore, if it has one.
pub fn of_restore(conn: &mut DbConnection, restore_id: &str) -> DbResult<Option<PendingImage>> {
    Ok(pending_images::table
        .filter(pending_images::restore_id.eq(restore_id))
        .select(PendingImage::as_select())
        .first(conn)
        .optional()?)
}

pub fn get(conn: &mut DbConnection, image_id: &str) -> DbResult<PendingImage> {
    pending_images::table
        .find(image_id)
        .select(PendingImage::as_select())
        .first(conn)
        .found(|| format!("pending image {image_id}"))
}

/// Pending images, least recently tried first, at most `limit` (rows that
/// keep failing go to the back and never starve the others).
pub fn list(conn: &mut DbConnection, limit: i64) -> DbResult<Vec<PendingImage>> {
    Ok(pending_images::table
        .order(pending_images::updated_at.asc())
        .limit(limit)
        .select(PendingImage::as_select())
        .load(conn)?)
}

/// Settled: the image is the tenant's, or deleted.
pub fn remove(conn: &mut DbConnection, image_id: &str) -> DbResult<()> {
    diesel::delete(pending_images::table.find(image_id)).execute(conn)?;
    Ok(())
}

/// A settling attempt failed; kept for the next pass.
pub fn attempt_failed(conn: &mut DbConnection, image_id: &str, why: &str) -> DbResult<()> {
    diesel::update(pending_images::table.find(image_id))
        .set((
            pending_images::attempts.eq(pending_images::attempts + 1),
            pending_images::last_error.eq(why),
            pending_images::updated_at.eq(now()),
        ))
        .execute(conn)?;
    Ok(())
}

/// The host reported the upload done, with `bytes` written.
pub fn mark_finished(conn: &mut DbConnection, image_id: &str, bytes: i64) -> DbResult<()> {
    diesel::update(pending_images::table.find(image_id))
        .set((
            pending_images::finished_bytes.eq(Some(bytes)),
            pending_images::updated_at.eq(now()),
        ))
        .execute(conn)?;
    Ok(())
}

/// Images a project's restores hold now (its image restores in flight,
/// and failed ones whose image is not deleted yet).
pub fn count_of_project(conn: &mut DbConnection, project_id: &str) -> DbResult<i64> {
    Ok(pending_images::table
        .filter(pending_images::project_id.eq(project_id))
        .count()
        .get_result(conn)?)
}
