//! A pid that reaches Erlang as a pid (`#[serde(with =
//! "relive_abi::erlang_pid")]` on a [`Pid`] field of a message or reply).
//!
//! By default a [`Pid`] is its 64-bit number in MessagePack, and an Erlang
//! node that gets it sees an integer. With this helper the field is written
//! as a MessagePack extension (type [`EXT_TYPE`], the 8 bytes of the pid,
//! big-endian), which relive's distribution turns into a real pid on the
//! wire: Erlang can send to it, link to it and monitor it. It reads both
//! forms, so a field can adopt it without breaking older senders. (JSON has
//! no extension type: a reply with such a field does not read as JSON.)

use serde::de::{Deserialize, Deserializer, Visitor};
use serde::ser::{Serialize, Serializer};

use crate::Pid;

/// The MessagePack extension type of a pid.
pub const EXT_TYPE: i8 = 0x50;

/// Writes `pid` as the extension.
///
/// # Errors
/// The serializer's.
pub fn serialize<S: Serializer>(pid: &Pid, serializer: S) -> Result<S::Ok, S::Error> {
    struct Raw([u8; 8]);
    impl Serialize for Raw {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(&self.0)
        }
    }
    // rmp-serde's convention for extensions: a newtype named `_ExtStruct`
    // around (type, bytes).
    serializer.serialize_newtype_struct("_ExtStruct", &(EXT_TYPE, Raw(pid.0.to_be_bytes())))
}

/// Reads the extension, or a plain 64-bit number.
///
/// # Errors
/// Anything else, or an extension of another type or size.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Pid, D::Error> {
    struct PidVisitor;
    impl<'de> Visitor<'de> for PidVisitor {
        type Value = Pid;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a pid (a number, or MessagePack extension 0x50)")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Pid, E> {
            Ok(Pid(v))
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Pid, D::Error> {
            #[derive(serde::Deserialize)]
            struct Ext(i8, #[serde(with = "crate::bytes")] Vec<u8>);
            let Ext(kind, bytes) = Ext::deserialize(d)?;
            let raw: [u8; 8] = bytes
                .try_into()
                .map_err(|_| serde::de::Error::custom("a pid extension must hold 8 bytes"))?;
            if kind != EXT_TYPE {
                return Err(serde::de::Error::custom(format!(
                    "extension type {kind} is not a pid ({EXT_TYPE})"
                )));
            }
            Ok(Pid(u64::from_be_bytes(raw)))
        }
    }
    deserializer.deserialize_any(PidVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Hello {
        #[serde(with = "crate::erlang_pid")]
        pid: Pid,
    }

    #[test]
    fn a_pid_crosses_as_extension_0x50_and_reads_back_from_either_form() {
        let hello = Hello { pid: Pid(0x0000_0001_0000_0042) };
        let bytes = rmp_serde::to_vec_named(&hello).unwrap();
        // fixext8 (0xd7), type 0x50, then the pid big-endian.
        let at = bytes.iter().position(|b| *b == 0xd7).expect("a fixext8");
        assert_eq!(bytes[at + 1], 0x50);
        assert_eq!(&bytes[at + 2..at + 10], &0x0000_0001_0000_0042u64.to_be_bytes());
        assert_eq!(rmp_serde::from_slice::<Hello>(&bytes).unwrap(), hello);
        #[derive(serde::Serialize)]
        struct Plain {
            pid: u64,
        }
        let plain = rmp_serde::to_vec_named(&Plain { pid: 7 }).unwrap();
        assert_eq!(rmp_serde::from_slice::<Hello>(&plain).unwrap(), Hello { pid: Pid(7) });
    }
}
