//! A caller as the use cases see it: credentials checked against the
//! policy. A refusal on another project's resource reads as "not found"
//! (never "forbidden"), so a resource's existence does not leak.

use super::{Policy, Target};
use crate::auth::Credentials;

/// Why a caller may not do what it asks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("policy does not allow {0} to be performed")]
    Forbidden(String),
    #[error("{what} {id} could not be found")]
    NotFound { what: &'static str, id: String },
    #[error("this API needs a project-scoped token")]
    ProjectScopeRequired,
}

/// Who asks, and the rules their requests are held to.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub creds: &'a Credentials,
    policy: &'a Policy,
}

impl<'a> Caller<'a> {
    pub fn new(creds: &'a Credentials, policy: &'a Policy) -> Caller<'a> {
        Caller { creds, policy }
    }

    pub fn user_id(&self) -> &str {
        &self.creds.user_id
    }

    /// The caller's project; project-scoped tokens only.
    pub fn project_id(&self) -> Result<&'a str, Denied> {
        self.creds
            .project_id
            .as_deref()
            .ok_or(Denied::ProjectScopeRequired)
    }

    /// Check `action` on a resource of `project_id`; with `not_found`
    /// (`what`, `id`), a refusal on another project's resource is
    /// [`Denied::NotFound`].
    pub fn authorize(
        &self,
        action: &str,
        project_id: &str,
        not_found: Option<(&'static str, &str)>,
    ) -> Result<(), Denied> {
        self.authorize_owned(action, project_id, None, not_found)
    }

    /// [`Self::authorize`] for a resource with an owner: rules may use
    /// `user_id:%(user_id)s` (the resource's owner, not the caller).
    pub fn authorize_owned(
        &self,
        action: &str,
        project_id: &str,
        owner: Option<&str>,
        not_found: Option<(&'static str, &str)>,
    ) -> Result<(), Denied> {
        let mut target: Vec<(&str, &str)> = vec![("project_id", project_id)];
        if let Some(owner) = owner {
            target.push(("user_id", owner));
        }
        if self.policy.enforce(action, self.creds, &target) {
            return Ok(());
        }
        match not_found {
            Some((what, id)) if self.creds.project_id.as_deref() != Some(project_id) => {
                Err(Denied::NotFound {
                    what,
                    id: id.to_string(),
                })
            }
            _ => Err(Denied::Forbidden(action.to_string())),
        }
    }

    /// Whether `action` is allowed at all (e.g. listing every project).
    pub fn allowed(&self, action: &str) -> bool {
        let project = self.creds.project_id.clone().unwrap_or_default();
        let target: Target = &[("project_id", &project)];
        self.policy.enforce(action, self.creds, target)
    }

    /// Whose resources a list shows, for resource `kind` (`backup`, …): the
    /// caller's project (`ekko:<kind>:get_all`), or, when asked for with
    /// `all_projects` or `project_id`, every project or that one
    /// (`ekko:<kind>:get_all_projects`, admins by default).
    pub fn list_scope(
        &self,
        kind: &str,
        all_projects: bool,
        project_id: Option<String>,
    ) -> Result<Option<String>, Denied> {
        if all_projects || project_id.is_some() {
            let action = format!("ekko:{kind}:get_all_projects");
            if !self.allowed(&action) {
                return Err(Denied::Forbidden(action));
            }
            return Ok(project_id);
        }
        let p = self.project_id()?;
        self.authorize(&format!("ekko:{kind}:get_all"), p, None)?;
        Ok(Some(p.to_string()))
    }
}
