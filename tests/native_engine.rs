//! The native engine: `hutch selftest --engine native` boots hutch's own VMM
//! with the root file system mounted by the kernel through hutch's
//! virtio-fs on the MMIO transport, and must reach every milestone this
//! host can reach (on PVM: up to `/init` executed from the share).

use hutch_e2e::{kernel_ready, kvm_kind, report, Hutch};

#[test]
fn selftest_reaches_the_virtio_fs_root_milestone() {
    if kvm_kind() == "none" {
        report(
            "native_engine::selftest",
            "native SKIPPED (/dev/kvm is not usable)",
        );
        return;
    }
    kernel_ready();
    report(
        "native_engine::selftest",
        &format!("engine native on {}", kvm_kind()),
    );
    let o = Hutch::new(["selftest", "--engine", "native", "--time-limit", "400"]).output(None);
    let out = o.stdout_str();
    eprintln!("{out}");
    assert_eq!(o.status, 0, "selftest failed:\n{out}\n{}", o.stderr);
    for m in [
        "kernel banner on serial",
        "virtio-mmio devices probed",
        "virtio-fs root mounted",
        "/init executed from the share",
    ] {
        assert!(
            out.contains(&format!("reached: {m}")),
            "missing milestone {m}:\n{out}"
        );
    }
    if kvm_kind() != "pvm" {
        assert!(out.contains("reached: init running in user space"), "{out}");
    }
}

#[test]
fn qemu_selftest_runs_init_from_a_virtio_fs_root() {
    if hutch_e2e::unavailable(hutch_e2e::Engine::Qemu).is_some() {
        report("native_engine::qemu_selftest", "qemu SKIPPED (no qemu)");
        return;
    }
    kernel_ready();
    report("native_engine::qemu_selftest", "engine qemu");
    let o = Hutch::new(["selftest", "--engine", "qemu", "--time-limit", "120"]).output(None);
    let out = o.stdout_str();
    assert_eq!(o.status, 0, "{out}\n{}", o.stderr);
    assert!(out.contains("reached: init running in user space"), "{out}");
}
