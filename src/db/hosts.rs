//! Compute hosts running ekko-backup, as seen through their heartbeats.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::hosts;
use super::{now, DbConnection, DbResult};

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = hosts)]
pub struct Host {
    pub name: String,
    pub version: String,
    pub capacity: i32,
    pub created_at: NaiveDateTime,
    pub heartbeat_at: NaiveDateTime,
}

/// Record a heartbeat, registering the host on its first one.
pub fn heartbeat(
    conn: &mut DbConnection,
    name: &str,
    version: &str,
    capacity: i32,
) -> DbResult<()> {
    let at = now();
    let updated = diesel::update(hosts::table.find(name))
        .set((
            hosts::heartbeat_at.eq(at),
            hosts::version.eq(version),
            hosts::capacity.eq(capacity),
        ))
        .execute(conn)?;
    if updated == 0 {
        let row = Host {
            name: name.to_string(),
            version: version.to_string(),
            capacity,
            created_at: at,
            heartbeat_at: at,
        };
        match diesel::insert_into(hosts::table).values(&row).execute(conn) {
            Ok(_) => {}
            // Another process registered it first: its row is as good.
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether a host named `name` has ever reported.
pub fn exists(conn: &mut DbConnection, name: &str) -> DbResult<bool> {
    Ok(diesel::select(diesel::dsl::exists(hosts::table.find(name))).get_result(conn)?)
}

pub fn list(conn: &mut DbConnection) -> DbResult<Vec<Host>> {
    Ok(hosts::table
        .order(hosts::name.asc())
        .select(Host::as_select())
        .load(conn)?)
}

/// Hosts whose last heartbeat is newer than `since`.
pub fn alive_since(conn: &mut DbConnection, since: NaiveDateTime) -> DbResult<Vec<Host>> {
    Ok(hosts::table
        .filter(hosts::heartbeat_at.ge(since))
        .order(hosts::name.asc())
        .select(Host::as_select())
        .load(conn)?)
}
