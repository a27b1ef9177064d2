//! Compute hosts that reported in (heartbeats).

pub use crate::db::hosts::Host;
use crate::Ekko;

use super::ServiceResult;

pub async fn list(ekko: &Ekko) -> ServiceResult<Vec<Host>> {
    Ok(ekko.db()?.run(crate::db::hosts::list).await?)
}
