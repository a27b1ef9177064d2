//! Which backups a policy keeps: keep-last, keep-hourly, -daily, -weekly,
//! -monthly, -yearly, as restic and Proxmox Backup Server define them.
//! Backups are walked newest first; each rule keeps the newest backup of
//! each of its first N periods (calendar hours, days, ISO weeks, months,
//! years in the policy's time zone) that hold one. A backup is kept if any
//! rule keeps it, if it is protected, or if it is younger than the minimum
//! age; a policy without any keep rule keeps everything.

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use serde::Serialize;

/// The rules of one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub min_age_seconds: i64,
}

impl Rules {
    pub fn of(p: &crate::db::policies::Policy) -> Rules {
        let n = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok());
        Rules {
            keep_last: n(p.keep_last),
            keep_hourly: n(p.keep_hourly),
            keep_daily: n(p.keep_daily),
            keep_weekly: n(p.keep_weekly),
            keep_monthly: n(p.keep_monthly),
            keep_yearly: n(p.keep_yearly),
            min_age_seconds: p.min_age_seconds,
        }
    }

    fn any(&self) -> bool {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// A backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub protected: bool,
}

/// The verdict on one backup, with every reason that keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub created_at: String,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// The calendar period of `local` for a rule.
fn period(rule: &str, local: NaiveDateTime) -> (i32, u32, u32, u32) {
    match rule {
        "hourly" => (local.year(), local.ordinal(), local.hour(), 0),
        "daily" => (local.year(), local.ordinal(), 0, 0),
        "weekly" => {
            let w = local.iso_week();
            (w.year(), w.week(), 0, 0)
        }
        "monthly" => (local.year(), local.month(), 0, 0),
        _ => (local.year(), 0, 0, 0),
    }
}

/// Decide, for backups of one instance (any order), which to keep.
/// `local` converts an instant to the policy's local time.
pub fn decide(
    rules: &Rules,
    backups: &[Candidate],
    now: DateTime<Utc>,
    local: impl Fn(DateTime<Utc>) -> NaiveDateTime,
) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    sorted.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); sorted.len()];
    if !rules.any() {
        for r in reasons.iter_mut() {
            r.push("the policy has no keep rule".into());
        }
    }
    if let Some(n) = rules.keep_last {
        for (i, r) in reasons.iter_mut().enumerate().take(n as usize) {
            r.push(format!("keep-last {n} (#{})", i + 1));
        }
    }
    for (rule, limit) in [
        ("hourly", rules.keep_hourly),
        ("daily", rules.keep_daily),
        ("weekly", rules.keep_weekly),
        ("monthly", rules.keep_monthly),
        ("yearly", rules.keep_yearly),
    ] {
        let Some(n) = limit else { continue };
        let mut last = None;
        let mut kept = 0;
        for (i, b) in sorted.iter().enumerate() {
            if kept >= n {
                break;
            }
            let p = period(rule, local(b.created_at));
            if last != Some(p) {
                last = Some(p);
                kept += 1;
                reasons[i].push(format!("keep-{rule} {n} (#{kept})"));
            }
        }
    }
    for (i, b) in sorted.iter().enumerate() {
        if b.protected {
            reasons[i].push("protected".into());
        }
        let age = (now - b.created_at).num_seconds();
        if age < rules.min_age_seconds {
            reasons[i].push(format!(
                "younger than the minimum age ({age} s < {} s)",
                rules.min_age_seconds
            ));
        }
    }
    sorted
        .iter()
        .zip(reasons)
        .map(|(b, reasons)| Decision {
            id: b.id.clone(),
            created_at: b.created_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            keep: !reasons.is_empty(),
            reasons: if reasons.is_empty() {
                vec!["no rule keeps it".into()]
            } else {
                reasons
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn backups(times: &[&str]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                id: format!("b{i}"),
                created_at: at(t),
                protected: false,
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        let mut k: Vec<String> = d.iter().filter(|d| d.keep).map(|d| d.id.clone()).collect();
        k.sort();
        k
    }

    const NOW: &str = "2026-11-26T12:00:00Z";

    #[test]
    fn no_rule_keeps_everything_and_last_keeps_newest() {
        let b = backups(&[
            "2026-11-20T00:00:00Z",
            "2026-11-21T00:00:00Z",
            "2026-11-22T00:00:00Z",
        ]);
        let d = decide(&Rules::default(), &b, at(NOW), |t| t.naive_utc());
        assert_eq!(kept(&d), vec!["b0", "b1", "b2"]);
        let r = Rules {
            keep_last: Some(2),
            ..Rules::default()
        };
        let d = decide(&r, &b, at(NOW), |t| t.naive_utc());
        assert_eq!(kept(&d), vec!["b1", "b2"]);
        let dropped = d.iter().find(|d| d.id == "b0").unwrap();
        assert_eq!(dropped.reasons, vec!["no rule keeps it"]);
    }

    #[test]
    fn calendar_periods_keep_the_newest_of_each() {
        // Two a day for four days.
        let b = backups(&[
            "2026-11-20T01:00:00Z",
            "2026-11-20T13:00:00Z",
            "2026-11-21T01:00:00Z",
            "2026-11-21T13:00:00Z",
            "2026-11-22T01:00:00Z",
            "2026-11-22T13:00:00Z",
            "2026-11-23T01:00:00Z",
            "2026-11-23T13:00:00Z",
        ]);
        let r = Rules {
            keep_daily: Some(3),
            ..Rules::default()
        };
        let d = decide(&r, &b, at(NOW), |t| t.naive_utc());
        assert_eq!(kept(&d), vec!["b3", "b5", "b7"]);
        // ISO weeks: 2026-11-22 is a Sunday (week 47), 11-23 a Monday (48).
        let r = Rules {
            keep_weekly: Some(2),
            ..Rules::default()
        };
        let d = decide(&r, &b, at(NOW), |t| t.naive_utc());
        assert_eq!(kept(&d), vec!["b5", "b7"]);
        // In Honolulu (UTC-10), 01:00 UTC is still the previous day: the
        // newest of each local day changes.
        let honolulu = crate::schedule::Zone::new("Pacific/Honolulu").unwrap();
        let r = Rules {
            keep_daily: Some(2),
            ..Rules::default()
        };
        let d = decide(&r, &b, at(NOW), |t| honolulu.local_time(t).unwrap());
        assert_eq!(kept(&d), vec!["b6", "b7"]);
    }

    #[test]
    fn protection_and_minimum_age_override_the_rules() {
        let mut b = backups(&[
            "2026-01-01T00:00:00Z",
            "2026-06-01T00:00:00Z",
            "2026-11-26T11:00:00Z",
        ]);
        b[0].protected = true;
        let r = Rules {
            keep_last: Some(1),
            min_age_seconds: 7200,
            ..Rules::default()
        };
        let d = decide(&r, &b, at(NOW), |t| t.naive_utc());
        assert_eq!(kept(&d), vec!["b0", "b2"]);
        let young = d.iter().find(|d| d.id == "b2").unwrap();
        assert_eq!(young.reasons.len(), 2, "{:?}", young.reasons);
        let r = Rules {
            keep_monthly: Some(12),
            keep_yearly: Some(5),
            ..Rules::default()
        };
        let d = decide(&r, &b, at(NOW), |t| t.naive_utc());
        assert_eq!(kept(&d), vec!["b0", "b1", "b2"]);
    }
}
