//! Crash points for the crash-safety tests: with `EKKO_FAILPOINT=<name>` in
//! its environment, the process kills itself with SIGKILL when it reaches
//! that point, exactly as `kill -9` would (no destructor, no clean-up).
//! Unset, a failpoint costs one environment lookup.

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
