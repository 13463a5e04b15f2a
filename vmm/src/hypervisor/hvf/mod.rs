//! HVF backend (being written).
