//! Architecture-specific boot: guest memory layout, boot protocols and CPU state.

#[cfg(feature = "aarch64")]
pub mod aarch64;
pub mod x86_64;
