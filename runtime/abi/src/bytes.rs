//! Byte strings as MessagePack `bin` for serde (`#[serde(with =
//! "relive_abi::bytes")]` on a `Vec<u8>` or `Box<[u8]>` in a state or a
//! message): serde's default is an array of integers, up to twice the
//! size and much slower. Reads `bin`, an array of integers or text.

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;

/// Writes `bytes` as `bin`.
///
/// # Errors
/// The serializer's.
pub fn serialize<S: Serializer, T: AsRef<[u8]> + ?Sized>(
    bytes: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes.as_ref())
}

/// Reads bytes in any of their forms.
///
/// # Errors
/// The deserializer's, for anything that is not bytes.
pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(deserializer: D) -> Result<T, D::Error> {
    struct Bytes;
    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            Ok(v.as_bytes().to_vec())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_byte_buf(Bytes).map(T::from)
}
