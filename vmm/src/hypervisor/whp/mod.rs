//! WHP backend (being written).
