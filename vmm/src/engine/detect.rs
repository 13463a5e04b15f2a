//! What virtualization this host offers: real KVM (kvm_intel / kvm_amd),
//! PVM (`kvm_pvm`: a paravirtual KVM that cannot run an unmodified guest's
//! user space), or none.

use std::path::Path;

/// The kind of KVM on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware-assisted KVM on Intel VT-x.
    Intel,
    /// Hardware-assisted KVM on AMD-V.
    Amd,
    /// The PVM paravirtual KVM (no vmx/svm in the CPU flags).
    Pvm,
    /// `/dev/kvm` exists but the module is unknown.
    Unknown,
    /// No usable `/dev/kvm`.
    None,
}

impl KvmKind {
    /// Name as `hutch doctor` prints it.
    pub fn name(self) -> &'static str {
        match self {
            KvmKind::Intel => "kvm_intel",
            KvmKind::Amd => "kvm_amd",
            KvmKind::Pvm => "pvm",
            KvmKind::Unknown => "kvm (unknown module)",
            KvmKind::None => "none",
        }
    }

    /// Whether a full guest (kernel and user space) runs on it.
    pub fn runs_guests(self) -> bool {
        matches!(self, KvmKind::Intel | KvmKind::Amd | KvmKind::Unknown)
    }
}

/// Facts the decision is made from (separate so it can be tested).
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub dev_kvm_usable: bool,
    pub modules: Vec<String>,
    pub cpu_has_vmx: bool,
    pub cpu_has_svm: bool,
}

impl HostFacts {
    /// Reads this host's facts.
    pub fn probe() -> Self {
        let modules = ["kvm_intel", "kvm_amd", "kvm_pvm"]
            .iter()
            .filter(|m| Path::new("/sys/module").join(m).exists())
            .map(|m| m.to_string())
            .collect();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .unwrap_or("")
            .to_string();
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        let dev_kvm_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        Self {
            dev_kvm_usable,
            modules,
            cpu_has_vmx: has("vmx"),
            cpu_has_svm: has("svm"),
        }
    }

    /// Classifies the facts.
    pub fn kind(&self) -> KvmKind {
        if !self.dev_kvm_usable {
            return KvmKind::None;
        }
        let m = |n: &str| self.modules.iter().any(|x| x == n);
        if m("kvm_pvm") && !self.cpu_has_vmx && !self.cpu_has_svm {
            KvmKind::Pvm
        } else if m("kvm_intel") {
            KvmKind::Intel
        } else if m("kvm_amd") {
            KvmKind::Amd
        } else if m("kvm_pvm") {
            KvmKind::Pvm
        } else {
            KvmKind::Unknown
        }
    }
}

/// Path of `qemu-system-x86_64` (or `$HUTCH_QEMU`), if there is one.
pub fn find_qemu() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("HUTCH_QEMU") {
        let p = std::path::PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(usable: bool, modules: &[&str], vmx: bool, svm: bool) -> HostFacts {
        HostFacts {
            dev_kvm_usable: usable,
            modules: modules.iter().map(|s| s.to_string()).collect(),
            cpu_has_vmx: vmx,
            cpu_has_svm: svm,
        }
    }

    #[test]
    fn classifies_hosts() {
        assert_eq!(
            facts(false, &["kvm_intel"], true, false).kind(),
            KvmKind::None
        );
        assert_eq!(
            facts(true, &["kvm_intel"], true, false).kind(),
            KvmKind::Intel
        );
        assert_eq!(facts(true, &["kvm_amd"], false, true).kind(), KvmKind::Amd);
        assert_eq!(facts(true, &["kvm_pvm"], false, false).kind(), KvmKind::Pvm);
        assert_eq!(facts(true, &[], false, false).kind(), KvmKind::Unknown);
        // PVM loaded next to a real module on a host with VT-x: real KVM wins.
        assert_eq!(
            facts(true, &["kvm_intel", "kvm_pvm"], true, false).kind(),
            KvmKind::Intel
        );
    }

    #[test]
    fn only_real_kvm_runs_guests() {
        assert!(KvmKind::Intel.runs_guests());
        assert!(!KvmKind::Pvm.runs_guests());
        assert!(!KvmKind::None.runs_guests());
    }
}
