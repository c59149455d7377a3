//! x86_64: AES-256-GCM on AVX-512 with VAES and VPCLMULQDQ.

pub mod aes_gcm;
