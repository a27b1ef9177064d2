//! Leases: work that one process at a time does across every controller
//! (a replication pass per second store). Several ekko-retention processes
//! may run; each pass would be safe twice over, but a second copy off site
//! is paid for in bandwidth, so one pass copies and the others wait.

use chrono::Duration;
use diesel::prelude::*;

use super::schema::leases;
use super::{now, DbConnection, DbResult};

/// Take or renew lease `name` for `holder` until `ttl` from now: true if
/// `holder` has it (it was free, had run out, or was already its own).
pub fn take(conn: &mut DbConnection, name: &str, holder: &str, ttl: Duration) -> DbResult<bool> {
    let until = now() + ttl;
    let renewed = diesel::update(
        leases::table
            .find(name)
            .filter(leases::holder.eq(holder).or(leases::expires_at.lt(now()))),
    )
    .set((leases::holder.eq(holder), leases::expires_at.eq(until)))
    .execute(conn)?;
    if renewed == 1 {
        return Ok(true);
    }
    let inserted = diesel::insert_into(leases::table)
        .values((
            leases::name.eq(name),
            leases::holder.eq(holder),
            leases::expires_at.eq(until),
        ))
        .execute(conn);
    // Not inserted: another holder has it (and it has not run out).
    super::inserted_once(inserted)
}

/// Extend `holder`'s lease `name` by `ttl` from now: false if it has lost
/// it (never creates one: a renewal that arrives after the release must not
/// bring the lease back for a holder that is gone).
pub fn renew(conn: &mut DbConnection, name: &str, holder: &str, ttl: Duration) -> DbResult<bool> {
    let n = diesel::update(leases::table.find(name).filter(leases::holder.eq(holder)))
        .set(leases::expires_at.eq(now() + ttl))
        .execute(conn)?;
    Ok(n == 1)
}

/// Give lease `name` up, if `holder` still has it.
pub fn release(conn: &mut DbConnection, name: &str, holder: &str) -> DbResult<()> {
    diesel::delete(leases::table.find(name).filter(leases::holder.eq(holder))).execute(conn)?;
    Ok(())
}

/// Who has lease `name` now, if anyone.
pub fn holder(conn: &mut DbConnection, name: &str) -> DbResult<Option<String>> {
    Ok(leases::table
        .find(name)
        .filter(leases::expires_at.ge(now()))
        .select(leases::holder)
        .first(conn)
        .optional()?)
}
