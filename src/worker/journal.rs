//! The worker's local record of jobs (`$state_path/jobs`): attempts per
//! job and the jobs whose outcome was handed on. Written durably before
//! the step it guards, so a worker killed at any point knows on restart
//! how often a redelivered job ran here and whether it is done.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Jobs older than this are forgotten (their messages are long gone).
const KEEP: Duration = Duration::from_secs(7 * 86400);

pub(super) struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(dir: PathBuf) -> std::io::Result<Journal> {
        std::fs::create_dir_all(&dir)?;
        let cutoff = std::time::SystemTime::now() - KEEP;
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Journal { dir })
    }

    /// Job ids name files: only UUIDs are accepted.
    fn path(&self, job_id: &str, what: &str) -> Option<PathBuf> {
        uuid::Uuid::parse_str(job_id)
            .ok()
            .map(|u| self.dir.join(format!("{u}.{what}")))
    }

    pub fn is_done(&self, job_id: &str) -> bool {
        self.path(job_id, "done").is_some_and(|p| p.exists())
    }

    /// Count one more attempt (durably, before the work starts).
    pub fn begin(&self, job_id: &str) -> std::io::Result<u32> {
        let path = self.path(job_id, "attempts").ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "job id is not a UUID")
        })?;
        let n = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        write_durably(&path, n.to_string().as_bytes())?;
        Ok(n)
    }

    /// An attempt that was rolled back on purpose (shutdown) does not count.
    pub fn undo(&self, job_id: &str, attempt: u32) {
        if let Some(path) = self.path(job_id, "attempts") {
            let _ = write_durably(&path, attempt.saturating_sub(1).to_string().as_bytes());
        }
    }

    /// Keep a finished job's outcome before it is handed on: a worker
    /// killed after handing it on (or during) hands the same outcome on
    /// again instead of running the job a second time, whose data and
    /// manifest would then differ from what the catalog committed.
    pub fn record_outcome(&self, job_id: &str, outcome: &[u8]) -> std::io::Result<()> {
        let path = self.path(job_id, "outcome").ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "job id is not a UUID")
        })?;
        write_durably(&path, outcome)
    }

    /// The outcome kept for a job, if its work finished here.
    pub fn outcome(&self, job_id: &str) -> Option<Vec<u8>> {
        self.path(job_id, "outcome")
            .and_then(|p| std::fs::read(p).ok())
    }

    pub fn done(&self, job_id: &str) {
        if let Some(path) = self.path(job_id, "done") {
            if let Err(e) = write_durably(&path, b"") {
                tracing::warn!(job = job_id, error = %e, "cannot record the job as done");
            }
        }
    }
}

/// Write a file so that a crash leaves the old content or the new, never
/// a torn one.
pub(super) fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    // Each file its own temporary name: a job's attempts, outcome and
    // done marks may be written at once.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename itself must survive a crash.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "0f6a1c2e-11aa-4bb0-9c1d-0123456789ab";

    #[test]
    fn attempts_count_durably_and_a_shutdown_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path().join("jobs")).unwrap();
        assert!(!j.is_done(JOB));
        assert_eq!(j.begin(JOB).unwrap(), 1);
        assert_eq!(j.begin(JOB).unwrap(), 2);
        j.undo(JOB, 2);
        // A restarted worker reads what the last one wrote.
        let again = Journal::open(dir.path().join("jobs")).unwrap();
        assert_eq!(again.begin(JOB).unwrap(), 2);
        again.done(JOB);
        assert!(again.is_done(JOB));
    }

    #[test]
    fn an_outcome_kept_is_found_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(j.outcome(JOB), None);
        j.record_outcome(JOB, b"{\"job_id\":1}").unwrap();
        let again = Journal::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(again.outcome(JOB).as_deref(), Some(&b"{\"job_id\":1}"[..]));
        assert!(j.record_outcome("not-a-uuid", b"x").is_err());
    }

    #[test]
    fn only_uuids_name_files() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path().to_path_buf()).unwrap();
        assert!(j.begin("../../etc/passwd").is_err());
        j.done("../x");
        assert!(!j.is_done("../x"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn old_entries_are_forgotten_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(format!("{JOB}.done"));
        std::fs::write(&old, b"").unwrap();
        let long_ago = std::time::SystemTime::now() - KEEP - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let j = Journal::open(dir.path().to_path_buf()).unwrap();
        assert!(!j.is_done(JOB));
    }
}
