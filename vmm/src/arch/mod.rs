//! Architecture-specific boot: guest memory layout, boot protocols and CPU state.

pub mod x86_64;
