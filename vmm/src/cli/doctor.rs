//! `hutch doctor`: what this host can run.

use crate::engine::{self, detect, EngineKind};

/// Prints the report; exits 1 when no engine can run a guest.
pub fn main() -> i32 {
    let facts = detect::HostFacts::probe();
    let kvm = facts.kind();
    let qemu = detect::find_qemu();
    println!(
        "kvm:    {} (/dev/kvm {}; modules: {}; cpu flags: {})",
        kvm.name(),
        if facts.dev_kvm_usable {
            "usable"
        } else {
            "not usable"
        },
        if facts.modules.is_empty() {
            "none".to_string()
        } else {
            facts.modules.join(", ")
        },
        match (facts.cpu_has_vmx, facts.cpu_has_svm) {
            (true, _) => "vmx",
            (_, true) => "svm",
            _ => "no vmx/svm",
        }
    );
    if kvm == detect::KvmKind::Pvm {
        println!("        PVM runs hutch's VMM and a guest kernel but not guest user space: `hutch selftest --engine native` tests it");
    }
    match &qemu {
        Some(q) => {
            let version = std::process::Command::new(q)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.lines().next().map(str::to_string))
                .unwrap_or_else(|| "version unknown".into());
            println!("qemu:   {} ({version})", q.display());
        }
        None => println!("qemu:   not found (apt-get install -y qemu-system-x86)"),
    }
    match crate::kernel::cached() {
        Ok(Some(k)) => println!("kernel: {} (built)", k.dir.display()),
        Ok(None) => match crate::kernel::cache_dir() {
            Ok(d) => println!("kernel: not built yet; `hutch kernel build` or the first `hutch run` builds it into {}", d.display()),
            Err(e) => println!("kernel: {e}"),
        },
        Err(e) => println!("kernel: {e}"),
    }
    println!(
        "fs:     {}",
        match crate::devices::virtio::fs::landlock::abi() {
            Some(abi) => format!(
                "Landlock ABI {abi}: the qemu engine's file system backends are confined to their shares"
            ),
            None => "no Landlock in this kernel: file system backends rely on hutch's own path checks"
                .to_string(),
        }
    );
    for line in backends(kvm) {
        println!("{line}");
    }
    match engine::resolve(EngineKind::Auto, kvm, qemu.is_some()) {
        Ok((r, _)) => {
            println!("engine: auto picks {}", r.name());
            0
        }
        Err(e) => {
            println!("engine: none: {e}");
            1
        }
    }
}

/// Which hypervisor backend this build would use here, and why not the others.
pub fn backends(kvm: detect::KvmKind) -> Vec<String> {
    let compiled = |feature: bool| {
        if feature {
            "compiled in"
        } else {
            "not compiled in"
        }
    };
    let kvm_line = if cfg!(target_os = "linux") {
        match kvm {
            k if k.runs_guests() => format!("backend: kvm (in use: /dev/kvm is {})", k.name()),
            detect::KvmKind::Pvm => {
                "backend: kvm (PVM: guest kernel only; full guests go to the qemu engine)"
                    .to_string()
            }
            _ => "backend: kvm not usable (no /dev/kvm); full guests go to the qemu engine"
                .to_string(),
        }
    } else {
        "backend: kvm: Linux only".to_string()
    };
    let whp = if cfg!(target_os = "windows") {
        format!(
            "backend: whp: Windows Hypervisor Platform ({})",
            compiled(cfg!(feature = "whp"))
        )
    } else {
        format!(
            "backend: whp: Windows only ({}, feature `whp`)",
            compiled(cfg!(feature = "whp"))
        )
    };
    let hvf = if cfg!(all(target_os = "macos", target_arch = "aarch64")) {
        format!(
            "backend: hvf: Hypervisor.framework ({})",
            compiled(cfg!(feature = "hvf"))
        )
    } else {
        format!(
            "backend: hvf: macOS on Apple silicon only ({}, feature `hvf`)",
            compiled(cfg!(feature = "hvf"))
        )
    };
    vec![kvm_line, whp, hvf]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_backend_and_why() {
        let lines = backends(detect::KvmKind::Pvm);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("PVM"));
        assert!(lines[1].contains("Windows"));
        assert!(lines[2].contains("macOS"));
        assert!(backends(detect::KvmKind::Intel)[0].contains("in use"));
    }
}
