//! Crash points for the crash-safety tests: with `EKKO_FAILPOINT=<name>` in
//! its environment, the process kills itself with SIGKILL when it reaches
//! that point, exactly as `kill -9` would (no destructor, no clean-up).
//! And error points: with `EKKO_FAIL_ONCE=<name>:<detail>`, the first
//! time the process reaches that point with that detail it takes the
//! error path a transient fault (a deadlock, a dropped connection) would.
//! Unset, either costs one environment lookup.

use std::sync::atomic::{AtomicBool, Ordering};

/// Die here if `EKKO_FAILPOINT` names this point.
pub fn hit(name: &str) {
    if std::env::var_os("EKKO_FAILPOINT").is_some_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached: killing the process");
        // SAFETY: raising a signal on ourselves has no memory-safety effect.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

/// Whether to fail here: true once per process, the first time
/// `EKKO_FAIL_ONCE` is `<name>:<detail>`.
pub fn fails_once(name: &str, detail: &str) -> bool {
    static FIRED: AtomicBool = AtomicBool::new(false);
    let Some(wanted) = std::env::var_os("EKKO_FAIL_ONCE") else {
        return false;
    };
    if wanted != format!("{name}:{detail}").as_str() || FIRED.swap(true, Ordering::SeqCst) {
        return false;
    }
    tracing::error!(
        failpoint = name,
        detail,
        "error point reached: failing once"
    );
    true
}
