use super::*;
use crate::arch::aarch64::fdt_reader::{parse, Node};

fn config() -> FdtConfig {
    FdtConfig {
        cpus: 2,
        memory_size: 512 << 20,
        cmdline: "console=ttyAMA0 panic=-1".into(),
        initrd: Some((0x5f00_0000, 0x12345)),
        virtio_mmio: vec![
            (layout::virtio_mmio_addr(0), layout::virtio_mmio_spi(0)),
            (layout::virtio_mmio_addr(1), layout::virtio_mmio_spi(1)),
        ],
    }
}

fn tree(cfg: &FdtConfig) -> Node {
    parse(&create_fdt(cfg).expect("create_fdt"))
}

#[test]
fn root_is_a_dummy_virt_with_64_bit_cells() {
    let t = tree(&config());
    assert_eq!(t.name, "");
    assert_eq!(t.string("compatible"), "linux,dummy-virt");
    assert_eq!(t.u32("#address-cells"), 2);
    assert_eq!(t.u32("#size-cells"), 2);
    assert_eq!(t.u32("interrupt-parent"), GIC_PHANDLE);
}

#[test]
fn one_psci_cpu_node_per_vcpu_with_its_mpidr() {
    let t = tree(&FdtConfig {
        cpus: 18,
        ..config()
    });
    let cpus = t.at("/cpus").unwrap();
    assert_eq!(cpus.u32("#address-cells"), 1);
    assert_eq!(cpus.u32("#size-cells"), 0);
    assert_eq!(cpus.children.len(), 18);
    for id in 0..18u8 {
        let mpidr = layout::mpidr(id);
        let cpu = t.at(&format!("/cpus/cpu@{mpidr:x}")).unwrap();
        assert_eq!(cpu.string("device_type"), "cpu");
        assert_eq!(cpu.strings("compatible"), ["arm,cortex-a57", "arm,armv8"]);
        assert_eq!(cpu.string("enable-method"), "psci");
        assert_eq!(u64::from(cpu.u32("reg")), mpidr);
    }
    // vCPU 16 starts the second cluster.
    assert!(t.at("/cpus/cpu@100").is_some());
}

#[test]
fn psci_uses_hvc() {
    let t = tree(&config());
    let p = t.at("/psci").unwrap();
    assert_eq!(p.strings("compatible"), ["arm,psci-1.0", "arm,psci-0.2"]);
    assert_eq!(p.string("method"), "hvc");
}

#[test]
fn memory_starts_at_1gib() {
    let t = tree(&config());
    let m = t.at("/memory@40000000").unwrap();
    assert_eq!(m.string("device_type"), "memory");
    assert_eq!(m.u64s("reg"), [0x4000_0000, 512 << 20]);
}

#[test]
fn chosen_has_bootargs_initrd_and_stdout() {
    let t = tree(&config());
    let c = t.at("/chosen").unwrap();
    assert_eq!(c.string("bootargs"), "console=ttyAMA0 panic=-1");
    assert_eq!(c.u64s("linux,initrd-start"), [0x5f00_0000]);
    assert_eq!(c.u64s("linux,initrd-end"), [0x5f01_2345]);
    let stdout = c.string("stdout-path");
    assert_eq!(stdout, "/pl011@9000000");
    assert!(t.at(&stdout).is_some(), "stdout-path names a real node");

    let no_initrd = tree(&FdtConfig {
        initrd: None,
        ..config()
    });
    let c = no_initrd.at("/chosen").unwrap();
    assert!(!c.has("linux,initrd-start") && !c.has("linux,initrd-end"));
}

#[test]
fn gic_v3_covers_distributor_and_every_redistributor() {
    let t = tree(&FdtConfig {
        cpus: 4,
        ..config()
    });
    let g = t.at("/intc@8000000").unwrap();
    assert_eq!(g.string("compatible"), "arm,gic-v3");
    assert!(g.has("interrupt-controller"));
    assert!(g.prop("interrupt-controller").is_empty());
    assert_eq!(g.u32("#interrupt-cells"), 3);
    assert_eq!(g.u32("#address-cells"), 2);
    assert!(g.has("ranges"));
    assert_eq!(
        g.u64s("reg"),
        [0x0800_0000, 0x1_0000, 0x080a_0000, 4 * 0x2_0000]
    );
    assert_eq!(g.u32("phandle"), GIC_PHANDLE);
}

#[test]
fn timer_has_the_four_ppis_and_is_always_on() {
    let t = tree(&config());
    let tm = t.at("/timer").unwrap();
    assert_eq!(tm.string("compatible"), "arm,armv8-timer");
    assert_eq!(
        tm.u32s("interrupts"),
        [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
    );
    assert!(tm.has("always-on"));
}

#[test]
fn uart_is_a_pl011_with_its_clock() {
    let t = tree(&config());
    let u = t.at("/pl011@9000000").unwrap();
    assert_eq!(u.strings("compatible"), ["arm,pl011", "arm,primecell"]);
    assert_eq!(u.u64s("reg"), [0x0900_0000, 0x1000]);
    assert_eq!(u.u32s("interrupts"), [GIC_SPI, 1, IRQ_TYPE_LEVEL_HIGH]);
    assert_eq!(u.u32s("clocks"), [CLOCK_PHANDLE, CLOCK_PHANDLE]);
    assert_eq!(u.strings("clock-names"), ["uartclk", "apb_pclk"]);

    let clk = t.at("/apb-pclk").unwrap();
    assert_eq!(clk.string("compatible"), "fixed-clock");
    assert_eq!(clk.u32("#clock-cells"), 0);
    assert_eq!(clk.u32("clock-frequency"), 24_000_000);
    assert_eq!(clk.string("clock-output-names"), "clk24mhz");
    assert_eq!(clk.u32("phandle"), CLOCK_PHANDLE);
}

#[test]
fn virtio_mmio_nodes_are_edge_spis() {
    let t = tree(&config());
    for (i, (addr, spi)) in [(0x0a00_0000u64, 16u32), (0x0a00_0200, 17)]
        .into_iter()
        .enumerate()
    {
        let v = t.at(&format!("/virtio_mmio@{addr:x}")).unwrap();
        assert_eq!(v.string("compatible"), "virtio,mmio", "window {i}");
        assert_eq!(v.u64s("reg"), [addr, 0x200]);
        assert_eq!(v.u32s("interrupts"), [GIC_SPI, spi, IRQ_TYPE_EDGE_RISING]);
        assert!(v.has("dma-coherent"));
    }
    let none = tree(&FdtConfig {
        virtio_mmio: vec![],
        ..config()
    });
    assert!(!none.children.iter().any(|c| c.name.starts_with("virtio")));
}

#[test]
fn every_node_is_present_and_nothing_else() {
    let t = tree(&config());
    let mut names: Vec<&str> = t.children.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "apb-pclk",
            "chosen",
            "cpus",
            "intc@8000000",
            "memory@40000000",
            "pl011@9000000",
            "psci",
            "timer",
            "virtio_mmio@a000000",
            "virtio_mmio@a000200",
        ]
    );
}

#[test]
fn bad_configs_are_refused_with_what_is_wrong() {
    let e = create_fdt(&FdtConfig {
        cpus: 0,
        ..config()
    })
    .unwrap_err();
    assert!(matches!(e, FdtError::Cpus(0)), "{e}");
    let e = create_fdt(&FdtConfig {
        cpus: layout::MAX_VCPUS + 1,
        ..config()
    })
    .unwrap_err();
    assert!(e.to_string().contains("124 vCPUs"), "{e}");
    assert!(matches!(
        create_fdt(&FdtConfig {
            memory_size: 0,
            ..config()
        }),
        Err(FdtError::MemorySize(0))
    ));
    let e = create_fdt(&FdtConfig {
        initrd: Some((0x3000_0000, 4096)),
        ..config()
    })
    .unwrap_err();
    assert!(e.to_string().contains("0x30000000"), "{e}");
    assert!(matches!(
        create_fdt(&FdtConfig {
            initrd: Some((0x5fff_f000, 0x2000)),
            ..config()
        }),
        Err(FdtError::InitrdOutsideRam { .. })
    ));
    let e = create_fdt(&FdtConfig {
        virtio_mmio: vec![(0x0a00_0000, 988)],
        ..config()
    })
    .unwrap_err();
    assert!(e.to_string().contains("0xa000000"), "{e}");
    let e = create_fdt(&FdtConfig {
        cmdline: "a\0b".into(),
        ..config()
    })
    .unwrap_err();
    assert!(e.to_string().contains("/chosen"), "{e}");
}

#[test]
fn the_largest_machine_fits() {
    let blob = create_fdt(&FdtConfig {
        cpus: layout::MAX_VCPUS,
        memory_size: layout::MAX_RAM_SIZE,
        cmdline: "x".repeat(4096),
        initrd: None,
        virtio_mmio: (0..layout::VIRTIO_MMIO_COUNT)
            .map(|i| (layout::virtio_mmio_addr(i), layout::virtio_mmio_spi(i)))
            .collect(),
    })
    .unwrap();
    assert!(blob.len() as u64 <= layout::FDT_MAX_SIZE);
    let t = parse(&blob);
    assert_eq!(t.at("/cpus").unwrap().children.len(), 123);
}

/// Cross-checks the blob with `dtc` where device-tree-compiler is installed:
/// it must decompile with no warnings (dtc checks phandles, unit names
/// against `reg`, interrupt cells, ...). Skipped where `dtc` is absent.
#[test]
fn dtc_accepts_the_blob_without_warnings() {
    let Ok(version) = std::process::Command::new("dtc").arg("--version").output() else {
        eprintln!("dtc not installed; skipping (apt-get install device-tree-compiler)");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hutch.dtb");
    std::fs::write(&path, create_fdt(&config()).unwrap()).unwrap();
    let out = std::process::Command::new("dtc")
        .args(["-I", "dtb", "-O", "dts"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dts = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dtc failed: {stderr}");
    assert!(stderr.trim().is_empty(), "dtc warnings: {stderr}\n{dts}");
    assert!(dts.contains("compatible = \"arm,gic-v3\";"), "{dts}");
    assert!(dts.contains("stdout-path = \"/pl011@9000000\";"), "{dts}");
}
