//! Safe, blocking wrappers over the functions of [`super::ffi`]: a
//! [`Connection`] to a libvirt daemon, its [`Domain`]s and their
//! [`Checkpoint`]s. Every handle frees itself on drop. Every call blocks
//! (an RPC to libvirtd): async callers run them on tokio's blocking pool.
//!
//! libvirt keeps its last error per thread: each failing call is turned into
//! a [`LibvirtError`] on the thread that made it, right after the call.

use std::ffi::{c_char, c_int, c_ulong, CStr, CString};
use std::ptr::{self, NonNull};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use super::domain::{Checkpoint, Domain, JobStats, JobType, TypedValue, JOB_OPERATION_BACKUP};
use super::error::{code, LibvirtError};
use super::ffi::{self, Api, Ptr};

/// How often [`Domain::wait_job_end`] asks.
pub(super) const JOB_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The soname looked up at run time.
pub const LIBVIRT_SONAME: &str = "libvirt.so.0";

/// The loaded library (cheap to clone). Load once with [`Libvirt::load`].
#[derive(Clone)]
pub struct Libvirt {
    pub(super) api: Arc<Api>,
}

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Libvirt")
    }
}

/// libvirt's default error handler prints every error to stderr; the
/// errors reach the caller as values instead.
unsafe extern "C" fn ignore_error(_user_data: *mut std::ffi::c_void, _error: *mut ffi::VirError) {}

static LOADED: OnceLock<Result<Libvirt, LibvirtError>> = OnceLock::new();

impl Libvirt {
    /// `libvirt.so.0`, loaded and initialised on the first call; later
    /// calls return the same library (or the same error).
    pub fn load() -> Result<Libvirt, LibvirtError> {
        LOADED
            .get_or_init(|| Libvirt::load_file(LIBVIRT_SONAME))
            .clone()
    }

    /// Load libvirt from `file` (a soname or a path): [`Libvirt::load`]
    /// without the cache, for tests and odd installations.
    pub fn load_file(file: &str) -> Result<Libvirt, LibvirtError> {
        let api = Api::load(file)?;
        // SAFETY: plain calls without arguments that point anywhere;
        // `ignore_error` has the virErrorFunc signature.
        unsafe {
            if (api.virInitialize)() < 0 {
                return Err(last_error(&api, "virInitialize"));
            }
            (api.virSetErrorFunc)(ptr::null_mut(), Some(ignore_error));
        }
        let lib = Libvirt { api: Arc::new(api) };
        tracing::debug!(file, version = ?lib.version().ok(), "libvirt loaded");
        Ok(lib)
    }

    /// The library's version as libvirt encodes it: major * 1,000,000 +
    /// minor * 1,000 + release (11.3.0 = 11003000).
    pub fn version(&self) -> Result<u64, LibvirtError> {
        let mut v: c_ulong = 0;
        // SAFETY: `v` is a valid out pointer; a null type asks for the library only.
        let rc = unsafe { (self.api.virGetVersion)(&mut v, ptr::null(), ptr::null_mut()) };
        if rc < 0 {
            return Err(last_error(&self.api, "virGetVersion"));
        }
        #[allow(clippy::useless_conversion)] // c_ulong is u32 on 32-bit targets
        Ok(u64::from(v))
    }

    /// Open a read-write connection to `uri` (e.g. `qemu:///system`).
    pub fn open(&self, uri: &str) -> Result<Connection, LibvirtError> {
        let c_uri = cstring("virConnectOpen", uri)?;
        // SAFETY: `c_uri` is a valid C string for the duration of the call.
        let raw = unsafe { (self.api.virConnectOpen)(c_uri.as_ptr()) };
        let ptr = NonNull::new(raw).ok_or_else(|| last_error(&self.api, "virConnectOpen"))?;
        tracing::debug!(uri, "libvirt connection opened");
        Ok(Connection {
            lib: self.clone(),
            ptr,
            uri: uri.to_string(),
        })
    }
}

/// Turn libvirt's last error on this thread into a value, and clear it.
pub(super) fn last_error(api: &Api, operation: &'static str) -> LibvirtError {
    // SAFETY: virGetLastError returns null or a pointer to this thread's
    // error, valid until the next libvirt call on this thread.
    unsafe {
        let e = (api.virGetLastError)();
        if e.is_null() {
            return LibvirtError::new(operation, code::UNKNOWN, "libvirt reported no error");
        }
        let err = LibvirtError {
            operation,
            code: (*e).code,
            domain: (*e).domain,
            message: borrowed_string((*e).message).unwrap_or_else(|| "(no message)".to_string()),
        };
        (api.virResetLastError)();
        err
    }
}

/// A copy of a C string libvirt keeps (null → None).
///
/// # Safety
/// `p` is null or a valid NUL-terminated string.
pub(super) unsafe fn borrowed_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

pub(super) fn cstring(operation: &'static str, s: &str) -> Result<CString, LibvirtError> {
    CString::new(s).map_err(|_| {
        LibvirtError::new(
            operation,
            code::INVALID_STRING,
            format!("argument contains a NUL byte: {s:?}"),
        )
    })
}

impl Libvirt {
    /// A string libvirt allocated for the caller: copied, then freed.
    pub(super) fn owned_string(
        &self,
        p: *mut c_char,
        operation: &'static str,
    ) -> Result<String, LibvirtError> {
        if p.is_null() {
            return Err(last_error(&self.api, operation));
        }
        // SAFETY: libvirt returned a malloc'ed NUL-terminated string that the
        // caller owns (to be released with free(), which virFree wraps).
        unsafe {
            let s = CStr::from_ptr(p).to_string_lossy().into_owned();
            libc::free(p.cast());
            Ok(s)
        }
    }

    pub(super) fn check(&self, rc: c_int, operation: &'static str) -> Result<c_int, LibvirtError> {
        if rc < 0 {
            Err(last_error(&self.api, operation))
        } else {
            Ok(rc)
        }
    }

    /// Take ownership of an array of `n` handles libvirt allocated.
    pub(super) fn take_array<T>(
        &self,
        arr: *mut Ptr,
        n: c_int,
        wrap: impl Fn(NonNull<std::ffi::c_void>) -> T,
    ) -> Vec<T> {
        let n = usize::try_from(n).unwrap_or(0);
        let mut out = Vec::with_capacity(n);
        if arr.is_null() {
            return out;
        }
        // SAFETY: libvirt returned `n` valid handles in a malloc'ed array
        // that the caller owns; each handle is now owned by its wrapper.
        unsafe {
            for i in 0..n {
                if let Some(p) = NonNull::new(*arr.add(i)) {
                    out.push(wrap(p));
                }
            }
            libc::free(arr.cast());
        }
        out
    }
}

/// `virConnectListAllDomains` flags.
pub mod list_domains {
    pub const ACTIVE: u32 = 1 << 0;
    pub const INACTIVE: u32 = 1 << 1;
    pub const PERSISTENT: u32 = 1 << 2;
    pub const TRANSIENT: u32 = 1 << 3;
    pub const RUNNING: u32 = 1 << 4;
    pub const PAUSED: u32 = 1 << 5;
    pub const SHUTOFF: u32 = 1 << 6;
    pub const HAS_CHECKPOINT: u32 = 1 << 14;
    pub const NO_CHECKPOINT: u32 = 1 << 15;
}

/// `virDomainGetXMLDesc` flags.
pub mod domain_xml {
    pub const SECURE: u32 = 1 << 0;
    /// The persistent definition, not the running one (no backing chain,
    /// no live paths).
    pub const INACTIVE: u32 = 1 << 1;
}

/// `virDomainCheckpointCreateXML` flags.
pub mod checkpoint_create {
    /// Define again a checkpoint from the XML libvirt gave for it
    /// ([`super::Checkpoint::xml_desc`]); nothing changes in the disks.
    pub const REDEFINE: u32 = 1 << 0;
    /// Not supported by the QEMU driver for checkpoints: freeze around
    /// [`super::Domain::backup_begin`] instead.
    pub const QUIESCE: u32 = 1 << 1;
    /// With `REDEFINE`: fail (code 109, checkpoint inconsistent) when a disk's
    /// bitmap is missing or broken.
    pub const REDEFINE_VALIDATE: u32 = 1 << 2;
}

/// `virDomainCheckpointGetXMLDesc` flags.
pub mod checkpoint_xml {
    pub const SECURE: u32 = 1 << 0;
    /// Leave out the copy of the domain's XML.
    pub const NO_DOMAIN: u32 = 1 << 1;
    /// Include each disk's `size` (dirty bytes since the checkpoint); needs a
    /// running domain.
    pub const SIZE: u32 = 1 << 2;
}

/// `virDomainCheckpointDelete` flags.
pub mod checkpoint_delete {
    pub const CHILDREN: u32 = 1 << 0;
    /// Forget the checkpoint in libvirt only: the bitmaps stay in the qcow2
    /// files (redefine it from saved XML to use it again).
    pub const METADATA_ONLY: u32 = 1 << 1;
    pub const CHILDREN_ONLY: u32 = 1 << 2;
}

/// `virDomainListAllCheckpoints` flags.
pub mod list_checkpoints {
    pub const ROOTS: u32 = 1 << 0;
    /// Parents before children (the order to redefine them in).
    pub const TOPOLOGICAL: u32 = 1 << 1;
    pub const LEAVES: u32 = 1 << 2;
    pub const NO_LEAVES: u32 = 1 << 3;
}

/// `virDomainBackupBegin` flags.
pub mod backup_begin {
    /// Scratch (push: target) files exist already and are to be used as they are.
    pub const REUSE_EXTERNAL: u32 = 1 << 0;
}

/// A connection to a libvirt daemon. libvirt connections are thread safe:
/// share one (`Arc<Connection>`) between blocking tasks.
pub struct Connection {
    lib: Libvirt,
    ptr: NonNull<std::ffi::c_void>,
    uri: String,
}

// SAFETY: virConnectPtr may be used from any thread and concurrently from
// several (libvirt serialises calls on one connection internally).
unsafe impl Send for Connection {}
// SAFETY: as above.
unsafe impl Sync for Connection {}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("uri", &self.uri)
            .finish()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: we own one reference to the connection.
        let rc = unsafe { (self.lib.api.virConnectClose)(self.ptr.as_ptr()) };
        if rc < 0 {
            let e = last_error(&self.lib.api, "virConnectClose");
            tracing::debug!(uri = %self.uri, error = %e, "libvirt connection close failed");
        }
    }
}

impl Connection {
    /// [`Libvirt::load`] then [`Libvirt::open`].
    pub fn open(uri: &str) -> Result<Connection, LibvirtError> {
        Libvirt::load()?.open(uri)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// False once the daemon went away (restart, stop): open a new one.
    pub fn is_alive(&self) -> bool {
        // SAFETY: valid connection handle.
        unsafe { (self.lib.api.virConnectIsAlive)(self.ptr.as_ptr()) == 1 }
    }

    /// The daemon's libvirt version (major * 1,000,000 + minor * 1,000 + release).
    pub fn daemon_version(&self) -> Result<u64, LibvirtError> {
        let mut v: c_ulong = 0;
        // SAFETY: valid handle and out pointer.
        let rc = unsafe { (self.lib.api.virConnectGetLibVersion)(self.ptr.as_ptr(), &mut v) };
        self.lib.check(rc, "virConnectGetLibVersion")?;
        #[allow(clippy::useless_conversion)] // c_ulong is u32 on 32-bit targets
        Ok(u64::from(v))
    }

    /// Domains matching `flags` ([`list_domains`]; 0 = all, running or not).
    pub fn list_all_domains(&self, flags: u32) -> Result<Vec<Domain>, LibvirtError> {
        let mut arr: *mut Ptr = ptr::null_mut();
        // SAFETY: valid handle; `arr` receives an array the caller owns.
        let n =
            unsafe { (self.lib.api.virConnectListAllDomains)(self.ptr.as_ptr(), &mut arr, flags) };
        let n = self.lib.check(n, "virConnectListAllDomains")?;
        Ok(self.lib.take_array(arr, n, |ptr| Domain {
            lib: self.lib.clone(),
            ptr,
        }))
    }

    /// The domain with this UUID (Nova: the server id), or None.
    pub fn lookup_by_uuid(&self, uuid: &str) -> Result<Option<Domain>, LibvirtError> {
        let c = cstring("virDomainLookupByUUIDString", uuid)?;
        // SAFETY: valid handle and C string.
        let raw =
            unsafe { (self.lib.api.virDomainLookupByUUIDString)(self.ptr.as_ptr(), c.as_ptr()) };
        self.domain_or_none(raw, "virDomainLookupByUUIDString")
    }

    /// The domain with this name (Nova: `instance-XXXXXXXX`), or None.
    pub fn lookup_by_name(&self, name: &str) -> Result<Option<Domain>, LibvirtError> {
        let c = cstring("virDomainLookupByName", name)?;
        // SAFETY: valid handle and C string.
        let raw = unsafe { (self.lib.api.virDomainLookupByName)(self.ptr.as_ptr(), c.as_ptr()) };
        self.domain_or_none(raw, "virDomainLookupByName")
    }

    fn domain_or_none(
        &self,
        raw: Ptr,
        operation: &'static str,
    ) -> Result<Option<Domain>, LibvirtError> {
        match NonNull::new(raw) {
            Some(ptr) => Ok(Some(Domain {
                lib: self.lib.clone(),
                ptr,
            })),
            None => {
                let e = last_error(&self.lib.api, operation);
                if e.is_no_domain() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn missing_library_is_a_clear_error() {
        let e = Libvirt::load_file("libekko-no-such-library.so.0").expect_err("must not load");
        assert_eq!(e.code, code::LOAD_FAILED);
        assert!(e.message.contains("libekko-no-such-library.so.0"), "{e}");
        assert!(e.message.contains("libvirt0"), "{e}");
    }

    #[test]
    fn nul_in_argument_is_refused_before_c() {
        let e = cstring("virDomainLookupByName", "a\0b").expect_err("NUL");
        assert_eq!(e.code, code::INVALID_STRING);
    }

    #[test]
    fn job_type_codes() {
        assert_eq!(JobType::from_c(2), JobType::Unbounded);
        assert_eq!(JobType::from_c(0), JobType::None);
        assert_eq!(JobType::from_c(42), JobType::Other(42));
        let mut fields = BTreeMap::new();
        fields.insert("operation".to_string(), TypedValue::Int(9));
        fields.insert("disk_temp_used".to_string(), TypedValue::ULLong(65536));
        let s = JobStats {
            job_type: JobType::Unbounded,
            fields,
        };
        assert!(s.is_backup());
        assert_eq!(s.disk_temp_used(), Some(65536));
        let none = JobStats {
            job_type: JobType::None,
            fields: BTreeMap::new(),
        };
        assert!(!none.is_active() && !none.is_backup());
    }

    /// libvirt's test driver (`test:///default`, in-process, a fresh
    /// state per connection: one running domain "test") where libvirt0 is
    /// installed: every wrapper but the backup job, without a daemon.
    #[test]
    fn wrappers_against_the_test_driver() {
        let lib = match Libvirt::load() {
            Ok(lib) => lib,
            Err(e) => {
                eprintln!("skipping: {e}");
                return;
            }
        };
        let v = lib.version().expect("virGetVersion");
        assert!(v >= 6_000_000, "libvirt {v} is older than 6.0");

        let e = lib
            .open("qemu+unix:///system?socket=/nonexistent/ekko-no-such.sock")
            .expect_err("no daemon there");
        assert_eq!(e.operation, "virConnectOpen");
        assert!(
            e.code > 0 && e.message.contains("/nonexistent/ekko-no-such.sock"),
            "{e}"
        );

        let conn = lib.open("test:///default").expect("test driver");
        assert!(conn.is_alive());
        assert!(conn.daemon_version().expect("version") >= 6_000_000);
        let all = conn.list_all_domains(0).expect("list");
        assert_eq!(all.len(), 1);
        let uuid = all[0].uuid().expect("uuid");
        assert_eq!(uuid, "6695eb01-f6a4-8304-79aa-97f2502e193f");
        assert_eq!(all[0].name().expect("name"), "test");
        let running = conn.list_all_domains(list_domains::RUNNING).expect("list");
        assert_eq!(running.len(), 1);
        assert!(conn
            .list_all_domains(list_domains::SHUTOFF)
            .expect("list")
            .is_empty());

        let dom = conn.lookup_by_uuid(&uuid).expect("lookup").expect("found");
        assert!(dom.is_active().expect("active"));
        let info =
            crate::libvirt::xml::parse_domain(&dom.xml_desc(0).expect("xml")).expect("parse");
        assert_eq!(info.uuid, uuid);
        assert_eq!(info.name, "test");
        assert!(info.nova.is_none());
        assert!(conn
            .lookup_by_uuid("00000000-0000-0000-0000-000000000000")
            .expect("lookup")
            .is_none());
        assert!(conn
            .lookup_by_name("instance-404")
            .expect("lookup")
            .is_none());
        let e = conn.lookup_by_uuid("not-a-uuid").expect_err("bad uuid");
        assert_eq!(e.code, code::INVALID_ARG, "{e}");

        // checkpoints: create, find, save, forget (metadata only), redefine
        // (test:///default is one state per process: start and end clean)
        if let Some(old) = dom.checkpoint_lookup("ekko-1").expect("lookup") {
            old.delete(0).expect("delete leftover");
        }
        let ck = dom
            .checkpoint_create(
                "<domaincheckpoint><name>ekko-1</name></domaincheckpoint>",
                0,
            )
            .expect("create");
        assert_eq!(ck.name().expect("name"), "ekko-1");
        let saved = ck.xml_desc(checkpoint_xml::NO_DOMAIN).expect("xml");
        assert!(saved.contains("<name>ekko-1</name>"), "{saved}");
        assert_eq!(dom.list_checkpoints(0).expect("list").len(), 1);
        ck.delete(checkpoint_delete::METADATA_ONLY).expect("delete");
        drop(ck);
        assert!(dom.checkpoint_lookup("ekko-1").expect("lookup").is_none());
        assert!(dom.list_checkpoints(0).expect("list").is_empty());
        let again = dom
            .checkpoint_create(&saved, checkpoint_create::REDEFINE)
            .expect("redefine");
        assert_eq!(again.name().expect("name"), "ekko-1");
        assert!(dom.checkpoint_lookup("ekko-1").expect("lookup").is_some());
        again.delete(0).expect("delete");

        // freeze/thaw exist in the test driver; job stats do not
        assert!(dom.fs_freeze().expect("freeze") > 0);
        dom.fs_thaw().expect("thaw");
        let e = dom.job_stats().expect_err("not in the test driver");
        assert_eq!(e.code, code::NO_SUPPORT, "{e}");
        assert_eq!(e.operation, "virDomainGetJobStats");
        let e = dom.backup_xml_desc().expect_err("no backup job");
        assert!(e.code > 0, "{e}");
    }
}
