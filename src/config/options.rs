//! Every option Ekko reads, one struct per INI section. Each option carries
//! its help text and default in one place; the sample file
//! (`etc/ekko/ekko.conf.sample`), the validator and the typed structs are all
//! generated from these declarations, so they cannot disagree.

use super::types::{ByteSize, CommaList, OptionType, Secret};
use crate::choice_option;

/// Description of one option, for validation and the sample file.
#[derive(Debug, Clone)]
pub struct OptionInfo {
    pub section: &'static str,
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
    pub default: String,
    pub choices: &'static [&'static str],
    /// Parses a raw (substituted) value, returning why it is invalid.
    pub check: fn(&str) -> Result<(), String>,
}

fn s(v: &str) -> String {
    v.to_string()
}

choice_option! {
    /// How S3 requests address a bucket.
    pub enum S3UrlStyle { Path = "path", VirtualHost = "virtual_host" }
}

choice_option! {
    /// Where segment and manifest objects are kept.
    pub enum StorageBackend { Local = "local", Swift = "swift", S3 = "s3" }
}

choice_option! {
    /// Where the second copy of backups is kept.
    pub enum ReplicaBackend { None = "none", Local = "local", S3 = "s3" }
}

choice_option! {
    /// How the chunks of a newly keyed project are sealed.
    pub enum EncryptionMode { Symmetric = "symmetric", PublicKey = "public_key" }
}

choice_option! {
    /// Where ekko-backup finds this host's instances.
    pub enum InstanceSource { Qmp = "qmp", Libvirt = "libvirt" }
}

choice_option! {
    /// How ekko-api authenticates requests.
    pub enum AuthStrategy { Keystone = "keystone", Noauth = "noauth" }
}

option_group! {
    /// `[DEFAULT]`: process-wide options.
    pub struct DefaultOptions in "DEFAULT" {
        /// The message bus, oslo.messaging style: `rabbit://user:pass@host:5672/vhost`
        /// (several hosts separated by commas), or `memory://` for the in-process
        /// queue of the single-machine default.
        pub transport_url: String = s("memory://");
        /// The AMQP topic exchange Ekko's jobs and results are published on.
        pub control_exchange: String = s("ekko");
        /// Name of this host. ekko-backup consumes the jobs routed to this name,
        /// so it must match the host the instances run on. Empty means the
        /// machine's hostname.
        pub host: String = s("");
        /// Top-level directory for Ekko's state (the SQLite database, the local
        /// store, caches and scratch space of the default configuration).
        pub state_path: String = s("/var/lib/ekko");
        /// Log at debug level instead of info.
        pub debug: bool = false;
        /// Write logs to this file instead of standard error (relative
        /// paths are under `log_dir`); SIGHUP reopens it (logrotate).
        pub log_file: Option<String> = None;
        /// Directory of `log_file`; alone, logs go to `<log_dir>/<program>.log`.
        pub log_dir: Option<String> = None;
        /// Log one JSON object per line (with the request's or job's span).
        pub use_json: bool = false;
        /// Log to journald (with each line's fields) instead of a file or
        /// standard error.
        pub use_journal: bool = false;
    }
}

option_group! {
    /// `[api]`: the REST API service (ekko-api).
    pub struct ApiOptions in "api" {
        /// Address the API listens on.
        pub bind_host: String = s("0.0.0.0");
        /// Port the API listens on.
        pub bind_port: u16 = 6800;
        /// `keystone` validates every request's token with Keystone;
        /// `noauth` trusts the X-Project-Id and X-Roles headers and is only for
        /// the single-machine default: ekko-api refuses to start with it
        /// unless `bind_host` is a loopback address (127.0.0.0/8, ::1, or a
        /// name resolving only to those).
        pub auth_strategy: AuthStrategy = AuthStrategy::Keystone;
        /// DANGEROUS. Let `auth_strategy = noauth` listen on a non-loopback
        /// `bind_host`: anyone who reaches the port then acts as any project,
        /// and as admin (`X-Roles: admin` is believed). Only for an isolated
        /// test network; ekko-api logs an error at start when it is used.
        pub insecure_noauth_on_network: bool = false;
        /// Number of HTTP worker threads; 0 means one per CPU.
        pub workers: u16 = 0;
        /// The largest page a list request may ask for with `limit`.
        pub max_limit: u32 = 1000;
        /// Base URL clients should use in links (for a service behind a proxy);
        /// empty means the URL of each request.
        pub public_endpoint: Option<String> = None;
    }
}

option_group! {
    /// `[database]`: the catalog of backups, chunks and segments.
    pub struct DatabaseOptions in "database" {
        /// SQLAlchemy-style URL: `mysql+pymysql://user:pass@host/ekko`,
        /// `mysql://…`, or `sqlite:///absolute/path.sqlite`.
        pub connection: String = s("sqlite:///$state_path/ekko.sqlite");
        /// Largest number of open connections per process.
        pub max_pool_size: u32 = 10;
        /// Seconds to wait for a free connection from the pool.
        pub pool_timeout: u64 = 30;
        /// Attempts to connect at start-up before giving up (-1 means forever).
        pub max_retries: i64 = 10;
        /// Seconds between connection attempts at start-up.
        pub retry_interval: u64 = 10;
    }
}

option_group! {
    /// `[keystone_authtoken]`: token validation, as keystonemiddleware does it,
    /// and the credentials of Ekko's service user (also used for Swift).
    pub struct KeystoneAuthtokenOptions in "keystone_authtoken" {
        /// Public Keystone URL sent to clients in `WWW-Authenticate`.
        pub www_authenticate_uri: Option<String> = None;
        /// Keystone URL Ekko authenticates its service user against.
        pub auth_url: Option<String> = None;
        /// Authentication plugin; only `password` is supported.
        pub auth_type: String = s("password");
        /// Service user name.
        pub username: Option<String> = None;
        /// Service user password.
        pub password: Secret = Secret::default();
        /// Project of the service user.
        pub project_name: String = s("service");
        /// Domain of the service user.
        pub user_domain_name: String = s("Default");
        /// Domain of the service user's project.
        pub project_domain_name: String = s("Default");
        /// Region used to pick endpoints from the catalog.
        pub region_name: Option<String> = None;
        /// Endpoint interface used from the catalog (public, internal, admin).
        pub interface: String = s("internal");
        /// Seconds a validated token is cached; -1 disables the cache.
        pub token_cache_time: i64 = 300;
        /// A service token (X-Service-Token) must carry one of these roles.
        pub service_token_roles: CommaList = CommaList::from_strs(&["service"]);
        /// Reject service tokens without one of `service_token_roles`.
        pub service_token_roles_required: bool = true;
        /// Seconds to wait for Keystone to answer.
        pub http_connect_timeout: u64 = 10;
        /// How many times a failed request to Keystone is retried.
        pub http_request_max_retries: u32 = 3;
        /// CA bundle to verify Keystone's certificate with.
        pub cafile: Option<String> = None;
        /// Do not verify Keystone's certificate (tests only).
        pub insecure: bool = false;
    }
}

option_group! {
    /// `[oslo_policy]`: access rules.
    pub struct OsloPolicyOptions in "oslo_policy" {
        /// Policy file (oslo.policy YAML) overriding the defaults in code;
        /// relative paths are looked up next to the configuration files.
        pub policy_file: String = s("policy.yaml");
        /// Use the secure-RBAC defaults (reader/member/admin/service personas).
        pub enforce_new_defaults: bool = true;
    }
}

option_group! {
    /// `[storage]`: where backup data goes.
    pub struct StorageOptions in "storage" {
        /// `swift` for an OpenStack object store, `s3` for an S3-compatible
        /// one (Ceph RGW, MinIO, AWS, Swift's s3api), `local` for a directory.
        pub backend: StorageBackend = StorageBackend::Local;
    }
}

option_group! {
    /// `[swift]`: the Swift object store (backend = swift). Ekko authenticates
    /// as the service user of `[keystone_authtoken]` and keeps each project's
    /// data in its own container of the service account.
    pub struct SwiftOptions in "swift" {
        /// Object-store URL of the service account; empty means the catalog's
        /// endpoint for the service user's project.
        pub endpoint_override: Option<String> = None;
        /// Containers are named `<container_prefix><project id>`.
        pub container_prefix: String = s("ekko-");
        /// Swift storage policy for new containers; empty means the cluster's default.
        pub storage_policy: Option<String> = None;
        /// Requests in flight per backup or restore.
        pub concurrency: u32 = 8;
        /// Seconds before a request to Swift times out.
        pub timeout: u64 = 120;
        /// Retries (with exponential back-off) on 5xx, 429 and timeouts.
        pub max_retries: u32 = 5;
    }
}

option_group! {
    /// `[s3]`: an S3-compatible object store (backend = s3). Each project's
    /// data lives in its own bucket, named as the Swift container would be
    /// (`[swift] container_prefix` + project id), so the prefix must be lower
    /// case and at most 31 characters (S3 bucket names: 3 to 63 of a-z, 0-9,
    /// `-`, `.`). On a shared S3 such as AWS bucket names are global: choose a
    /// prefix of your own.
    pub struct S3Options in "s3" {
        /// The S3 service's root URL (`https://s3.example.net`, or a Swift
        /// proxy with s3api: `http://swift:8080`); no path: a bucket's URL is
        /// refused (Ekko names a bucket per project).
        pub endpoint: String = s("");
        /// The region requests are signed for (SigV4) and buckets created in.
        pub region: String = s("us-east-1");
        /// `path` (`<endpoint>/<bucket>/<key>`: RGW, MinIO, s3api) or
        /// `virtual_host` (`<bucket>.<endpoint host>/<key>`: AWS).
        pub url_style: S3UrlStyle = S3UrlStyle::Path;
        /// Access key id (an EC2 credential's `access` for Keystone-backed
        /// RGW and s3api).
        pub access_key: String = s("");
        /// Secret access key; never logged.
        pub secret_key: Secret = Secret::default();
        /// Objects larger than this are written by multipart upload.
        pub multipart_threshold: ByteSize = ByteSize::mib(64);
        /// Part size of a multipart upload (S3: at least 5M, at most 10,000
        /// parts per object).
        pub multipart_part_size: ByteSize = ByteSize::mib(16);
        /// Seconds before a request to the store times out.
        pub timeout: u64 = 120;
        /// Retries (with exponential back-off) on 5xx, 429, timeouts and
        /// truncated answers.
        pub max_retries: u32 = 5;
        /// CA bundle to verify the endpoint's certificate with; empty: the
        /// system's.
        pub cafile: String = s("");
    }
}

option_group! {
    /// `[glance]`: the image service restores into (`"target": {"type":
    /// "image"}`). Ekko acts in the tenant's project with the tenant's own
    /// token, sent together with a service token of the `[keystone_authtoken]`
    /// user, so Glance still accepts it once it expired during a long upload.
    pub struct GlanceOptions in "glance" {
        /// Glance's URL; empty means the catalog's `image` endpoint on
        /// `[keystone_authtoken] interface` in its region.
        pub endpoint_override: Option<String> = None;
        /// Seconds before a request to Glance other than an upload times out
        /// (an upload is bounded by the restore's deadline).
        pub timeout: u64 = 60;
        /// Restored data held in memory per image restore, to put chunks
        /// fetched out of order back in disk order for the upload stream.
        pub stream_buffer: ByteSize = ByteSize::mib(64);
        /// Bytes per second one image upload may send (spare the image
        /// store and the network of a busy cloud); 0: unlimited.
        pub upload_rate_limit: ByteSize = ByteSize(0);
        /// The host (an ekko-backup that holds the keys and reaches Glance)
        /// that runs every restore into an image. An image restore's host
        /// holds the tenant's token while it runs: set this to a trusted
        /// node where compute hosts are not trusted with tenants' tokens.
        /// Empty: the restore's usual host (the instance's, or in
        /// public-key mode `[encryption] restore_host`).
        pub upload_host: String = s("");
        /// Image restores a project may have in flight (with the failed
        /// ones whose image is not deleted yet): members cannot take every
        /// worker's job slots.
        pub max_image_restores_per_project: u32 = 4;
    }
}

option_group! {
    /// `[metrics]`: each daemon's listener for Prometheus (`GET /metrics`)
    /// and a local health check (`GET /healthcheck`: the catalog, bus and
    /// store checks, `503` when one fails). No token is asked: bind it to
    /// loopback or a management network. Answers are cached 10 s, so
    /// scrapes cannot load the catalog. Off unless set.
    pub struct MetricsOptions in "metrics" {
        /// ekko-api's listener, `host:port` (e.g. `127.0.0.1:9680`); empty:
        /// none. Its scrapes also count the catalog's backups and restores
        /// by status and each compute host's heartbeat age.
        pub api_listen: String = s("");
        /// ekko-backup's listener on a compute host; empty: none.
        pub backup_listen: String = s("");
        /// ekko-retention's listener; empty: none.
        pub retention_listen: String = s("");
        /// Answer the listener's `/healthcheck` with each check as JSON
        /// (the catalog's, bus's and store's hosts and errors); else only
        /// `OK` or `FAILED`.
        pub health_details: bool = false;
    }
}

option_group! {
    /// `[oslo_middleware]`: what oslo.middleware's options mean for ekko-api.
    pub struct OsloMiddlewareOptions in "oslo_middleware" {
        /// Believe the proxy headers (`Forwarded`, `X-Forwarded-Proto`,
        /// `X-Forwarded-Host`, `X-Forwarded-Prefix`) when building the links
        /// of answers: only behind a proxy that sets them (devstack's Apache
        /// at `/instance-backup`, an HAProxy with TLS). Off, a client that
        /// sends them cannot make the API hand out links to another host.
        /// `[api] public_endpoint`, when set, wins over both.
        pub enable_proxy_headers_parsing: bool = false;
    }
}

option_group! {
    /// `[healthcheck]`: `GET|HEAD /healthcheck` of ekko-api, as
    /// oslo.middleware's (no token needed).
    pub struct HealthcheckOptions in "healthcheck" {
        /// While this file exists `/healthcheck` answers `503 DISABLED BY
        /// FILE`, so a load balancer drains this node (create it before
        /// maintenance, remove it after).
        pub disable_by_file_path: Option<String> = None;
        /// Answer a caller whose token passes `ekko:healthcheck:detailed`
        /// (admin by default) with each check (catalog, message bus, object
        /// store) as JSON, `503` when one fails.
        pub detailed: bool = true;
    }
}

option_group! {
    /// `[export]`: backups served read-only over NBD (`POST
    /// /v1/backups/{id}/exports` on an ekko-backup host, `ekko export`).
    pub struct ExportOptions in "export" {
        /// Address an ekko-backup host's exports listen on. Without TLS only
        /// a loopback address is allowed (reach the export from the host
        /// itself, e.g. a QEMU booting from it, or through an SSH tunnel).
        pub listen_address: String = s("127.0.0.1");
        /// Host name or address put in an export's URL; empty: the listen
        /// address, or `[DEFAULT] host` when that is a wildcard.
        pub advertise_address: String = s("");
        /// TCP ports exports take, as `FIRST-LAST` (firewall rules); empty:
        /// any free port.
        pub port_range: String = s("");
        /// PEM certificate chain of the export server: with it (and
        /// `tls_key_file`) clients must upgrade to TLS (NBD_OPT_STARTTLS)
        /// before choosing an export; QEMU connects with `tls-creds-x509`.
        pub tls_cert_file: String = s("");
        /// PEM private key of `tls_cert_file`.
        pub tls_key_file: String = s("");
        /// PEM CA certificates: when set, every client must present a
        /// certificate signed by one of them (QEMU's `verify-peer`). Use a
        /// CA dedicated to export clients, not the compute hosts' QEMU CA
        /// (every host holds a certificate of that one).
        pub tls_ca_file: String = s("");
        /// Decoded chunks each export keeps in memory (4 KiB reads of a
        /// chunk already fetched are served from here).
        pub cache_size: ByteSize = ByteSize::mib(256);
        /// Exports one ekko-backup host serves at once; more are refused.
        pub max_exports: u32 = 8;
        /// Seconds an export created through the API lives by default.
        pub default_lifetime: u64 = 3600;
        /// The longest lifetime the API grants an export, in seconds.
        pub max_lifetime: u64 = 86400;
    }
}

option_group! {
    /// `[local_store]`: a directory as object store (backend = local).
    pub struct LocalStoreOptions in "local_store" {
        /// Directory holding one sub-directory per project.
        pub path: String = s("$state_path/store");
        /// fsync objects and directories before reporting them stored.
        pub fsync: bool = true;
    }
}

option_group! {
    /// `[replication]`: a second copy of every backup in another object
    /// store (3-2-1: one copy off site). ekko-retention copies each available
    /// backup's segments and manifest there, only the objects the second
    /// store lacks, each read back and compared before it counts; retention
    /// and garbage collection then delete from both stores, and an object
    /// leaves the second store only when no backup kept there needs it.
    /// Encrypted data is copied as it is: the second store never needs keys.
    /// Restores read the second copy when asked to, or when the first store
    /// fails them; `ekko-manage catalog rebuild --from-replica` rebuilds the
    /// catalog from it alone.
    pub struct ReplicationOptions in "replication" {
        /// `none`, `local` (a directory: `[replica_local_store]`) or `s3`
        /// (`[replica_s3]`). Every process that restores needs it too (the
        /// compute hosts that may read the second copy).
        pub backend: ReplicaBackend = ReplicaBackend::None;
        /// The second store's name in the API. The catalog keys its copies by
        /// this name and the store's location: pointing replication at another
        /// store copies everything again.
        pub name: String = s("offsite");
        /// Seconds between replication passes of ekko-retention.
        pub interval: u64 = 300;
        /// Objects copied at once.
        pub concurrency: u32 = 4;
    }
}

option_group_alias! {
    /// `[replica_local_store]`: the second store as a directory (`[replication]
    /// backend = local`), options as `[local_store]`.
    pub struct ReplicaLocalStoreOptions in "replica_local_store" as LocalStoreOptions;
}

option_group_alias! {
    /// `[replica_s3]`: the second store on S3 (`[replication] backend = s3`),
    /// options as `[s3]`; buckets are named as in the first store.
    pub struct ReplicaS3Options in "replica_s3" as S3Options;
}

option_group! {
    /// `[backup]`: the backup engine and the ekko-backup worker.
    pub struct BackupOptions in "backup" {
        /// Size of the fixed, aligned chunks a disk is cut into (power of two).
        pub chunk_size: ByteSize = ByteSize::kib(256);
        /// Target size of the segment objects chunks are packed into.
        pub segment_size: ByteSize = ByteSize::mib(32);
        /// zstd compression level (negative levels are faster).
        pub compression_level: i64 = 1;
        /// Directory for fleecing overlays (copy-before-write data of guest
        /// writes made while a backup runs).
        pub scratch_dir: String = s("$state_path/scratch");
        /// Largest scratch space one backup may use; it fails (the guest does
        /// not) when the space runs out. 0 means only the disk's free space.
        pub scratch_limit: ByteSize = ByteSize::gib(16);
        /// Read rate limit per backup in bytes per second; 0 means unlimited.
        pub read_rate_limit: ByteSize = ByteSize(0);
        /// NBD read requests (1 MiB each) in flight per disk. Measured on
        /// qemu-storage-daemon (`cargo bench --bench extract`): 8 to 16 read
        /// fastest; fewer leave the server idle, more only thrash caches.
        pub nbd_requests_in_flight: u32 = 8;
        /// Before a disk is read in full (a new instance, or a lost
        /// bitmap), load the maps of up to this many of the project's other
        /// disk heads and reuse their chunks (instances booted from one
        /// image share most of their data). 0 disables cross-disk dedup.
        pub dedup_heads: u32 = 8;
        /// Memory one disk's backup may spend on its dedup tables: the
        /// chunks of the project's heads it may reuse (at most half) and
        /// the chunks it stored itself. 40 bytes per chunk: the default
        /// remembers 1.6 million chunks (400 GiB of 256 KiB chunks). A
        /// chunk forgotten is stored again, never lost.
        pub dedup_memory: ByteSize = ByteSize::mib(64);
        /// Memory a backup, restore or verify may spend on cached segment
        /// trailers (where each record is); the least recently used go
        /// first.
        pub trailer_cache: ByteSize = ByteSize::mib(32);
        /// Map leaves (64 chunks each) a restore or verify plans and
        /// fetches at a time: its memory grows with this, not with the
        /// disk. A chunk shared across windows is fetched once per window.
        pub restore_window: u32 = 1024;
        /// Backups run at the same time on this host.
        pub max_concurrent_backups: u32 = 2;
        /// Seconds a backup may run before it is cancelled.
        pub job_timeout: u64 = 21600;
        /// Seconds a running job may go without a progress report before the
        /// conductor fails it (its worker or host is gone).
        pub job_stall_timeout: u64 = 300;
        /// Seconds ekko-backup lets running backups finish on SIGTERM before it
        /// rolls them back (they run again after restart).
        pub shutdown_timeout: u64 = 300;
        /// Directory restores to files are written under (restore targets are
        /// paths relative to it). A file is created new (an existing one is
        /// never overwritten), mode 0600, and never through a symbolic link
        /// below this directory; this path itself may be a link.
        pub restore_dir: String = s("$state_path/restores");
        /// Seconds between this worker's heartbeats.
        pub heartbeat_interval: u64 = 10;
        /// Where this host's instances come from: `libvirt` on a Nova compute
        /// host (the domains libvirt runs, see `[libvirt]`), `qmp` for QEMU
        /// processes whose QMP sockets are given by `instances` and
        /// `discovery_dir` (hosts without libvirt, the single-machine default).
        pub instance_source: InstanceSource = InstanceSource::Qmp;
        /// Instances this host serves, as `instance_id:project_id:qmp_socket`
        /// entries.
        pub instances: CommaList = CommaList::default();
        /// Directory scanned for `<instance_id>.json` files describing instances
        /// (QMP socket, project, optional guest agent socket).
        pub discovery_dir: Option<String> = None;
        /// Compute hosts connect to the message bus as users of their own,
        /// `<host_bus_user_prefix><host>`, allowed only their own queues
        /// (README, "Message bus users"): the conductor then takes a report
        /// only from the user of the host it names. Off, hosts share a bus
        /// user and a host's reports are checked against the catalog but
        /// taken at their word about which host sent them.
        pub host_bus_users: bool = false;
        /// The bus user name of a compute host is this prefix and its name.
        pub host_bus_user_prefix: String = s("ekko-host-");
        /// Largest status message the conductor reads (a heartbeat, an
        /// inventory, a finished job's report); a larger one is
        /// dead-lettered unread, so no host can make the conductor parse
        /// (and hold in memory) an arbitrarily large report. ekko-backup
        /// sends its inventory in pages of at most a quarter of this. A
        /// finished backup's report lists its new segments: about 2 MiB
        /// per TiB of new stored data, so raise this where one backup
        /// writes more than 4 TiB. Keep RabbitMQ's `max_message_size` near
        /// it. At least 16K.
        pub max_report_size: ByteSize = ByteSize::mib(8);
    }
}

option_group! {
    /// `[libvirt]`: the instances of a Nova compute host, through libvirt
    /// (`[backup] instance_source = libvirt`). libvirt0 is loaded at run time,
    /// only by an ekko-backup configured so.
    pub struct LibvirtOptions in "libvirt" {
        /// The libvirt daemon to ask, as Nova's `[libvirt] connection_uri`.
        pub connection_uri: String = s("qemu:///system");
        /// Also back up domains Nova did not define (no `nova:instance`
        /// metadata); they are billed to `unmanaged_project_id`. Off, such
        /// domains are left alone.
        pub include_unmanaged: bool = false;
        /// The project that owns domains without Nova metadata (needed with
        /// `include_unmanaged`).
        pub unmanaged_project_id: String = s("");
        /// Seconds the guest agent may take to freeze (or thaw) the guest's
        /// file systems around the start of a backup.
        pub quiesce_timeout: u64 = 10;
        /// A domain with a guest agent channel (Nova adds one for images with
        /// `hw_qemu_guest_agent=yes`) must be frozen for its backup: a
        /// failed freeze fails the backup instead of making it
        /// crash-consistent. Domains without the channel are always backed
        /// up crash-consistent.
        pub require_quiesce: bool = false;
        /// Seconds ekko-backup waits for a libvirt call: one that takes
        /// longer fails (its thread is left waiting for libvirt), so a hung
        /// libvirtd or QEMU monitor fails what needs it, not the worker, and
        /// until that call returns, calls for the same domain fail at once.
        /// Beginning or ending a backup job, or cleaning up after one, may
        /// take three times this plus `quiesce_timeout`.
        pub job_timeout: u64 = 60;
    }
}

option_group! {
    /// `[retention]`: ekko-retention, expiry and garbage collection.
    pub struct RetentionOptions in "retention" {
        /// Seconds between retention passes.
        pub interval: u64 = 3600;
        /// Seconds an unreferenced segment waits before it is deleted; must
        /// exceed the longest backup or restore (`[backup] job_timeout` and
        /// `job_stall_timeout`): a shorter one is refused at start-up.
        pub gc_grace_period: u64 = 86400;
        /// Seconds after which a disk its (live) host no longer reports is
        /// retired: its instance was deleted or the disk detached. Its
        /// backups then follow the retention rules like any other, and the
        /// data only they hold is reclaimed.
        pub retire_after: u64 = 604800;
        /// Segments whose live share falls below this fraction are compacted.
        pub compaction_threshold: f64 = 0.5;
        /// Share of segments (percent) re-read and checked by each scrub pass.
        pub scrub_percentage: f64 = 1.0;
    }
}

option_group! {
    /// `[quota]`: default per-project limits (an admin sets others with
    /// `PUT /v1/quotas/{project_id}`); -1 means unlimited.
    pub struct QuotaOptions in "quota" {
        /// Backups a project may keep (queued, running, available or failed).
        pub backups: i64 = 1000;
        /// GiB of backup data a project may store (bytes each backup stored).
        pub backup_gigabytes: i64 = 10240;
    }
}

option_group! {
    /// `[encryption]`: encryption at rest (docs/format.md, "Encryption").
    pub struct EncryptionOptions in "encryption" {
        /// Encrypt the data of projects that have no key yet: each gets a
        /// random key, wrapped by the master key; its chunks, index pages
        /// and manifests are sealed (AES-256-GCM) and its chunk identities
        /// keyed. Projects that already have a key stay encrypted whatever
        /// this says.
        pub enabled: bool = false;
        /// File holding the master key (64 hex digits, mode 0600; `ekko-manage
        /// key generate` writes one). Needed by every process that reads
        /// or writes encrypted data; a key that did not wrap the catalog's
        /// project keys is refused at start.
        pub master_key_file: String = s("");
        /// How projects that get their key from now on are sealed:
        /// `symmetric` (one data key; hosts get the project key in their jobs
        /// and need the master key) or `public_key` (chunks are sealed to the
        /// project's public key: compute hosts get only write keys, wrapped by
        /// the host key, and cannot read any backup; restores run where the
        /// master key is). A project keeps the mode its key was created with.
        pub mode: EncryptionMode = EncryptionMode::Symmetric;
        /// File holding the host key (same format as the master key; never the
        /// master key itself), in public-key mode: the controller wraps each
        /// job's write keys with it, compute hosts open them with it. Compute
        /// hosts then need no master_key_file.
        pub host_key_file: String = s("");
        /// Public-key mode, on the controller: a directory holding one host
        /// key per compute host, `<host>.key` (`ekko-manage key generate`),
        /// so each job's write keys are wrapped with its own host's key and
        /// a host's key opens none of another host's jobs. Each compute host
        /// then has its own key as host_key_file. Empty: host_key_file wraps
        /// every host's jobs.
        pub host_keys_dir: String = s("");
        /// Public-key mode: the host that runs restores which name no host
        /// (it must hold the master key). Empty: the instance's host.
        pub restore_host: String = s("");
    }
}

/// All sections, in the order of the sample file.
pub fn all_options() -> Vec<OptionInfo> {
    let mut all = DefaultOptions::describe();
    all.extend(ApiOptions::describe());
    all.extend(DatabaseOptions::describe());
    all.extend(KeystoneAuthtokenOptions::describe());
    all.extend(OsloPolicyOptions::describe());
    all.extend(StorageOptions::describe());
    all.extend(SwiftOptions::describe());
    all.extend(S3Options::describe());
    all.extend(LocalStoreOptions::describe());
    all.extend(ReplicationOptions::describe());
    all.extend(ReplicaLocalStoreOptions::describe());
    all.extend(ReplicaS3Options::describe());
    all.extend(GlanceOptions::describe());
    all.extend(ExportOptions::describe());
    all.extend(BackupOptions::describe());
    all.extend(LibvirtOptions::describe());
    all.extend(RetentionOptions::describe());
    all.extend(QuotaOptions::describe());
    all.extend(EncryptionOptions::describe());
    all.extend(OsloMiddlewareOptions::describe());
    all.extend(HealthcheckOptions::describe());
    all.extend(MetricsOptions::describe());
    all
}

impl ExportOptions {
    /// The export server's TLS identity; `None` when no certificate is set.
    pub fn server_tls(&self) -> Result<Option<crate::tls::ServerTls>, String> {
        let (cert, key, ca) = (&self.tls_cert_file, &self.tls_key_file, &self.tls_ca_file);
        match (cert.is_empty(), key.is_empty()) {
            (true, true) if ca.is_empty() => Ok(None),
            (true, _) | (_, true) => Err(
                "[export] tls_cert_file and tls_key_file go together (tls_ca_file needs them)"
                    .into(),
            ),
            _ => crate::tls::ServerTls::from_files(
                std::path::Path::new(cert),
                std::path::Path::new(key),
                (!ca.is_empty()).then(|| std::path::Path::new(ca.as_str())),
            )
            .map(Some),
        }
    }

    /// The ports exports may bind, as an inclusive range; `None`: any.
    pub fn ports(&self) -> Result<Option<(u16, u16)>, String> {
        let r = self.port_range.trim();
        if r.is_empty() {
            return Ok(None);
        }
        let bad = || format!("[export] port_range {r:?} is not FIRST-LAST (ports 1 to 65535)");
        let (a, b) = r.split_once('-').ok_or_else(bad)?;
        let (a, b): (u16, u16) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a == 0 || a > b {
            return Err(bad());
        }
        Ok(Some((a, b)))
    }
}
