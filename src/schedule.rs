//! Backup schedules: standard 5-field cron expressions (minute, hour,
//! day of month, month, day of week) as tenants write them in crontab,
//! with `*`, `a`, `a-b`, `*/n`, `a-b/n`, lists, and month and weekday
//! names. Time zones are IANA names (`Europe/Paris`); the scheduler
//! (ekko-retention / ekko-api) evaluates them.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};

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

/// An IANA time zone from the system's zoneinfo.
pub struct Zone(tz::TimeZone);

impl Zone {
    pub fn new(name: &str) -> Result<Zone, String> {
        if !known_time_zone(name) {
            return Err(format!("unknown time zone {name:?}"));
        }
        tz::TimeZone::from_posix_tz(name)
            .map(Zone)
            .map_err(|e| format!("time zone {name:?}: {e}"))
    }

    /// `at` as local time in this zone.
    pub fn local_time(&self, at: DateTime<Utc>) -> Option<NaiveDateTime> {
        let offset = self
            .0
            .find_local_time_type(at.timestamp())
            .ok()?
            .ut_offset();
        Some(at.naive_utc() + chrono::Duration::seconds(i64::from(offset)))
    }
}

/// A cron schedule in a time zone: when it fires, as UTC instants.
pub struct Schedule {
    cron: CronSchedule,
    zone: Zone,
}

/// How far ahead a firing is looked for (a schedule like `0 0 29 2 1`
/// can wait years; past this it is treated as never firing).
const LOOKAHEAD_DAYS: i64 = 4 * 366;

impl Schedule {
    pub fn new(expr: &str, time_zone: &str) -> Result<Schedule, ScheduleError> {
        let cron = CronSchedule::parse(expr)?;
        let err = |why: String| ScheduleError {
            expr: expr.to_string(),
            why,
        };
        let zone = Zone::new(time_zone).map_err(err)?;
        Ok(Schedule { cron, zone })
    }

    /// The first minute strictly after `after` at which the schedule fires
    /// (in its time zone's local time), or `None` within the look-ahead.
    /// Local times skipped by a DST change never fire.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.timestamp().div_euclid(60) * 60 + 60;
        let mut at = DateTime::<Utc>::from_timestamp(start, 0)?;
        let end = at + chrono::Duration::days(LOOKAHEAD_DAYS);
        while at < end {
            let l = self.zone.local_time(at)?;
            let c = &self.cron;
            let day_ok = c.matches(
                *c.minutes.first()?,
                *c.hours.first()?,
                l.day(),
                l.month(),
                l.weekday().num_days_from_sunday(),
            );
            // Skip whole local days and hours that cannot match.
            if !day_ok {
                at += chrono::Duration::minutes(i64::from(24 * 60 - l.hour() * 60 - l.minute()));
                continue;
            }
            if !c.hours.contains(&l.hour()) {
                at += chrono::Duration::minutes(i64::from(60 - l.minute()));
                continue;
            }
            if c.minutes.contains(&l.minute()) {
                return Some(at);
            }
            at += chrono::Duration::minutes(1);
        }
        None
    }
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

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_firing_in_a_time_zone() {
        let s = Schedule::new("30 2 * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-11-26T12:00:00Z")),
            Some(utc("2026-11-27T02:30:00Z"))
        );
        // Strictly after: a firing instant itself moves on to the next day.
        assert_eq!(
            s.next_after(utc("2026-11-27T02:30:00Z")),
            Some(utc("2026-11-28T02:30:00Z"))
        );
        // Paris is UTC+1 in winter, UTC+2 in summer.
        let p = Schedule::new("0 3 * * *", "Europe/Paris").unwrap();
        assert_eq!(
            p.next_after(utc("2026-11-26T12:00:00Z")),
            Some(utc("2026-11-27T02:00:00Z"))
        );
        assert_eq!(
            p.next_after(utc("2026-07-01T12:00:00Z")),
            Some(utc("2026-07-02T01:00:00Z"))
        );
        // 02:30 does not exist in Paris on 2026-03-29 (clocks jump 2→3).
        let gap = Schedule::new("30 2 * * *", "Europe/Paris").unwrap();
        assert_eq!(
            gap.next_after(utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-30T00:30:00Z"))
        );
        let every = Schedule::new("*/15 * * * mon", "UTC").unwrap();
        assert_eq!(
            every.next_after(utc("2026-11-26T12:07:00Z")),
            Some(utc("2026-11-30T00:00:00Z")),
            "next Monday"
        );
        let leap = Schedule::new("0 0 29 2 *", "UTC").unwrap();
        assert_eq!(
            leap.next_after(utc("2026-11-26T00:00:00Z")),
            Some(utc("2028-02-29T00:00:00Z"))
        );
        assert!(Schedule::new("* * * * *", "Mars/Base").is_err());
    }

    #[test]
    fn time_zones() {
        assert!(known_time_zone("UTC"));
        assert!(!known_time_zone("../../etc/passwd"));
        assert!(!known_time_zone("Mars/Olympus_Mons"));
    }
}
