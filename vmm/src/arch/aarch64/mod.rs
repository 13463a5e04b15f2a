//! arm64 boot (being written).
