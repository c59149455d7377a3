//! Key id → AES-256 key, with one cipher per key of the configured backend.
//!
//! A key file holds one key per line: `ID KEY`, where ID is a decimal key id (1 to 2^32-1; 0 is
//! reserved) and KEY is 32 bytes as 64 hex digits or standard base64. Blank lines and lines
//! starting with `#` are ignored. Several ids are open at once, so keys rotate by adding the new
//! id, moving clients to it, then removing the old one.
//!
//! Key material is zeroized on drop and never printed: `Debug` shows ids only, and errors name
//! the file, the line and what was wrong, never a word of the line (a key and its id
//! swapped would otherwise put the key in a log). A key file readable or writable by group or
//! others is refused, as ssh refuses such a private key: `chmod 600` it.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::aead::{Aead, Backend, KEY_BYTES};

/// Keys by id, each with a ready cipher.
pub struct Keyring {
    backend: Backend,
    keys: hashbrown::HashMap<u32, KeyEntry>,
}

struct KeyEntry {
    secret: Zeroizing<[u8; KEY_BYTES]>,
    cipher: Box<dyn Aead>,
}

/// A key file that could not be read, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", path.as_deref().map_or("<keys>".into(), |p| p.display().to_string()))]
pub struct KeyFileError {
    pub path: Option<PathBuf>,
    /// 1-based line number; 0 when the file itself could not be read.
    pub line: usize,
    pub reason: String,
}

impl Keyring {
    /// An empty keyring whose ciphers use `backend`.
    pub fn new(backend: Backend) -> Self {
        Keyring {
            backend,
            keys: hashbrown::HashMap::new(),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Adds a key; an id already present is refused.
    pub fn insert(&mut self, id: u32, key: [u8; KEY_BYTES]) -> Result<(), String> {
        let key = Zeroizing::new(key);
        if id == 0 {
            return Err("key id 0 is reserved".into());
        }
        if self.keys.contains_key(&id) {
            return Err(format!("key id {id} appears twice"));
        }
        let cipher = self.backend.cipher(&key);
        self.keys.insert(
            id,
            KeyEntry {
                secret: key,
                cipher,
            },
        );
        Ok(())
    }

    /// Removes a key (end of a rotation). Returns whether it was present.
    pub fn remove(&mut self, id: u32) -> bool {
        self.keys.remove(&id).is_some()
    }

    /// The cipher for `id`.
    #[inline]
    pub fn get(&self, id: u32) -> Option<&dyn Aead> {
        self.keys.get(&id).map(|k| &*k.cipher)
    }

    /// Key ids, ascending.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.keys.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The same keys with ciphers of another backend.
    pub fn with_backend(&self, backend: Backend) -> Keyring {
        let mut out = Keyring::new(backend);
        for id in self.ids() {
            let secret = &self.keys[&id].secret;
            out.insert(id, **secret)
                .expect("ids are unique and nonzero");
        }
        out
    }

    /// Parses a key file's text.
    pub fn parse(text: &str, backend: Backend) -> Result<Keyring, KeyFileError> {
        let mut ring = Keyring::new(backend);
        for (i, line) in text.lines().enumerate() {
            let err = |reason: String| KeyFileError {
                path: None,
                line: i + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err(
                    "expected `ID KEY` (key as 64 hex digits or base64)".into()
                ));
            };
            // The id is not echoed: a line with key and id swapped has the key there.
            let id: u32 = id.parse().map_err(|_| {
                err(format!(
                    "the key id (first word, {} characters) is not a number from 1 to \
                     4294967295; the line must be `ID KEY`",
                    id.len()
                ))
            })?;
            let key = decode_key(key).map_err(err)?;
            ring.insert(id, *key).map_err(err)?;
        }
        Ok(ring)
    }

    /// Reads a key file, refusing one that group or others may read or write.
    pub fn load(path: &Path, backend: Backend) -> Result<Keyring, KeyFileError> {
        let whole = |reason: String| KeyFileError {
            path: Some(path.to_owned()),
            line: 0,
            reason,
        };
        let text = read_private(path).map_err(whole)?;
        Keyring::parse(&text, backend).map_err(|e| KeyFileError {
            path: Some(path.to_owned()),
            ..e
        })
    }

    /// The key file text for these keys (hex). For fixture tools that must hand the same keys
    /// to a generator and an engine; it is the only way key material leaves a keyring.
    pub fn export_key_file(&self) -> String {
        let mut out = String::from("# sluice key file: ID KEY (64 hex digits or base64)\n");
        for id in self.ids() {
            out.push_str(&format!("{id} {}\n", hex::encode(*self.keys[&id].secret)));
        }
        out
    }
}

/// Reads a secret file (a key file, a token) that only its owner may read or write; one
/// that group or others may read or write is refused with its mode and the fix, as ssh
/// refuses such a private key. The text is zeroized when dropped.
pub fn read_private(path: &Path) -> Result<Zeroizing<String>, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mode = f
        .metadata()
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {:04o} lets group or others read or write it; run `chmod 600 {}`",
            mode & 0o7777,
            path.display()
        ));
    }
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text)
}

fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
    let bytes = Zeroizing::new(if text.len() == 2 * KEY_BYTES {
        hex::decode(text).map_err(|_| "key is 64 characters but not hex".to_string())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "key is neither 64 hex digits nor base64".to_string())?
    });
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    if bytes.len() != KEY_BYTES {
        return Err(format!(
            "key is {} bytes; AES-256 needs {KEY_BYTES}",
            bytes.len()
        ));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

impl Clone for Keyring {
    fn clone(&self) -> Self {
        self.with_backend(self.backend)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("backend", &self.backend)
            .field("key_ids", &self.ids())
            .finish_non_exhaustive()
    }
}
