//! arm64 extension traits (being written).
