//! libvirt, as a Nova compute host runs it: the domains (instances) it
//! owns, their pull-mode backup jobs and checkpoints, guest-agent freeze.
//!
//! libvirt is loaded at run time (`dlopen("libvirt.so.0")`, [`Libvirt::load`])
//! with only the C functions Ekko calls declared ([`ffi`]): no binary links
//! libvirt, so the embedded default and the controller-side binaries never
//! need libvirt0, and building needs no libvirt-dev. Only an ekko-backup
//! configured for libvirt instances loads it; without the library it gets a
//! [`LibvirtError`] with code [`code::LOAD_FAILED`] that says what to install.
//!
//! - [`conn`]: [`Connection`] (thread safe), [`Domain`] and [`Checkpoint`]
//!   handles freed on drop; every call blocks (an RPC to libvirtd): run them
//!   on tokio's blocking pool. Errors keep libvirt's code, domain and message.
//! - [`xml`]: pure parsing of the domain XML (Nova's `nova:instance`
//!   metadata, disks, guest agent channel), checkpoint and backup-job XML,
//!   and builders of the backup and checkpoint documents.
//!
//! `shared/libvirt/README.md` (outside this repository) has what was
//! verified on libvirt 11.3 / QEMU 10, and tests/integration/libvirt.rs
//! drives a real libvirtd through this module.

pub mod conn;
mod domain;
mod error;
mod ffi;
pub mod xml;

pub use conn::{
    backup_begin, checkpoint_create, checkpoint_delete, checkpoint_xml, domain_xml,
    list_checkpoints, list_domains, Checkpoint, Connection, Domain, JobStats, JobType, Libvirt,
    TypedValue, JOB_OPERATION_BACKUP, LIBVIRT_SONAME,
};
pub use error::{code, LibvirtError};
pub use xml::{
    checkpoint_without_parent, dirty_bitmap_context, made_on, made_on_host, parse_backup,
    parse_checkpoint, parse_domain, BackupDisk, BackupJobDisk, BackupJobInfo, BackupSpec,
    CheckpointDisk, CheckpointInfo, CheckpointSpec, DiskInfo, DiskSource, DomainInfo, NovaInstance,
    XmlError,
};
