use super::*;

#[test]
fn nearest_rank_percentiles() {
    let v: Vec<u64> = (1..=100).collect();
    assert_eq!(
        [50.0, 90.0, 99.0, 100.0].map(|p| percentile(&v, p)),
        [50, 90, 99, 100]
    );
    assert_eq!(percentile(&[10, 20, 30], 50.0), 20);
    assert_eq!(percentile(&[10, 20, 30], 99.0), 30);
    assert_eq!(percentile(&[10, 20, 30], 1.0), 10);
    assert_eq!(percentile(&[7], 90.0), 7);
    assert_eq!(percentile(&[], 50.0), 0);
}

#[test]
fn medians() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    assert_eq!(median(&[]), 0.0);
}

#[test]
fn phase_figures_from_latencies() {
    let lat: Vec<u64> = (1..=1000).rev().map(|i| i * 1000).collect();
    let s = PhaseStats::from_latencies(lat, Duration::from_millis(500));
    assert_eq!(s.count, 1000);
    assert_eq!(s.ops_per_s, 2000.0);
    assert_eq!((s.p50, s.p90, s.p99), (500.0, 900.0, 990.0));
    let m = PhaseStats::median_of(&[
        s,
        PhaseStats {
            ops_per_s: 1000.0,
            ..s
        },
        PhaseStats {
            ops_per_s: 4000.0,
            ..s
        },
    ]);
    assert_eq!(m.ops_per_s, 2000.0);
}

#[test]
fn table_has_the_ratio_of_the_first_server_to_the_second() {
    let s = |ops_per_s| PhaseStats {
        count: 1,
        ops_per_s,
        p50: 12.34,
        p90: 150.0,
        p99: 2000.0,
    };
    let rows = [Row {
        op: "LOOKUP".into(),
        depth: 16,
        servers: vec![s(2000.0), s(1000.0)],
    }];
    let t = table(&["hutch".into(), "virtiofsd".into()], &rows);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0].ends_with("| hutch/virtiofsd ops/s |"),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[2],
        "| LOOKUP | 16 | 2000 | 12.3 / 150 / 2000 | 1000 | 12.3 / 150 / 2000 | 2.00 |"
    );
}
