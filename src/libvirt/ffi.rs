//! The C functions of libvirt Ekko uses, looked up at run time in
//! `libvirt.so.0` (no binary links libvirt; only the hosts that back up Nova
//! instances need libvirt0 installed). Signatures from libvirt 11.3's
//! `<libvirt/libvirt-*.h>`; all of them exist since libvirt 6.0 at the
//! latest (backup, checkpoints, `virDomainAgentSetResponseTimeout` 5.10).

use std::ffi::{c_char, c_double, c_int, c_longlong, c_uint, c_ulong, c_ulonglong, c_void};

use libloading::Library;

use super::error::{code, LibvirtError};

/// `virConnectPtr`, `virDomainPtr`, `virDomainCheckpointPtr`: opaque.
pub type Ptr = *mut c_void;

/// `struct _virError` (virterror.h); Ekko reads `code`, `domain`, `message`.
#[repr(C)]
pub struct VirError {
    pub code: c_int,
    pub domain: c_int,
    pub message: *mut c_char,
    pub level: c_int,
    pub conn: Ptr,
    pub dom: Ptr,
    pub str1: *mut c_char,
    pub str2: *mut c_char,
    pub str3: *mut c_char,
    pub int1: c_int,
    pub int2: c_int,
    pub net: Ptr,
}

/// `VIR_TYPED_PARAM_FIELD_LENGTH`.
pub const TYPED_PARAM_FIELD_LENGTH: usize = 80;

/// `struct _virTypedParameter` (libvirt-common.h).
#[repr(C)]
pub struct VirTypedParameter {
    pub field: [c_char; TYPED_PARAM_FIELD_LENGTH],
    pub kind: c_int,
    pub value: VirTypedParameterValue,
}

#[repr(C)]
pub union VirTypedParameterValue {
    pub i: c_int,
    pub ui: c_uint,
    pub l: c_longlong,
    pub ul: c_ulonglong,
    pub d: c_double,
    pub b: c_char,
    pub s: *mut c_char,
}

pub const TYPED_PARAM_INT: c_int = 1;
pub const TYPED_PARAM_UINT: c_int = 2;
pub const TYPED_PARAM_LLONG: c_int = 3;
pub const TYPED_PARAM_ULLONG: c_int = 4;
pub const TYPED_PARAM_DOUBLE: c_int = 5;
pub const TYPED_PARAM_BOOLEAN: c_int = 6;
pub const TYPED_PARAM_STRING: c_int = 7;

/// `struct _virDomainBlockInfo` (libvirt-domain.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VirDomainBlockInfo {
    /// Logical size in bytes of the image (what the guest sees).
    pub capacity: c_ulonglong,
    /// Host storage in bytes occupied by the image.
    pub allocation: c_ulonglong,
    /// Host physical size in bytes of the image container.
    pub physical: c_ulonglong,
}

/// `VIR_UUID_STRING_BUFLEN`.
pub const UUID_STRING_BUFLEN: usize = 36 + 1;

/// `virErrorFunc`.
pub type ErrorFunc = unsafe extern "C" fn(user_data: *mut c_void, error: *mut VirError);

macro_rules! libvirt_api {
    ($( $name:ident : fn($($arg:ty),* $(,)?) -> $ret:ty; )*) => {
        /// The resolved functions; the library stays loaded as long as this lives.
        #[allow(non_snake_case)]
        pub struct Api {
            $( pub $name: unsafe extern "C" fn($($arg),*) -> $ret, )*
            _lib: Library,
        }

        impl Api {
            /// dlopen `file` and resolve every function, or say which is missing.
            pub fn load(file: &str) -> Result<Api, LibvirtError> {
                // SAFETY: loading libvirt runs its ELF constructors, which only
                // initialise libvirt's own state (no unsound global effects).
                let lib = unsafe { Library::new(file) }.map_err(|e| {
                    LibvirtError::new(
                        "dlopen",
                        code::LOAD_FAILED,
                        format!("cannot load {file} (install the libvirt0 package on hosts that back up libvirt domains): {e}"),
                    )
                })?;
                $(
                    // SAFETY: the type is the C prototype from libvirt's headers.
                    #[allow(non_snake_case)]
                    let $name = unsafe {
                        *lib.get::<unsafe extern "C" fn($($arg),*) -> $ret>(
                            concat!(stringify!($name), "\0").as_bytes(),
                        )
                        .map_err(|e| {
                            LibvirtError::new(
                                "dlsym",
                                code::LOAD_FAILED,
                                format!("{file} has no {} (libvirt too old?): {e}", stringify!($name)),
                            )
                        })?
                    };
                )*
                Ok(Api { $( $name, )* _lib: lib })
            }
        }
    };
}

libvirt_api! {
    virInitialize: fn() -> c_int;
    virSetErrorFunc: fn(*mut c_void, Option<ErrorFunc>) -> ();
    virGetLastError: fn() -> *mut VirError;
    virResetLastError: fn() -> ();
    virGetVersion: fn(*mut c_ulong, *const c_char, *mut c_ulong) -> c_int;

    virConnectOpen: fn(*const c_char) -> Ptr;
    virConnectClose: fn(Ptr) -> c_int;
    virConnectIsAlive: fn(Ptr) -> c_int;
    virConnectGetLibVersion: fn(Ptr, *mut c_ulong) -> c_int;
    virConnectListAllDomains: fn(Ptr, *mut *mut Ptr, c_uint) -> c_int;

    virDomainLookupByUUIDString: fn(Ptr, *const c_char) -> Ptr;
    virDomainLookupByName: fn(Ptr, *const c_char) -> Ptr;
    virDomainFree: fn(Ptr) -> c_int;
    virDomainGetUUIDString: fn(Ptr, *mut c_char) -> c_int;
    virDomainGetName: fn(Ptr) -> *const c_char;
    virDomainGetXMLDesc: fn(Ptr, c_uint) -> *mut c_char;
    virDomainIsActive: fn(Ptr) -> c_int;
    virDomainGetBlockInfo: fn(Ptr, *const c_char, *mut VirDomainBlockInfo, c_uint) -> c_int;

    virDomainBackupBegin: fn(Ptr, *const c_char, *const c_char, c_uint) -> c_int;
    virDomainBackupGetXMLDesc: fn(Ptr, c_uint) -> *mut c_char;
    virDomainAbortJob: fn(Ptr) -> c_int;
    virDomainGetJobStats: fn(Ptr, *mut c_int, *mut *mut VirTypedParameter, *mut c_int, c_uint) -> c_int;
    virTypedParamsFree: fn(*mut VirTypedParameter, c_int) -> ();

    virDomainCheckpointCreateXML: fn(Ptr, *const c_char, c_uint) -> Ptr;
    virDomainCheckpointLookupByName: fn(Ptr, *const c_char, c_uint) -> Ptr;
    virDomainCheckpointGetName: fn(Ptr) -> *const c_char;
    virDomainCheckpointGetXMLDesc: fn(Ptr, c_uint) -> *mut c_char;
    virDomainCheckpointDelete: fn(Ptr, c_uint) -> c_int;
    virDomainCheckpointFree: fn(Ptr) -> c_int;
    virDomainListAllCheckpoints: fn(Ptr, *mut *mut Ptr, c_uint) -> c_int;

    virDomainFSFreeze: fn(Ptr, *mut *const c_char, c_uint, c_uint) -> c_int;
    virDomainFSThaw: fn(Ptr, *mut *const c_char, c_uint, c_uint) -> c_int;
    virDomainAgentSetResponseTimeout: fn(Ptr, c_int, c_uint) -> c_int;
}
