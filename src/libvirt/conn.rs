//! Safe, blocking wrappers over the functions of [`super::ffi`]: a
//! [`Connection`] to a libvirt daemon, its [`Domain`]s and their
//! [`Checkpoint`]s. Every handle frees itself on drop. Every call blocks
//! (an RPC to libvirtd): async callers run them on tokio's blocking pool.
//!
//! libvirt keeps its last error per thread: each failing call is turned into
//! a [`LibvirtError`] on the thread that made it, right after the call.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_ulong, CStr, CString};
use std::ptr::{self, NonNull};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::error::{code, LibvirtError};
use super::ffi::{self, Api, Ptr};

/// How often [`Domain::wait_job_end`] asks.
const JOB_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The soname looked up at run time.
pub const LIBVIRT_SONAME: &str = "libvirt.so.0";

/// The loaded library (cheap to clone). Load once with [`Libvirt::load`].
#[derive(Clone)]
pub struct Libvirt {
    api: Arc<Api>,
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
fn last_error(api: &Api, operation: &'static str) -> LibvirtError {
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
unsafe fn borrowed_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

fn cstring(operation: &'static str, s: &str) -> Result<CString, LibvirtError> {
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
    fn owned_string(
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

    fn check(&self, rc: c_int, operation: &'static str) -> Result<c_int, LibvirtError> {
        if rc < 0 {
            Err(last_error(&self.api, operation))
        } else {
            Ok(rc)
        }
    }

    /// Take ownership of an array of `n` handles libvirt allocated.
    fn take_array<T>(
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

/// A domain handle (freed on drop). It keeps its connection open by itself.
pub struct Domain {
    lib: Libvirt,
    ptr: NonNull<std::ffi::c_void>,
}

// SAFETY: virDomainPtr is reference counted and usable from any thread.
unsafe impl Send for Domain {}
// SAFETY: as above.
unsafe impl Sync for Domain {}

impl Drop for Domain {
    fn drop(&mut self) {
        // SAFETY: we own one reference.
        unsafe { (self.lib.api.virDomainFree)(self.ptr.as_ptr()) };
    }
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("name", &self.name().unwrap_or_default())
            .finish()
    }
}

/// `virDomainJobType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobType {
    None,
    Bounded,
    /// A pull-mode backup runs until aborted: this kind.
    Unbounded,
    Completed,
    Failed,
    Cancelled,
    Other(i32),
}

impl JobType {
    fn from_c(v: c_int) -> JobType {
        match v {
            0 => JobType::None,
            1 => JobType::Bounded,
            2 => JobType::Unbounded,
            3 => JobType::Completed,
            4 => JobType::Failed,
            5 => JobType::Cancelled,
            other => JobType::Other(other),
        }
    }
}

/// One value of a `virTypedParameter`.
#[derive(Debug, Clone, PartialEq)]
pub enum TypedValue {
    Int(i32),
    UInt(u32),
    LLong(i64),
    ULLong(u64),
    Double(f64),
    Boolean(bool),
    String(String),
}

impl TypedValue {
    /// Integer kinds as u64 (negative → None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            TypedValue::Int(v) => u64::try_from(v).ok(),
            TypedValue::UInt(v) => Some(u64::from(v)),
            TypedValue::LLong(v) => u64::try_from(v).ok(),
            TypedValue::ULLong(v) => Some(v),
            _ => None,
        }
    }
}

/// `virDomainJobOperation` of a backup job.
pub const JOB_OPERATION_BACKUP: u64 = 9;

/// What `virDomainGetJobStats` says about the domain's current job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStats {
    pub job_type: JobType,
    /// Every field libvirt returned (`operation`, `time_elapsed`,
    /// `disk_temp_used`, …; see `VIR_DOMAIN_JOB_*` in libvirt-domain.h).
    pub fields: BTreeMap<String, TypedValue>,
}

impl JobStats {
    pub fn get_u64(&self, field: &str) -> Option<u64> {
        self.fields.get(field).and_then(TypedValue::as_u64)
    }

    /// An active job (of any kind) holds the domain.
    pub fn is_active(&self) -> bool {
        matches!(self.job_type, JobType::Bounded | JobType::Unbounded)
    }

    /// The active job is a backup (ours or anyone's).
    pub fn is_backup(&self) -> bool {
        self.is_active() && self.get_u64("operation") == Some(JOB_OPERATION_BACKUP)
    }

    /// Bytes the backup's scratch files use now (the copy-before-write data
    /// of guest writes during the job).
    pub fn disk_temp_used(&self) -> Option<u64> {
        self.get_u64("disk_temp_used")
    }

    pub fn time_elapsed_ms(&self) -> Option<u64> {
        self.get_u64("time_elapsed")
    }
}

impl Domain {
    fn raw(&self) -> Ptr {
        self.ptr.as_ptr()
    }

    /// The domain's UUID (Nova: the server id), lower-case with dashes.
    pub fn uuid(&self) -> Result<String, LibvirtError> {
        let mut buf: [c_char; ffi::UUID_STRING_BUFLEN] = [0; ffi::UUID_STRING_BUFLEN];
        // SAFETY: the buffer has the size the API requires.
        let rc = unsafe { (self.lib.api.virDomainGetUUIDString)(self.raw(), buf.as_mut_ptr()) };
        self.lib.check(rc, "virDomainGetUUIDString")?;
        // SAFETY: libvirt wrote a NUL-terminated string into `buf`.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// The libvirt name (Nova: `instance-XXXXXXXX`).
    pub fn name(&self) -> Result<String, LibvirtError> {
        // SAFETY: the returned string belongs to the domain object, which
        // lives at least as long as `self`; copied at once.
        unsafe {
            let p = (self.lib.api.virDomainGetName)(self.raw());
            borrowed_string(p).ok_or_else(|| last_error(&self.lib.api, "virDomainGetName"))
        }
    }

    /// The domain's XML ([`domain_xml`] flags; 0 = the live definition of a
    /// running domain, with backing chains).
    pub fn xml_desc(&self, flags: u32) -> Result<String, LibvirtError> {
        // SAFETY: valid handle.
        let p = unsafe { (self.lib.api.virDomainGetXMLDesc)(self.raw(), flags) };
        self.lib.owned_string(p, "virDomainGetXMLDesc")
    }

    pub fn is_active(&self) -> Result<bool, LibvirtError> {
        // SAFETY: valid handle.
        let rc = unsafe { (self.lib.api.virDomainIsActive)(self.raw()) };
        Ok(self.lib.check(rc, "virDomainIsActive")? == 1)
    }

    /// Start a backup job (see [`super::xml::BackupSpec`]), creating the
    /// checkpoint of `checkpoint_xml` (see [`super::xml::CheckpointSpec`]) at
    /// the same instant. In pull mode the job runs until [`Domain::abort_job`].
    pub fn backup_begin(
        &self,
        backup_xml: &str,
        checkpoint_xml: Option<&str>,
        flags: u32,
    ) -> Result<(), LibvirtError> {
        let b = cstring("virDomainBackupBegin", backup_xml)?;
        let c = checkpoint_xml
            .map(|x| cstring("virDomainBackupBegin", x))
            .transpose()?;
        let c_ptr = c.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: valid handle and C strings (or null for no checkpoint).
        let rc =
            unsafe { (self.lib.api.virDomainBackupBegin)(self.raw(), b.as_ptr(), c_ptr, flags) };
        self.lib.check(rc, "virDomainBackupBegin")?;
        tracing::debug!(domain = %self.name().unwrap_or_default(), checkpoint = c.is_some(), "libvirt backup job begun");
        Ok(())
    }

    /// The running backup job's XML, with what libvirt filled in (scratch
    /// paths, export and bitmap names). Code 104 when no backup runs.
    pub fn backup_xml_desc(&self) -> Result<String, LibvirtError> {
        // SAFETY: valid handle.
        let p = unsafe { (self.lib.api.virDomainBackupGetXMLDesc)(self.raw(), 0) };
        self.lib.owned_string(p, "virDomainBackupGetXMLDesc")
    }

    /// Ask libvirt to end the domain's current job; for a pull backup,
    /// libvirt then stops the NBD server and removes the socket and the
    /// scratch files. Returns before the job has ended: see
    /// [`Domain::abort_job_and_wait`].
    pub fn abort_job(&self) -> Result<(), LibvirtError> {
        // SAFETY: valid handle.
        let rc = unsafe { (self.lib.api.virDomainAbortJob)(self.raw()) };
        self.lib.check(rc, "virDomainAbortJob")?;
        tracing::debug!(domain = %self.name().unwrap_or_default(), "libvirt job abort requested");
        Ok(())
    }

    /// [`Domain::abort_job`], then [`Domain::wait_job_end`]: libvirt ends a
    /// backup job asynchronously (the abort returns in about a millisecond,
    /// the job is still reported for tens of milliseconds more, longer under
    /// load), and a new backup or a checkpoint change before then fails.
    pub fn abort_job_and_wait(&self, timeout: Duration) -> Result<Duration, LibvirtError> {
        let start = Instant::now();
        self.abort_job()?;
        self.wait_job_end(timeout.saturating_sub(start.elapsed()))?;
        Ok(start.elapsed())
    }

    /// Poll until the domain has no active job; how long that took. Code
    /// [`code::OPERATION_TIMEOUT`] when one is still active after `timeout`.
    pub fn wait_job_end(&self, timeout: Duration) -> Result<Duration, LibvirtError> {
        let start = Instant::now();
        loop {
            let stats = self.job_stats()?;
            if !stats.is_active() {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(LibvirtError::new(
                    "virDomainGetJobStats",
                    code::OPERATION_TIMEOUT,
                    format!(
                        "a job ({:?}, operation {:?}) still runs after {timeout:?}",
                        stats.job_type,
                        stats.get_u64("operation")
                    ),
                ));
            }
            std::thread::sleep(JOB_POLL_INTERVAL);
        }
    }

    /// The current job's statistics (`job_type` None when there is none).
    pub fn job_stats(&self) -> Result<JobStats, LibvirtError> {
        let mut kind: c_int = 0;
        let mut params: *mut ffi::VirTypedParameter = ptr::null_mut();
        let mut n: c_int = 0;
        // SAFETY: valid handle and out pointers; the params array is ours.
        let rc = unsafe {
            (self.lib.api.virDomainGetJobStats)(self.raw(), &mut kind, &mut params, &mut n, 0)
        };
        self.lib.check(rc, "virDomainGetJobStats")?;
        let mut fields = BTreeMap::new();
        if !params.is_null() {
            let count = usize::try_from(n).unwrap_or(0);
            for i in 0..count {
                // SAFETY: `params` holds `n` initialised parameters; the
                // union member read is the one `kind` names.
                unsafe {
                    let p = &*params.add(i);
                    let name = CStr::from_ptr(p.field.as_ptr())
                        .to_string_lossy()
                        .into_owned();
                    let value = match p.kind {
                        ffi::TYPED_PARAM_INT => TypedValue::Int(p.value.i),
                        ffi::TYPED_PARAM_UINT => TypedValue::UInt(p.value.ui),
                        ffi::TYPED_PARAM_LLONG => TypedValue::LLong(p.value.l),
                        ffi::TYPED_PARAM_ULLONG => TypedValue::ULLong(p.value.ul),
                        ffi::TYPED_PARAM_DOUBLE => TypedValue::Double(p.value.d),
                        ffi::TYPED_PARAM_BOOLEAN => TypedValue::Boolean(p.value.b != 0),
                        ffi::TYPED_PARAM_STRING => {
                            TypedValue::String(borrowed_string(p.value.s).unwrap_or_default())
                        }
                        _ => continue,
                    };
                    fields.insert(name, value);
                }
            }
            // SAFETY: frees the array (and its strings) libvirt allocated.
            unsafe { (self.lib.api.virTypedParamsFree)(params, n) };
        }
        Ok(JobStats {
            job_type: JobType::from_c(kind),
            fields,
        })
    }

    /// Create a checkpoint from XML ([`checkpoint_create`] flags; with
    /// `REDEFINE`, the XML saved from [`Checkpoint::xml_desc`]).
    pub fn checkpoint_create(&self, xml: &str, flags: u32) -> Result<Checkpoint, LibvirtError> {
        let c = cstring("virDomainCheckpointCreateXML", xml)?;
        // SAFETY: valid handle and C string.
        let raw =
            unsafe { (self.lib.api.virDomainCheckpointCreateXML)(self.raw(), c.as_ptr(), flags) };
        let ptr = NonNull::new(raw)
            .ok_or_else(|| last_error(&self.lib.api, "virDomainCheckpointCreateXML"))?;
        Ok(Checkpoint {
            lib: self.lib.clone(),
            ptr,
        })
    }

    /// The checkpoint of this name, or None when libvirt does not know it.
    pub fn checkpoint_lookup(&self, name: &str) -> Result<Option<Checkpoint>, LibvirtError> {
        let c = cstring("virDomainCheckpointLookupByName", name)?;
        // SAFETY: valid handle and C string.
        let raw =
            unsafe { (self.lib.api.virDomainCheckpointLookupByName)(self.raw(), c.as_ptr(), 0) };
        match NonNull::new(raw) {
            Some(ptr) => Ok(Some(Checkpoint {
                lib: self.lib.clone(),
                ptr,
            })),
            None => {
                let e = last_error(&self.lib.api, "virDomainCheckpointLookupByName");
                if e.is_no_checkpoint() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The domain's checkpoints ([`list_checkpoints`] flags).
    pub fn list_checkpoints(&self, flags: u32) -> Result<Vec<Checkpoint>, LibvirtError> {
        let mut arr: *mut Ptr = ptr::null_mut();
        // SAFETY: valid handle; `arr` receives an array the caller owns.
        let n = unsafe { (self.lib.api.virDomainListAllCheckpoints)(self.raw(), &mut arr, flags) };
        let n = self.lib.check(n, "virDomainListAllCheckpoints")?;
        Ok(self.lib.take_array(arr, n, |ptr| Checkpoint {
            lib: self.lib.clone(),
            ptr,
        }))
    }

    /// Freeze the guest's file systems through the guest agent; the number
    /// frozen. No agent: code 86 ([`LibvirtError::is_agent_unavailable`]).
    /// Always [`Domain::fs_thaw`] afterwards, whatever happens in between.
    pub fn fs_freeze(&self) -> Result<u32, LibvirtError> {
        // SAFETY: valid handle; no mount point list (= all).
        let rc = unsafe { (self.lib.api.virDomainFSFreeze)(self.raw(), ptr::null_mut(), 0, 0) };
        Ok(u32::try_from(self.lib.check(rc, "virDomainFSFreeze")?).unwrap_or(0))
    }

    /// Thaw what [`Domain::fs_freeze`] froze; the number thawed.
    pub fn fs_thaw(&self) -> Result<u32, LibvirtError> {
        // SAFETY: valid handle; no mount point list (= all).
        let rc = unsafe { (self.lib.api.virDomainFSThaw)(self.raw(), ptr::null_mut(), 0, 0) };
        Ok(u32::try_from(self.lib.check(rc, "virDomainFSThaw")?).unwrap_or(0))
    }

    /// How long libvirt waits for the guest agent, in seconds (-2 = block,
    /// -1 = libvirt's default, 0 = do not wait).
    pub fn set_agent_timeout(&self, seconds: i32) -> Result<(), LibvirtError> {
        // SAFETY: valid handle.
        let rc = unsafe { (self.lib.api.virDomainAgentSetResponseTimeout)(self.raw(), seconds, 0) };
        self.lib.check(rc, "virDomainAgentSetResponseTimeout")?;
        Ok(())
    }
}

/// A checkpoint handle (freed on drop).
pub struct Checkpoint {
    lib: Libvirt,
    ptr: NonNull<std::ffi::c_void>,
}

// SAFETY: virDomainCheckpointPtr is reference counted and usable from any thread.
unsafe impl Send for Checkpoint {}
// SAFETY: as above.
unsafe impl Sync for Checkpoint {}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        // SAFETY: we own one reference.
        unsafe { (self.lib.api.virDomainCheckpointFree)(self.ptr.as_ptr()) };
    }
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("name", &self.name().unwrap_or_default())
            .finish()
    }
}

impl Checkpoint {
    pub fn name(&self) -> Result<String, LibvirtError> {
        // SAFETY: the string belongs to the checkpoint object; copied at once.
        unsafe {
            let p = (self.lib.api.virDomainCheckpointGetName)(self.ptr.as_ptr());
            borrowed_string(p)
                .ok_or_else(|| last_error(&self.lib.api, "virDomainCheckpointGetName"))
        }
    }

    /// The checkpoint's XML ([`checkpoint_xml`] flags): what to keep in order
    /// to redefine it later.
    pub fn xml_desc(&self, flags: u32) -> Result<String, LibvirtError> {
        // SAFETY: valid handle.
        let p = unsafe { (self.lib.api.virDomainCheckpointGetXMLDesc)(self.ptr.as_ptr(), flags) };
        self.lib.owned_string(p, "virDomainCheckpointGetXMLDesc")
    }

    /// Delete the checkpoint ([`checkpoint_delete`] flags; `METADATA_ONLY`
    /// keeps the bitmaps). The handle is still to be dropped.
    pub fn delete(&self, flags: u32) -> Result<(), LibvirtError> {
        // SAFETY: valid handle.
        let rc = unsafe { (self.lib.api.virDomainCheckpointDelete)(self.ptr.as_ptr(), flags) };
        self.lib.check(rc, "virDomainCheckpointDelete")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
