//! CPU-specific code. Each piece is reached only through a safe type whose constructor checks
//! the CPU once; the portable behaviour it must match lives beside it (for AES-GCM: the `ring`
//! and `aes-gcm` backends, which the tests use as oracles).

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
