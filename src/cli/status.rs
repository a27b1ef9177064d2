//! `ekko-status upgrade check`, as oslo.upgradecheck's `<service>-status`:
//! each check's result in a table, and the exit code of the worst one
//! (0 success, 1 warning, 2 failure; 255 when the checks could not run).
//! Run it on a controller after installing a new release, before
//! restarting the services.

use clap::{Parser, Subcommand};

use crate::config::{ConfigArgs, EkkoConfig};
use crate::db::Db;
use crate::keyring::Keyring;

#[derive(Parser)]
#[command(
    name = "ekko-status",
    version,
    about = "Ekko's status checks for operators (oslo.upgradecheck)"
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks before and after an upgrade.
    Upgrade {
        #[command(subcommand)]
        action: UpgradeAction,
    },
}

#[derive(Subcommand)]
enum UpgradeAction {
    /// Run every check: exit 0 when all pass, 1 with a warning, 2 with a
    /// failure, 255 when they could not run.
    Check,
}

/// One check's verdict, worst last (its exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Success = 0,
    Warning = 1,
    Failure = 2,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Verdict::Success => "Success",
            Verdict::Warning => "Warning",
            Verdict::Failure => "Failure",
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub check: &'static str,
    pub verdict: Verdict,
    pub details: Option<String>,
}

fn outcome(check: &'static str, verdict: Verdict, details: Option<String>) -> Outcome {
    Outcome {
        check,
        verdict,
        details,
    }
}

/// Parse the command line, run the checks, print them, and exit with the
/// worst verdict's code.
pub fn main() -> ! {
    let cli = Cli::parse();
    let Command::Upgrade {
        action: UpgradeAction::Check,
    } = cli.command;
    let code = match tokio::runtime::Runtime::new() {
        Ok(rt) => {
            let outcomes = rt.block_on(upgrade_check(&cli.config));
            print!("{}", table(&outcomes));
            outcomes
                .iter()
                .map(|o| o.verdict)
                .max()
                .unwrap_or(Verdict::Success) as i32
        }
        Err(e) => {
            eprintln!("ekko-status: cannot start: {e}");
            255
        }
    };
    std::process::exit(code)
}

/// Every upgrade check, in order; a check that needs what an earlier one
/// found broken says so instead of running.
pub async fn upgrade_check(args: &ConfigArgs) -> Vec<Outcome> {
    super::install_crypto_provider();
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            return vec![
                outcome("Configuration", Verdict::Failure, Some(e.to_string())),
                outcome(
                    "Database schema",
                    Verdict::Failure,
                    Some("not checked: the configuration does not load".into()),
                ),
            ]
        }
    };
    let mut out = vec![configuration(&config)];
    // A check answers now: one connection attempt, and a SQLite catalog
    // that does not exist is reported, not created.
    let mut options = config.database.clone();
    options.max_retries = 0;
    if let Ok(url) = crate::config::urls::DatabaseUrl::parse(&options.connection) {
        if url.backend == crate::config::urls::Backend::Sqlite
            && !std::path::Path::new(&url.target).exists()
        {
            out.push(outcome(
                "Database schema",
                Verdict::Failure,
                Some(format!(
                    "no catalog at {}: run `ekko init` or `ekko-manage db sync`",
                    url.target
                )),
            ));
            return out;
        }
    }
    let db = match Db::open(&options) {
        Ok(db) => db,
        Err(e) => {
            out.push(outcome(
                "Database schema",
                Verdict::Failure,
                Some(format!("cannot open the catalog: {e}")),
            ));
            return out;
        }
    };
    let schema = schema(&db);
    let current = schema.verdict == Verdict::Success;
    out.push(schema);
    out.push(keys(&config, &db).await);
    if current {
        out.push(catalog_rebuild(&db).await);
        out.push(host_versions(&db).await);
    }
    out
}

/// A catalog rebuild that started and did not finish: nothing deletes
/// objects until it is redone.
async fn catalog_rebuild(db: &Db) -> Outcome {
    const CHECK: &str = "Catalog rebuild";
    match db.run(crate::db::catalog_rebuilds::unfinished).await {
        Ok(None) => outcome(CHECK, Verdict::Success, None),
        Ok(Some(r)) => outcome(
            CHECK,
            Verdict::Failure,
            Some(crate::db::catalog_rebuilds::interrupted(&r)),
        ),
        Err(e) => outcome(CHECK, Verdict::Failure, Some(e.to_string())),
    }
}

fn configuration(config: &EkkoConfig) -> Outcome {
    if config.ignored.is_empty() {
        return outcome("Configuration", Verdict::Success, None);
    }
    let mut lines: Vec<String> = config.ignored.iter().take(10).cloned().collect();
    if config.ignored.len() > 10 {
        lines.push(format!("... and {} more", config.ignored.len() - 10));
    }
    lines.push("(`ekko-manage config check --strict` lists them all)".into());
    outcome("Configuration", Verdict::Warning, Some(lines.join("\n")))
}

fn schema(db: &Db) -> Outcome {
    match db.pending_migrations() {
        Ok(pending) if pending.is_empty() => outcome("Database schema", Verdict::Success, None),
        Ok(pending) => outcome(
            "Database schema",
            Verdict::Failure,
            Some(format!(
                "{} migration(s) not applied ({}): run `ekko-manage db sync`",
                pending.len(),
                pending.join(", ")
            )),
        ),
        Err(e) => outcome(
            "Database schema",
            Verdict::Failure,
            Some(format!("cannot read the catalog's schema version: {e}")),
        ),
    }
}

/// The key files load, the master key opens the catalog's project keys,
/// a public-key controller has what it needs, the policy file parses, the
/// export TLS files load.
async fn keys(config: &EkkoConfig, db: &Db) -> Outcome {
    const CHECK: &str = "Keys and key files";
    let mut problems = Vec::new();
    match crate::store::open(config) {
        Err(e) => problems.push(format!("object store: {e}")),
        Ok(store) => match Keyring::load(config, Some(db.clone()), store) {
            Err(e) => problems.push(e.to_string()),
            Ok(keyring) => {
                if let Err(e) = keyring.check_controller() {
                    problems.push(e.to_string());
                }
                if let Err(e) = keyring.check_catalog().await {
                    problems.push(e.to_string());
                }
            }
        },
    }
    let policy = config.policy_file_path();
    if let Err(e) =
        crate::policy::Policy::load(policy.as_deref(), config.oslo_policy.enforce_new_defaults)
    {
        problems.push(format!("policy: {e}"));
    }
    if let Err(e) = config.export.server_tls() {
        problems.push(format!("[export] TLS: {e}"));
    }
    match problems.is_empty() {
        true => outcome(CHECK, Verdict::Success, None),
        false => outcome(CHECK, Verdict::Failure, Some(problems.join("\n"))),
    }
}

/// Compute hosts whose last heartbeat names an older release than this
/// one: they speak an older message version until upgraded.
async fn host_versions(db: &Db) -> Outcome {
    const CHECK: &str = "Compute host versions";
    let hosts = match db.run(crate::db::hosts::list).await {
        Ok(h) => h,
        Err(e) => return outcome(CHECK, Verdict::Failure, Some(e.to_string())),
    };
    let older: Vec<String> = hosts
        .iter()
        .filter(|h| older_release(&h.version, crate::VERSION))
        // Names and versions are the hosts' own words: escaped.
        .map(|h| {
            format!(
                "{} runs {}",
                h.name.escape_debug(),
                h.version.escape_debug()
            )
        })
        .collect();
    if older.is_empty() {
        return outcome(CHECK, Verdict::Success, None);
    }
    outcome(
        CHECK,
        Verdict::Warning,
        Some(format!(
            "{} of {} host(s) run a release older than {} (upgrade them after the controllers): {}",
            older.len(),
            hosts.len(),
            crate::VERSION,
            older.join(", ")
        )),
    )
}

/// Whether dotted release `a` is older than `b` (numbers compared as
/// numbers; a suffix such as `-rc1` is ignored; unreadable counts older).
pub fn older_release(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Option<Vec<u64>> {
        v.split(['-', '+'])
            .next()?
            .split('.')
            .map(|p| p.parse().ok())
            .collect()
    };
    match (parts(a), parts(b)) {
        (Some(a), Some(b)) => a < b,
        (None, _) => true,
        (_, None) => false,
    }
}

/// oslo.upgradecheck's table.
fn table(outcomes: &[Outcome]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for o in outcomes {
        let mut row = vec![
            format!("Check: {}", o.check),
            format!("Result: {}", o.verdict.name()),
        ];
        let details = o.details.as_deref().unwrap_or("None");
        for (i, line) in details.lines().enumerate() {
            row.push(match i {
                0 => format!("Details: {line}"),
                _ => format!("  {line}"),
            });
        }
        rows.push(row);
    }
    let title = "Upgrade Check Results";
    let width = rows
        .iter()
        .flatten()
        .map(|l| l.chars().count())
        .chain([title.len()])
        .max()
        .unwrap_or(0);
    let rule = format!("+{}+\n", "-".repeat(width + 2));
    let line = |text: &str| format!("| {text}{} |\n", " ".repeat(width - text.chars().count()));
    let mut out = rule.clone() + &line(title) + &rule;
    for row in rows {
        for l in row {
            out += &line(&l);
        }
        out += &rule;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_compare_as_numbers() {
        assert!(older_release("0.9.0", "0.10.0"));
        assert!(older_release("0.1.0", "0.1.1"));
        assert!(!older_release("0.1.0", "0.1.0"));
        assert!(!older_release("1.0.0-rc1", "0.9.9"));
        assert!(older_release("unknown", "0.1.0"));
    }

    #[test]
    fn the_table_is_oslo_upgradecheck_shaped() {
        let t = table(&[
            outcome("Database schema", Verdict::Success, None),
            outcome("Configuration", Verdict::Warning, Some("a\nb".into())),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("| Upgrade Check Results"));
        assert!(t.contains("| Check: Database schema"));
        assert!(t.contains("| Result: Warning"));
        assert!(t.contains("| Details: a"));
        assert!(t.contains("|   b"));
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()));
    }
}
