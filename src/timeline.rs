//! A backup timeline per instance as a terminal chart: one row per backup,
//! oldest first, a bar for the bytes it added (`█`, stored after
//! compression) against the rest of the disk, unchanged since earlier
//! backups or empty (`░`),
//! on one scale, so growth and unusual backups stand out at a glance.

use std::fmt::Write;

/// One backup on the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineRow {
    pub created_at: String,
    pub kind: String,
    /// Bytes of the disks at the backup.
    pub size: u64,
    /// Bytes read that no earlier backup held.
    pub new_bytes: u64,
    /// Bytes stored for them (after compression).
    pub stored_bytes: u64,
}

fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Render `rows` (oldest first) with bars `width` characters wide.
pub fn render(rows: &[TimelineRow], width: usize) -> String {
    let width = width.max(10);
    let max = rows.iter().map(|r| r.size).max().unwrap_or(0).max(1);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<11} {:>10} {:>10}  █ new  ░ unchanged or empty (of {})",
        "created",
        "kind",
        "new",
        "stored",
        human(max)
    );
    for r in rows {
        let cells = |b: u64| ((b as f64 / max as f64) * width as f64).round() as usize;
        // A backup that added anything shows at least one cell of it.
        let new = cells(r.new_bytes).max(usize::from(r.new_bytes > 0));
        let reused = cells(r.size.saturating_sub(r.new_bytes)).min(width - new.min(width));
        let _ = writeln!(
            out,
            "{:<20} {:<11} {:>10} {:>10}  {}{}",
            r.created_at,
            r.kind,
            human(r.new_bytes),
            human(r.stored_bytes),
            "█".repeat(new.min(width)),
            "░".repeat(reused)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_share_one_scale() {
        let rows = vec![
            TimelineRow {
                created_at: "2026-11-24T02:00:00Z".into(),
                kind: "full".into(),
                size: 100 << 20,
                new_bytes: 100 << 20,
                stored_bytes: 40 << 20,
            },
            TimelineRow {
                created_at: "2026-11-25T02:00:00Z".into(),
                kind: "incremental".into(),
                size: 100 << 20,
                new_bytes: 1 << 20,
                stored_bytes: 1 << 19,
            },
        ];
        let text = render(&rows, 20);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].ends_with(&"█".repeat(20)), "{text}");
        // The incremental: one cell new (rounded up), the rest reused.
        assert!(
            lines[2].ends_with(&format!("█{}", "░".repeat(19))),
            "{text}"
        );
        assert!(lines[1].contains("100.0 MiB") && lines[1].contains("40.0 MiB"));
        assert!(render(&[], 20).lines().count() == 1);
    }
}
