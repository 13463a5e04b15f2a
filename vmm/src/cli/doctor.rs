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
