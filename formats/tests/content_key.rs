//! Known answer for the content-key layout: every store's keys depend on it, so a change to the
//! bytes (or to what they hash to) must fail here rather than silently orphan existing stores.
//! The expected bytes and key were written from the layout table in `formats/src/hash.rs` and
//! hashed by the `blake3` package from PyPI (`tests/fixtures/content_key/generate.py`); the way
//! to change them is a new key version (`tinymim.key.v2`) with a new store format version.

use tinymim_formats::hash::content_key_bytes;
use tinymim_formats::{content_key, Encoding, Hash32, View};

const LAYOUT: &str = "74696e796d696d2e6b65792e76310000000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f1200000003fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1e0070000002c010000a00f00000100010001";
const KEY: &str = "a73ee582bc08c1514792ef4c884fa8df763b6f5bbac40edba91b3be23e4fc22c";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_content_key_of_a_fixed_input_is_the_known_answer() {
    let teacher = Hash32(std::array::from_fn(|i| i as u8));
    let image = Hash32(std::array::from_fn(|i| 255 - i as u8));
    let view = View {
        x: 7,
        y: 300,
        w: 4000,
        h: 65537,
        flip: true,
    };
    let bytes = content_key_bytes(&teacher, 18, Encoding::Ln1, &image, &view);
    assert_eq!(hex(&bytes), LAYOUT);
    assert_eq!(
        content_key(&teacher, 18, Encoding::Ln1, &image, &view).to_hex(),
        KEY
    );
    // The encoding is part of the key.
    let other = content_key(&teacher, 18, Encoding::Qkv, &image, &view);
    assert_ne!(other.to_hex(), KEY);
}
