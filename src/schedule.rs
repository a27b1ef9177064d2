//! Backup schedules: standard 5-field cron expressions (minute, hour,
//! day of month, month, day of week) as tenants write them in crontab,
//! with `*`, `a`, `a-b`, `*/n`, `a-b/n`, lists, and month and weekday
//! names. Time zones are IANA names (`Europe/Paris`); the scheduler
//! (ekko-retention / ekko-api) evaluates them.

use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid cron schedule {expr:?}: {why}")]
pub struct ScheduleError {
    pub expr: String,
    pub why: String,
}

/// A parsed cron schedule: the allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    pub minutes: BTreeSet<u32>,
    pub hours: BTreeSet<u32>,
    pub days_of_month: BTreeSet<u32>,
    pub months: BTreeSet<u32>,
    /// 0 = Sunday … 6 = Saturday (7 is read as Sunday).
    pub days_of_week: BTreeSet<u32>,
    /// Cron's rule: when both day fields are restricted, either may match.
    dom_restricted: bool,
    dow_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl CronSchedule {
    pub fn parse(expr: &str) -> Result<CronSchedule, ScheduleError> {
        let err = |why: String| ScheduleError {
            expr: expr.to_string(),
            why,
        };
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            )));
        }
        let minutes = field(fields[0], "minute", 0, 59, &[]).map_err(err)?;
        let hours = field(fields[1], "hour", 0, 23, &[]).map_err(err)?;
        let days_of_month = field(fields[2], "day of month", 1, 31, &[]).map_err(err)?;
        let months = field(fields[3], "month", 1, 12, &MONTHS).map_err(err)?;
        let mut days_of_week = field(fields[4], "day of week", 0, 7, &DAYS).map_err(err)?;
        if days_of_week.remove(&7) {
            days_of_week.insert(0);
        }
        Ok(CronSchedule {
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            // As Vixie cron: a field starting with `*` (even `*/2`) does
            // not restrict the day.
            dom_restricted: !fields[2].starts_with('*'),
            dow_restricted: !fields[4].starts_with('*'),
        })
    }

    /// Whether the schedule fires at this local minute.
    pub fn matches(&self, minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> bool {
        let dom = self.days_of_month.contains(&day);
        let dow = self.days_of_week.contains(&weekday);
        let day_ok = match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            _ => dom && dow,
        };
        self.minutes.contains(&minute)
            && self.hours.contains(&hour)
            && self.months.contains(&month)
            && day_ok
    }
}

fn field(
    text: &str,
    what: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
) -> Result<BTreeSet<u32>, String> {
    let value = |v: &str| -> Result<u32, String> {
        let lower = v.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + if lo == 1 { 1 } else { 0 });
        }
        let n: u32 = v
            .parse()
            .map_err(|_| format!("{what} {v:?} is not a number"))?;
        if n < lo || n > hi {
            return Err(format!("{what} {n} is outside {lo}-{hi}"));
        }
        Ok(n)
    };
    let mut out = BTreeSet::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{what} step {s:?} must be a positive number"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (start, end) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end, every 15.
            (v, if step > 1 { hi } else { v })
        };
        if start > end {
            return Err(format!("{what} range {range:?} runs backwards"));
        }
        out.extend((start..=end).step_by(step as usize));
    }
    Ok(out)
}

/// Whether `tz` names a time zone this host knows (IANA database).
pub fn known_time_zone(tz: &str) -> bool {
    if tz == "UTC" || tz == "Etc/UTC" {
        return true;
    }
    let safe = !tz.is_empty()
        && !tz.contains("..")
        && !tz.starts_with('/')
        && tz
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
    safe && std::path::Path::new("/usr/share/zoneinfo")
        .join(tz)
        .is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_fields() {
        let c = CronSchedule::parse("*/15 2 * * mon-fri").unwrap();
        assert_eq!(
            c.minutes.iter().copied().collect::<Vec<_>>(),
            vec![0, 15, 30, 45]
        );
        assert_eq!(c.hours.len(), 1);
        assert_eq!(
            c.days_of_week.iter().copied().collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert!(c.matches(30, 2, 17, 3, 2));
        assert!(!c.matches(30, 2, 17, 3, 0), "not on Sunday");
        let c = CronSchedule::parse("0 0 1,15 jan-mar 0").unwrap();
        assert!(
            c.matches(0, 0, 15, 2, 3),
            "day 15 matches (either day field)"
        );
        assert!(c.matches(0, 0, 9, 2, 0), "a Sunday matches too");
        assert!(!c.matches(0, 0, 9, 4, 0), "not in April");
        let c = CronSchedule::parse("5/20 * * * 7").unwrap();
        assert_eq!(
            c.minutes.iter().copied().collect::<Vec<_>>(),
            vec![5, 25, 45]
        );
        assert!(c.days_of_week.contains(&0), "7 is Sunday");
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "* * * foo *",
            "@daily",
        ] {
            assert!(CronSchedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_zones() {
        assert!(known_time_zone("UTC"));
        assert!(!known_time_zone("../../etc/passwd"));
        assert!(!known_time_zone("Mars/Olympus_Mons"));
    }
}
