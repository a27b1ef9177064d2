//! A domain (an instance) and its checkpoints: identity and XML, pull-mode
//! backup jobs, checkpoints, guest-agent freeze. Blocking calls, as in
//! [`super::conn`].

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr};
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use super::conn::*;
use super::error::{code, LibvirtError};
use super::ffi::{self, Ptr};

/// A domain handle (freed on drop). It keeps its connection open by itself.
pub struct Domain {
    pub(super) lib: Libvirt,
    pub(super) ptr: NonNull<std::ffi::c_void>,
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
    pub(super) fn from_c(v: c_int) -> JobType {
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

    /// The size the guest sees of disk `target` (`vda`), in bytes; works on
    /// stopped domains too (libvirt reads the image).
    pub fn block_capacity(&self, target: &str) -> Result<u64, LibvirtError> {
        let c = cstring("virDomainGetBlockInfo", target)?;
        let mut info = ffi::VirDomainBlockInfo::default();
        // SAFETY: valid handle, C string and out pointer of the API's type.
        let rc =
            unsafe { (self.lib.api.virDomainGetBlockInfo)(self.raw(), c.as_ptr(), &mut info, 0) };
        self.lib.check(rc, "virDomainGetBlockInfo")?;
        Ok(info.capacity)
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
