//! Instances known to Ekko (as their hosts report them), with their disks,
//! last backup and protecting policy.

use crate::db::backups;
pub use crate::db::backups::Backup;
use crate::db::instances::{self};
pub use crate::db::instances::{Disk, Instance};
use crate::db::{DbConnection, DbResult};
use crate::Ekko;

use super::{find, marker_error, Caller, Page, ServiceResult};

/// An instance with what its view shows: disks, last backup, policy.
pub struct InstanceDetails {
    pub instance: Instance,
    pub disks: Vec<Disk>,
    pub last: Option<Backup>,
    pub policy: Option<String>,
}

/// Read the details of `found` (one connection for a whole page).
fn details(c: &mut DbConnection, found: Vec<Instance>) -> DbResult<Vec<InstanceDetails>> {
    found
        .into_iter()
        .map(|instance| {
            Ok(InstanceDetails {
                disks: instances::disks_of(c, &instance.id)?,
                last: backups::last_available(c, &instance.id)?,
                policy: instances::policy_of(c, &instance.id)?,
                instance,
            })
        })
        .collect()
}

pub async fn list(
    ekko: &Ekko,
    caller: &Caller<'_>,
    all_projects: bool,
    page: Page,
) -> ServiceResult<Vec<InstanceDetails>> {
    let project = caller.list_scope("instance", all_projects, None)?;
    ekko.db()?
        .run(move |c| {
            let marker = page.resolve(c, project.as_deref(), instances::get, |i| &i.project_id)?;
            let found = instances::list(
                c,
                project.as_deref(),
                page.limit,
                marker.as_ref(),
                page.ascending,
            )?;
            details(c, found)
        })
        .await
        .map_err(marker_error)
}

pub async fn show(ekko: &Ekko, caller: &Caller<'_>, id: &str) -> ServiceResult<InstanceDetails> {
    let i = find(ekko, "instance", id, instances::get).await?;
    caller.authorize("ekko:instance:get", &i.project_id, Some(("instance", id)))?;
    let mut found = ekko.db()?.run(move |c| details(c, vec![i])).await?;
    found
        .pop()
        .ok_or_else(|| anyhow::anyhow!("instance {id}: details missing").into())
}
