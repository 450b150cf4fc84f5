//! Content identity: image hashes, teacher fingerprints and content keys, all blake3.
//!
//! # Canonical content-key layout
//!
//! The content key of a target is `blake3(bytes)` over exactly these bytes (102 bytes):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 16 | ASCII `tinymim.key.v1\0\0` (domain separation, version) |
//! | 16 | 32 | teacher fingerprint (blake3 of the teacher ONNX file) |
//! | 48 | 4 | target block, u32 little-endian (1-based) |
//! | 52 | 1 | encoding tag (`maps` 1, `qkv` 2, `ln1` 3) |
//! | 53 | 32 | image hash (blake3 of the image file's bytes) |
//! | 85 | 4 × 4 | view crop box x, y, w, h, u32 little-endian |
//! | 101 | 1 | view flip bit (0 or 1) |
//!
//! The same (teacher, block, encoding, image, view) always yields the same key on any machine.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::encoding::Encoding;
use crate::view::View;

/// Domain-separation prefix of content keys (16 bytes).
const KEY_DOMAIN: &[u8; 16] = b"tinymim.key.v1\0\0";

/// A 32-byte blake3 digest: an image hash, a teacher fingerprint or a content key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// blake3 of a byte slice (an image file's bytes, say).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Hash32(*blake3::hash(bytes).as_bytes())
    }

    /// blake3 of a file's contents, streamed (teacher files are large).
    pub fn of_file(path: &Path) -> std::io::Result<Self> {
        let mut hasher = blake3::Hasher::new();
        let mut file = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Hash32(*hasher.finalize().as_bytes()))
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Hash32(out))
    }

    /// The first 12 hex characters, for messages.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", self.to_hex())
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hash32::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex characters"))
    }
}

/// The canonical bytes hashed into a content key (see the module documentation).
pub fn content_key_bytes(
    teacher: &Hash32,
    target_block: u32,
    encoding: Encoding,
    image: &Hash32,
    view: &View,
) -> [u8; 102] {
    let mut b = [0u8; 102];
    b[0..16].copy_from_slice(KEY_DOMAIN);
    b[16..48].copy_from_slice(&teacher.0);
    b[48..52].copy_from_slice(&target_block.to_le_bytes());
    b[52] = encoding.tag();
    b[53..85].copy_from_slice(&image.0);
    for (i, v) in [view.x, view.y, view.w, view.h].into_iter().enumerate() {
        b[85 + 4 * i..89 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    b[101] = view.flip as u8;
    b
}

/// The content key of one target: where (teacher, block, encoding, image, view) lands.
pub fn content_key(
    teacher: &Hash32,
    target_block: u32,
    encoding: Encoding,
    image: &Hash32,
    view: &View,
) -> Hash32 {
    Hash32::of_bytes(&content_key_bytes(
        teacher,
        target_block,
        encoding,
        image,
        view,
    ))
}
