//! Access rules in oslo.policy's language: defaults in code (secure RBAC
//! personas), overridable rule by rule by a `policy.yaml`.
//!
//! Supported syntax, as oslo.policy: `@` (always), `!` (never),
//! `role:<name>`, `rule:<name>`, generic checks `<attribute>:%(<target
//! key>)s` or `<attribute>:<literal>` (`'quoted'`, `True`, `False`),
//! `and`, `or`, `not`, parentheses. Attributes are the caller's
//! credentials: `project_id`, `user_id`, `is_admin_project`,
//! `system_scope`. Targets carry the resource's `project_id` (and
//! `user_id`).

use std::collections::HashMap;
use std::path::Path;

pub mod caller;

pub use caller::{Caller, Denied};

use crate::auth::Credentials;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy rule {rule:?}: {why}")]
    Syntax { rule: String, why: String },
    #[error("policy file {path}:{line}: {why}")]
    File {
        path: String,
        line: usize,
        why: String,
    },
    #[error("cannot read policy file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Always,
    Never,
    Role(String),
    Rule(String),
    /// `attribute:%(target_key)s` or `attribute:literal`.
    Generic {
        attribute: String,
        value: Value,
    },
    And(Vec<Check>),
    Or(Vec<Check>),
    Not(Box<Check>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Target(String),
    Literal(String),
}

/// A default rule: name, rule, what it guards, the API operations.
pub struct RuleDefault {
    pub name: &'static str,
    pub check: &'static str,
    pub description: &'static str,
    pub operations: &'static [&'static str],
}

const ADMIN_OR_READER: &str = "rule:context_is_admin or rule:project_reader";
const ADMIN_OR_MEMBER: &str = "rule:context_is_admin or rule:project_member";

/// Every rule Ekko enforces, with its secure-RBAC default.
pub const DEFAULTS: &[RuleDefault] = &[
    RuleDefault {
        name: "context_is_admin",
        check: "role:admin",
        description: "Administrators act across projects.",
        operations: &[],
    },
    RuleDefault {
        name: "project_reader",
        check: "role:reader and project_id:%(project_id)s",
        description: "A reader of the resource's project.",
        operations: &[],
    },
    RuleDefault {
        name: "project_member",
        check: "role:member and project_id:%(project_id)s",
        description: "A member of the resource's project.",
        operations: &[],
    },
    RuleDefault {
        name: "service_role",
        check: "role:service",
        description: "Internal calls from other services.",
        operations: &[],
    },
    RuleDefault {
        name: "ekko:backup:get",
        check: ADMIN_OR_READER,
        description: "Show a backup.",
        operations: &["GET /v1/backups/{backup_id}"],
    },
    RuleDefault {
        name: "ekko:backup:get_all",
        check: ADMIN_OR_READER,
        description: "List the project's backups.",
        operations: &["GET /v1/backups"],
    },
    RuleDefault {
        name: "ekko:backup:get_all_projects",
        check: "rule:context_is_admin",
        description: "List the backups of every project (all_projects=true).",
        operations: &["GET /v1/backups?all_projects=true"],
    },
    RuleDefault {
        name: "ekko:backup:create",
        check: ADMIN_OR_MEMBER,
        description: "Back up an instance.",
        operations: &["POST /v1/backups"],
    },
    RuleDefault {
        name: "ekko:backup:update",
        check: ADMIN_OR_MEMBER,
        description: "Rename, describe or protect a backup, or replace its metadata.",
        operations: &["PUT /v1/backups/{backup_id}"],
    },
    RuleDefault {
        name: "ekko:backup:delete",
        check: ADMIN_OR_MEMBER,
        description: "Delete a backup.",
        operations: &["DELETE /v1/backups/{backup_id}"],
    },
    RuleDefault {
        name: "ekko:backup:cancel",
        check: ADMIN_OR_MEMBER,
        description: "Cancel a queued or running backup.",
        operations: &["POST /v1/backups/{backup_id}/action (cancel)"],
    },
    RuleDefault {
        name: "ekko:restore:create",
        check: "rule:context_is_admin",
        description: "Restore a backup to a file on a compute host (an operator action).",
        operations: &["POST /v1/restores (target type file)"],
    },
    RuleDefault {
        name: "ekko:restore:create_image",
        check: ADMIN_OR_MEMBER,
        description: "Restore a backup into a new Glance image in its project.",
        operations: &["POST /v1/restores (target type image)"],
    },
    RuleDefault {
        name: "ekko:restore:cancel_image",
        check: ADMIN_OR_MEMBER,
        description:
            "Cancel a queued or running restore into an image (its partial image is deleted).",
        operations: &["POST /v1/restores/{restore_id}/action (cancel, image target)"],
    },
    RuleDefault {
        name: "ekko:restore:cancel",
        check: "rule:context_is_admin",
        description: "Cancel a queued or running restore (an operator action).",
        operations: &["POST /v1/restores/{restore_id}/action (cancel)"],
    },
    RuleDefault {
        name: "ekko:restore:get",
        check: ADMIN_OR_READER,
        description: "Show a restore.",
        operations: &["GET /v1/restores/{restore_id}"],
    },
    RuleDefault {
        name: "ekko:restore:get_all",
        check: ADMIN_OR_READER,
        description: "List the project's restores.",
        operations: &["GET /v1/restores"],
    },
    RuleDefault {
        name: "ekko:restore:get_all_projects",
        check: "rule:context_is_admin",
        description: "List the restores of every project (all_projects=true).",
        operations: &["GET /v1/restores?all_projects=true"],
    },
    RuleDefault {
        name: "ekko:healthcheck:detailed",
        check: "rule:context_is_admin",
        description: "See each health check (catalog, message bus, object store) in the \
                      answer of /healthcheck, which tells anyone else only OK.",
        operations: &["GET /healthcheck", "HEAD /healthcheck"],
    },
    RuleDefault {
        name: "ekko:export:create",
        check: "rule:context_is_admin",
        description:
            "Serve a disk of a backup read-only over NBD from a host (an operator action: \
                      whoever reaches the export's address reads the disk).",
        operations: &["POST /v1/backups/{backup_id}/exports"],
    },
    RuleDefault {
        name: "ekko:export:get",
        check: "rule:context_is_admin",
        description: "Show an export (its URL reads the backup's disk).",
        operations: &["GET /v1/exports/{export_id}"],
    },
    RuleDefault {
        name: "ekko:export:get_all",
        check: "rule:context_is_admin",
        description: "List the project's exports.",
        operations: &["GET /v1/exports"],
    },
    RuleDefault {
        name: "ekko:export:get_all_projects",
        check: "rule:context_is_admin",
        description: "List the exports of every project (all_projects=true).",
        operations: &["GET /v1/exports?all_projects=true"],
    },
    RuleDefault {
        name: "ekko:export:delete",
        check: "rule:context_is_admin",
        description: "Stop an export.",
        operations: &["DELETE /v1/exports/{export_id}"],
    },
    RuleDefault {
        name: "ekko:instance:get",
        check: ADMIN_OR_READER,
        description: "Show an instance known to Ekko.",
        operations: &["GET /v1/instances/{instance_id}"],
    },
    RuleDefault {
        name: "ekko:instance:get_all",
        check: ADMIN_OR_READER,
        description: "List the project's instances known to Ekko.",
        operations: &["GET /v1/instances"],
    },
    RuleDefault {
        name: "ekko:instance:get_all_projects",
        check: "rule:context_is_admin",
        description: "List the instances of every project (all_projects=true).",
        operations: &["GET /v1/instances?all_projects=true"],
    },
    RuleDefault {
        name: "ekko:policy:get",
        check: ADMIN_OR_READER,
        description: "Show a backup policy.",
        operations: &["GET /v1/policies/{policy_id}"],
    },
    RuleDefault {
        name: "ekko:policy:get_all",
        check: ADMIN_OR_READER,
        description: "List the project's backup policies.",
        operations: &["GET /v1/policies"],
    },
    RuleDefault {
        name: "ekko:policy:create",
        check: ADMIN_OR_MEMBER,
        description: "Create a backup policy.",
        operations: &["POST /v1/policies"],
    },
    RuleDefault {
        name: "ekko:policy:update",
        check: ADMIN_OR_MEMBER,
        description: "Change a backup policy, add or remove instances.",
        operations: &[
            "PUT /v1/policies/{policy_id}",
            "POST /v1/policies/{policy_id}/instances",
            "DELETE /v1/policies/{policy_id}/instances/{instance_id}",
        ],
    },
    RuleDefault {
        name: "ekko:policy:delete",
        check: ADMIN_OR_MEMBER,
        description: "Delete a backup policy (its instances are detached).",
        operations: &["DELETE /v1/policies/{policy_id}"],
    },
    RuleDefault {
        name: "ekko:quota:get",
        check: ADMIN_OR_READER,
        description: "Show a project's quotas and usage.",
        operations: &["GET /v1/quotas/{project_id}"],
    },
    RuleDefault {
        name: "ekko:quota:update",
        check: "rule:context_is_admin",
        description: "Set a project's quotas.",
        operations: &["PUT /v1/quotas/{project_id}"],
    },
];

/// The legacy (pre-secure-RBAC) personas, used when
/// `[oslo_policy] enforce_new_defaults = false`: any role in the project.
const LEGACY: &[(&str, &str)] = &[
    ("project_reader", "project_id:%(project_id)s"),
    ("project_member", "project_id:%(project_id)s"),
];

/// The rules in force.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: HashMap<String, Check>,
}

/// What a rule is checked against: the resource's attributes.
pub type Target<'a> = &'a [(&'a str, &'a str)];

impl Policy {
    /// The defaults, overridden by the rules of `file` when it exists.
    pub fn load(file: Option<&Path>, enforce_new_defaults: bool) -> Result<Policy, PolicyError> {
        let mut rules = HashMap::new();
        for d in DEFAULTS {
            rules.insert(d.name.to_string(), parse(d.name, d.check)?);
        }
        if !enforce_new_defaults {
            for (name, check) in LEGACY {
                rules.insert(name.to_string(), parse(name, check)?);
            }
        }
        if let Some(path) = file.filter(|p| p.exists()) {
            let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
                path: path.display().to_string(),
                source,
            })?;
            for (line, name, check) in parse_policy_file(&path.display().to_string(), &text)? {
                let parsed = parse(&name, &check).map_err(|e| PolicyError::File {
                    path: path.display().to_string(),
                    line,
                    why: e.to_string(),
                })?;
                rules.insert(name, parsed);
            }
            tracing::info!(file = %path.display(), "policy overrides loaded");
        }
        Ok(Policy { rules })
    }

    /// Whether `creds` may do `action` on `target`. An unknown action is
    /// refused (and logged): a typo must not open access.
    pub fn enforce(&self, action: &str, creds: &Credentials, target: Target) -> bool {
        match self.rules.get(action) {
            Some(check) => self.eval(check, creds, target, 0),
            None => {
                tracing::error!(action, "no policy rule for this action; refused");
                false
            }
        }
    }

    fn eval(&self, check: &Check, creds: &Credentials, target: Target, depth: u32) -> bool {
        if depth > 32 {
            tracing::error!("policy rules nest too deeply (a rule cycle?); refused");
            return false;
        }
        match check {
            Check::Always => true,
            Check::Never => false,
            Check::Role(r) => creds.roles.iter().any(|x| x.eq_ignore_ascii_case(r)),
            Check::Rule(name) => self
                .rules
                .get(name)
                .is_some_and(|c| self.eval(c, creds, target, depth + 1)),
            Check::Generic { attribute, value } => {
                let expected = match value {
                    Value::Target(key) => match target.iter().find(|(k, _)| k == key) {
                        Some((_, v)) => v.to_string(),
                        None => return false,
                    },
                    Value::Literal(l) => l.clone(),
                };
                let actual = match attribute.as_str() {
                    "project_id" | "tenant_id" => creds.project_id.clone(),
                    "user_id" => Some(creds.user_id.clone()),
                    "is_admin_project" => Some(bool_str(creds.is_admin_project)),
                    "system_scope" => creds.system_scope.clone(),
                    _ => None,
                };
                actual.is_some_and(|a| a == expected)
            }
            Check::And(cs) => cs.iter().all(|c| self.eval(c, creds, target, depth + 1)),
            Check::Or(cs) => cs.iter().any(|c| self.eval(c, creds, target, depth + 1)),
            Check::Not(c) => !self.eval(c, creds, target, depth + 1),
        }
    }
}

fn bool_str(b: bool) -> String {
    if b { "True" } else { "False" }.to_string()
}

/// Parse one rule expression.
pub fn parse(name: &str, text: &str) -> Result<Check, PolicyError> {
    let err = |why: String| PolicyError::Syntax {
        rule: name.to_string(),
        why,
    };
    let tokens = tokenize(text);
    if tokens.is_empty() {
        return Ok(Check::Always); // oslo: an empty rule always passes
    }
    let mut p = Parser { tokens, at: 0 };
    let check = p.or().map_err(err)?;
    if p.at != p.tokens.len() {
        return Err(err(format!("unexpected {:?}", p.tokens[p.at])));
    }
    Ok(check)
}

fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let mut w = word;
        while let Some(rest) = w.strip_prefix('(') {
            out.push("(".into());
            w = rest;
        }
        let mut closing = 0;
        while let Some(rest) = w.strip_suffix(')') {
            // `%(project_id)s` ends with `)s`, not `)`: only strip real ones.
            closing += 1;
            w = rest;
        }
        if !w.is_empty() {
            out.push(w.to_string());
        }
        out.extend(std::iter::repeat_n(")".to_string(), closing));
    }
    out
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn or(&mut self) -> Result<Check, String> {
        let mut items = vec![self.and()?];
        while self.peek().is_some_and(|t| t.eq_ignore_ascii_case("or")) {
            self.at += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Check::Or(items)
        })
    }

    fn and(&mut self) -> Result<Check, String> {
        let mut items = vec![self.unary()?];
        while self.peek().is_some_and(|t| t.eq_ignore_ascii_case("and")) {
            self.at += 1;
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Check::And(items)
        })
    }

    fn unary(&mut self) -> Result<Check, String> {
        match self.peek() {
            Some(t) if t.eq_ignore_ascii_case("not") => {
                self.at += 1;
                Ok(Check::Not(Box::new(self.unary()?)))
            }
            Some("(") => {
                self.at += 1;
                let inner = self.or()?;
                if self.peek() != Some(")") {
                    return Err("missing ')'".into());
                }
                self.at += 1;
                Ok(inner)
            }
            Some(t) => {
                let t = t.to_string();
                self.at += 1;
                atom(&t)
            }
            None => Err("rule ends too early".into()),
        }
    }
}

fn atom(t: &str) -> Result<Check, String> {
    match t {
        "@" => return Ok(Check::Always),
        "!" => return Ok(Check::Never),
        ")" => return Err("unexpected ')'".into()),
        _ => {}
    }
    let (kind, rest) = t
        .split_once(':')
        .ok_or_else(|| format!("{t:?} is not a check (kind:match)"))?;
    match kind {
        "role" => Ok(Check::Role(rest.to_string())),
        "rule" => Ok(Check::Rule(rest.to_string())),
        "http" | "https" => Err(format!("{kind} checks are not supported")),
        attribute => {
            let value =
                if let Some(key) = rest.strip_prefix("%(").and_then(|r| r.strip_suffix(")s")) {
                    Value::Target(key.to_string())
                } else {
                    Value::Literal(rest.trim_matches(|c| c == '\'' || c == '"').to_string())
                };
            Ok(Check::Generic {
                attribute: attribute.to_string(),
                value,
            })
        }
    }
}

/// The flat `"name": "rule"` mapping of a policy.yaml (the subset of YAML
/// that oslo's sample generator writes): comments, blank lines, keys and
/// values plain or quoted. JSON objects of the same shape are read too.
fn parse_policy_file(path: &str, text: &str) -> Result<Vec<(usize, String, String)>, PolicyError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| PolicyError::File {
                path: path.to_string(),
                line: e.line(),
                why: e.to_string(),
            })?;
        return map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((0, k, s)),
                _ => Err(PolicyError::File {
                    path: path.to_string(),
                    line: 0,
                    why: format!("rule {k:?} is not a string"),
                }),
            })
            .collect();
    }
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line == "---" {
            continue;
        }
        let err = |why: &str| PolicyError::File {
            path: path.to_string(),
            line: i + 1,
            why: why.to_string(),
        };
        let (key, rest) = split_key(line).ok_or_else(|| err("expected \"name\": \"rule\""))?;
        let value = unquote(rest.trim()).ok_or_else(|| err("unterminated quoted rule"))?;
        out.push((i + 1, key, value));
    }
    Ok(out)
}

fn split_key(line: &str) -> Option<(String, &str)> {
    if let Some(q) = line.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = line[1..].find(q)? + 1;
        let rest = line[end + 1..].trim_start().strip_prefix(':')?;
        Some((line[1..end].to_string(), rest))
    } else {
        // Plain keys may contain ':' (ekko:backup:get): the separator is ": ".
        let (k, rest) = line
            .split_once(": ")
            .or_else(|| line.strip_suffix(':').map(|k| (k, "")))?;
        Some((k.trim().to_string(), rest))
    }
}

fn unquote(v: &str) -> Option<String> {
    let v = match v.find(" #") {
        Some(i) if !v.starts_with('"') && !v.starts_with('\'') => v[..i].trim(),
        _ => v,
    };
    match v.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let inner = v.strip_prefix(q)?.strip_suffix(q)?;
            Some(if q == '\'' {
                inner.replace("''", "'")
            } else {
                inner.replace("\\\"", "\"")
            })
        }
        _ => Some(v.to_string()),
    }
}

/// Written under `context_is_admin` in the sample: Ekko keeps the
/// secure-RBAC default (admin is cloud-wide, as in Nova, Cinder and
/// Freezer) and shows the narrower rule for operators who want it.
const ADMIN_SCOPE_NOTE: &str = "\
# Keystone's admin role is cloud-wide in Ekko, as in Nova, Cinder and
# Freezer (the secure-RBAC default): an admin of any project acts across
# all projects. To keep that to the admins of Keystone's admin project
# (keystone.conf [resource] admin_project_name), put this in policy.yaml:
#   \"context_is_admin\": \"role:admin and is_admin_project:True\"
# A token without is_admin_project (no admin project configured) counts as
# the admin project's, as in keystonemiddleware and oslo.context.
";

/// `etc/ekko/policy.yaml.sample`: every rule, commented out, with its
/// description and operations, as oslopolicy-sample-generator writes it.
pub fn sample() -> String {
    let mut out = String::from(
        "# Ekko policy defaults. Copy a rule to policy.yaml, uncomment and\n\
         # change it to override the default; rules not named keep it.\n\
         # Generated by `ekko-manage policy sample`.\n\n",
    );
    for d in DEFAULTS {
        out.push_str(&format!("# {}\n", d.description));
        if d.name == "context_is_admin" {
            out.push_str(ADMIN_SCOPE_NOTE);
        }
        for op in d.operations {
            out.push_str(&format!("# {op}\n"));
        }
        out.push_str(&format!("#\"{}\": \"{}\"\n\n", d.name, d.check));
    }
    out
}

#[cfg(test)]
mod tests;
