//! A Nova-like instance on the test environment's libvirtd (TCG): a domain
//! defined as Nova defines one (`nova:instance` metadata, uuid = server
//! id), vda a qcow2 overlay on a raw base image in `_base/`, vdb a plain
//! qcow2, vdc a raw file, a guest agent channel with no agent behind it.
//!
//! The guest boots nothing (no OS writes its disks): the test writes from
//! the host side through the monitor (`qemu-io`, tests only: it taints the
//! domain) and keeps a model of every disk (a raw file it applies the same
//! writes to), so "the disk at a backup's instant" is the model copied at
//! that instant; at the end the model is compared with the real images.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::qsd::identical;

pub const MIB: u64 = 1 << 20;

pub fn virsh(uri: &str, args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("run virsh")
}

pub fn virsh_ok(uri: &str, args: &[&str]) -> String {
    let o = virsh(uri, args);
    assert!(
        o.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run command");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One disk of the instance.
pub struct VmDisk {
    pub target: &'static str,
    pub path: PathBuf,
    pub format: &'static str,
    pub size: u64,
    /// What the guest reads from the disk now.
    pub model: PathBuf,
}

pub struct NovaVm {
    pub uri: String,
    pub name: String,
    pub uuid: String,
    pub project: String,
    pub dir: PathBuf,
    pub disks: Vec<VmDisk>,
    xml: PathBuf,
    armed: bool,
}

/// Deterministic bytes (xorshift), so a failure can be replayed.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

impl NovaVm {
    /// Define and start the instance in `dir` (which QEMU must be able to
    /// reach: mode 0755 all the way up). `qcow2_only`: vda only.
    pub fn start(uri: &str, dir: &Path, project: &str, qcow2_only: bool) -> NovaVm {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let base_dir = dir.join("_base");
        std::fs::create_dir_all(&base_dir).unwrap();
        std::fs::set_permissions(&base_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // vda: the image (8 MiB of data, then zeros) as a raw base, and the
        // instance's qcow2 overlay on it, as Nova lays them out.
        let vda_size = 32 * MIB;
        let base = base_dir.join("5f0c1b9e2a7d");
        let data = pseudo_random(8 * MIB as usize, 0x5eed);
        std::fs::write(&base, &data).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&base)
            .unwrap()
            .set_len(vda_size)
            .unwrap();
        let mut disks = vec![VmDisk {
            target: "vda",
            path: dir.join("disk"),
            format: "qcow2",
            size: vda_size,
            model: dir.join("model-vda.raw"),
        }];
        run_ok(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&base)
                .arg(&disks[0].path)
                .arg(vda_size.to_string()),
        );
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&base)
                .arg(&disks[0].model),
        );
        if !qcow2_only {
            let vdb = VmDisk {
                target: "vdb",
                path: dir.join("disk.eph0"),
                format: "qcow2",
                size: 16 * MIB,
                model: dir.join("model-vdb.raw"),
            };
            run_ok(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&vdb.path)
                    .arg(vdb.size.to_string()),
            );
            // vdc: a raw file, as a volume attached by path.
            let vdc = VmDisk {
                target: "vdc",
                path: dir.join("volume.raw"),
                format: "raw",
                size: 8 * MIB,
                model: dir.join("model-vdc.raw"),
            };
            std::fs::File::create(&vdc.path)
                .unwrap()
                .set_len(vdc.size)
                .unwrap();
            write_at(&vdc.path, MIB, &pseudo_random(MIB as usize, 0xc0ffee));
            for d in [&vdb, &vdc] {
                std::fs::File::create(&d.model)
                    .unwrap()
                    .set_len(d.size)
                    .unwrap();
            }
            write_at(&vdc.model, MIB, &pseudo_random(MIB as usize, 0xc0ffee));
            disks.push(vdb);
            disks.push(vdc);
        }
        let uuid = uuid::Uuid::new_v4().to_string();
        let name = format!("instance-{}", &uuid.replace('-', "")[..8]);
        let xml = dir.join("domain.xml");
        std::fs::write(&xml, domain_xml(&name, &uuid, project, &disks)).unwrap();
        let vm = NovaVm {
            uri: uri.to_string(),
            name,
            uuid,
            project: project.to_string(),
            dir: dir.to_path_buf(),
            disks,
            xml,
            armed: true,
        };
        virsh_ok(uri, &["define", &vm.xml.to_string_lossy()]);
        virsh_ok(uri, &["start", &vm.name]);
        vm
    }

    pub fn instance(&self) -> ekko::hypervisor::LocalInstance {
        ekko::hypervisor::LocalInstance {
            id: self.uuid.clone(),
            project_id: self.project.clone(),
            name: "ekko-nova-test".into(),
        }
    }

    /// A write from the host side into the running guest's disk `i`, and
    /// into its model.
    pub fn write(&self, i: usize, offset: u64, len: u64, byte: u8) {
        let dev = format!("/machine/peripheral/virtio-disk{i}/virtio-backend");
        let cmd = format!("qemu-io -d {dev} \"write -P {byte:#04x} {offset} {len}\"");
        let out = virsh_ok(
            &self.uri,
            &["qemu-monitor-command", "--hmp", &self.name, &cmd],
        );
        assert!(!out.contains("rror"), "qemu-io: {out}");
        write_at(&self.disks[i].model, offset, &vec![byte; len as usize]);
    }

    /// The disks as the guest sees them now: copies of the models.
    pub fn expected(&self, tag: &str) -> Vec<PathBuf> {
        self.disks
            .iter()
            .map(|d| {
                let out = self.dir.join(format!("expected-{tag}-{}.raw", d.target));
                run_ok(
                    Command::new("cp")
                        .arg("--sparse=always")
                        .arg(&d.model)
                        .arg(&out),
                );
                out
            })
            .collect()
    }

    /// Nova's hard reboot: destroy, undefine (no flag: fails while libvirt
    /// keeps checkpoints), define, start.
    pub fn hard_reboot(&self) {
        virsh_ok(&self.uri, &["destroy", &self.name]);
        virsh_ok(&self.uri, &["undefine", &self.name]);
        virsh_ok(&self.uri, &["define", &self.xml.to_string_lossy()]);
        virsh_ok(&self.uri, &["start", &self.name]);
    }

    pub fn stop(&self) {
        virsh_ok(&self.uri, &["destroy", &self.name]);
    }

    pub fn start_again(&self) {
        virsh_ok(&self.uri, &["start", &self.name]);
    }

    /// Nova deletes the server: destroy and undefine, no flag.
    pub fn delete(&mut self) {
        let _ = virsh(&self.uri, &["destroy", &self.name]);
        virsh_ok(&self.uri, &["undefine", &self.name]);
        self.armed = false;
    }

    /// The bitmaps in a (stopped domain's) qcow2 image.
    pub fn bitmaps(&self, i: usize) -> Vec<String> {
        let out = run_ok(
            Command::new("qemu-img")
                .args(["info", "-U", "--output=json"])
                .arg(&self.disks[i].path),
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut names: Vec<String> = v["format-specific"]["data"]["bitmaps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Every disk's image (the domain stopped) equals its model: the
    /// models the backups were compared with are what the guest wrote.
    pub fn assert_models_match_images(&self) {
        for d in &self.disks {
            let actual = self.dir.join(format!("actual-{}.raw", d.target));
            run_ok(
                Command::new("qemu-img")
                    .args(["convert", "-U", "-f", d.format, "-O", "raw"])
                    .arg(&d.path)
                    .arg(&actual),
            );
            assert!(
                identical(&actual, &d.model),
                "{}: model and image differ",
                d.target
            );
            std::fs::remove_file(&actual).unwrap();
        }
    }
}

impl Drop for NovaVm {
    fn drop(&mut self) {
        if self.armed {
            for args in [
                vec!["domjobabort", self.name.as_str()],
                vec!["destroy", self.name.as_str()],
                vec!["undefine", self.name.as_str(), "--checkpoints-metadata"],
            ] {
                let _ = virsh(&self.uri, &args);
            }
        }
    }
}

fn domain_xml(name: &str, uuid: &str, project: &str, disks: &[VmDisk]) -> String {
    let disks: String = disks
        .iter()
        .map(|d| {
            format!(
                "    <disk type='file' device='disk'>\n      <driver name='qemu' type='{}' cache='none'/>\n      \
                 <source file='{}'/>\n      <target dev='{}' bus='virtio'/>\n    </disk>\n",
                d.format,
                d.path.display(),
                d.target
            )
        })
        .collect();
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="29.0.1"/>
      <nova:name>ekko-nova-test</nova:name>
      <nova:flavor name="m1.tiny"><nova:memory>128</nova:memory><nova:vcpus>1</nova:vcpus></nova:flavor>
      <nova:owner>
        <nova:user uuid="0b1c2d3e4f5a46b7c8d9e0f1a2b3c4d5">demo</nova:user>
        <nova:project uuid="{project}">demo</nova:project>
      </nova:owner>
    </nova:instance>
  </metadata>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{disks}    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='virtio'/>
  </devices>
</domain>
"#
    )
}
