//! Durations and byte sizes written the way ActiveMQ writes them, and the lenient string
//! deserializers used by the configuration structs.
//!
//! - Durations: `"2s"`, `"500ms"`, `"1m"`, `"1h"`, or a bare integer meaning milliseconds.
//! - Sizes: a bare integer (bytes) or an integer with a unit `b`, `k`/`kb`/`kib`,
//!   `m`/`mb`/`mib`, `g`/`gb`/`gib` (case-insensitive). As in ActiveMQ's `MemoryPropertyEditor`,
//!   every unit is binary: `"100MB"` and `"100MiB"` are both 104857600 bytes.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};

use super::ParseError;

const DURATION_UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

const KIB: u64 = 1024;
const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", KIB),
    ("kb", KIB),
    ("kib", KIB),
    ("m", KIB * KIB),
    ("mb", KIB * KIB),
    ("mib", KIB * KIB),
    ("g", KIB * KIB * KIB),
    ("gb", KIB * KIB * KIB),
    ("gib", KIB * KIB * KIB),
];

/// Splits `"  500 ms "` into `(500, "ms")`; the unit is lower-cased. `what` names the kind of
/// value for the error message.
fn split_number(input: &str, what: &str, expected: &str) -> Result<(u64, String), ParseError> {
    let s = input.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(ParseError::new(format!(
            "invalid {what} {input:?}: expected {expected}"
        )));
    }
    let number = digits
        .parse::<u64>()
        .map_err(|_| ParseError::new(format!("invalid {what} {input:?}: number too large")))?;
    if unit.starts_with(['.', ',']) && unit[1..].starts_with(|c: char| c.is_ascii_digit()) {
        return Err(ParseError::new(format!(
            "invalid {what} {input:?}: fractions are not accepted, write a whole number of a \
             smaller unit (e.g. \"1536MiB\", \"1500ms\")"
        )));
    }
    Ok((number, unit.trim().to_ascii_lowercase()))
}

/// Parses a duration as ActiveMQ writes one: `"2s"`, `"500ms"`, `"1m"`, `"1h"`, or a bare
/// integer meaning milliseconds. Whitespace between the number and the unit is allowed.
pub fn parse_duration(input: &str) -> Result<Duration, ParseError> {
    const EXPECTED: &str =
        "an integer followed by ms, s, m or h (a bare integer is milliseconds), e.g. \"2s\"";
    let (number, unit) = split_number(input, "duration", EXPECTED)?;
    let factor = if unit.is_empty() {
        1
    } else {
        DURATION_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, factor)| *factor)
            .ok_or_else(|| {
                ParseError::new(format!(
                    "invalid duration {input:?}: unknown unit {unit:?}, expected {EXPECTED}"
                ))
            })?
    };
    let millis = number
        .checked_mul(factor)
        .ok_or_else(|| ParseError::new(format!("invalid duration {input:?}: too large")))?;
    Ok(Duration::from_millis(millis))
}

/// Formats a duration with the largest unit that represents it exactly (`"2s"`, `"90s"`,
/// `"1500ms"`); sub-millisecond parts are dropped. `parse_duration` reads it back.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (name, factor) in DURATION_UNITS.iter().rev() {
        let factor = u128::from(*factor);
        if millis != 0 && millis.is_multiple_of(factor) {
            return format!("{}{}", millis / factor, name);
        }
    }
    "0ms".to_owned()
}

/// Parses a byte size: a bare integer (bytes) or an integer followed by `b`, `k`, `kb`, `kib`,
/// `m`, `mb`, `mib`, `g`, `gb` or `gib` (case-insensitive, all binary as in ActiveMQ).
pub fn parse_size(input: &str) -> Result<u64, ParseError> {
    const EXPECTED: &str =
        "a number of bytes or an integer followed by KiB, MiB or GiB (or KB, MB, GB), e.g. \"64MiB\"";
    let (number, unit) = split_number(input, "size", EXPECTED)?;
    let factor = SIZE_UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, factor)| *factor)
        .ok_or_else(|| {
            ParseError::new(format!(
                "invalid size {input:?}: unknown unit {unit:?}, expected {EXPECTED}"
            ))
        })?;
    number
        .checked_mul(factor)
        .ok_or_else(|| ParseError::new(format!("invalid size {input:?}: too large")))
}

/// Formats a byte size with the largest binary unit that represents it exactly.
pub fn format_size(bytes: u64) -> String {
    for (name, factor) in [("GiB", KIB * KIB * KIB), ("MiB", KIB * KIB), ("KiB", KIB)] {
        if bytes != 0 && bytes.is_multiple_of(factor) {
            return format!("{}{}", bytes / factor, name);
        }
    }
    bytes.to_string()
}

/// Accepts a non-negative integer (the unit given by `from_int`) or a string parsed by `parse`.
struct IntOrString<T> {
    expecting: &'static str,
    from_int: fn(u64) -> T,
    parse: fn(&str) -> Result<T, ParseError>,
}

impl<T> Visitor<'_> for IntOrString<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok((self.from_int)(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .map(self.from_int)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<T, E> {
        u64::try_from(v)
            .map(self.from_int)
            .map_err(|_| E::custom(format!("{v} is too large")))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<T, E> {
        u64::try_from(v)
            .map(self.from_int)
            .map_err(|_| E::custom(format!("{v} is out of range")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

/// `#[serde(with = "units::duration")]` for a `std::time::Duration` field.
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(IntOrString {
            expecting: "a duration such as \"2s\", \"500ms\", \"1m\", \"1h\" or an integer \
                        number of milliseconds",
            from_int: Duration::from_millis,
            parse: parse_duration,
        })
    }
}

/// `#[serde(with = "units::size")]` for a `u64` number of bytes.
pub mod size {
    use super::*;

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(IntOrString {
            expecting: "a size in bytes such as 1048576, \"64MiB\" or \"100MB\"",
            from_int: |v| v,
            parse: parse_size,
        })
    }
}

/// A string that also accepts a number or a boolean (environment values are typed by figment:
/// `FERROMQ_REPLICATION__SECURITY_TOKEN=12345` arrives as an integer).
struct LenientString(String);

impl<'de> Deserialize<'de> for LenientString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;

        impl Visitor<'_> for V {
            type Value = LenientString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<LenientString, E> {
                Ok(LenientString(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<LenientString, E> {
                Ok(LenientString(v))
            }

            fn visit_char<E: de::Error>(self, v: char) -> Result<LenientString, E> {
                Ok(LenientString(v.to_string()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<LenientString, E> {
                Ok(LenientString(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LenientString, E> {
                Ok(LenientString(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LenientString, E> {
                Ok(LenientString(v.to_string()))
            }

            fn visit_u128<E: de::Error>(self, v: u128) -> Result<LenientString, E> {
                Ok(LenientString(v.to_string()))
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<LenientString, E> {
                Ok(LenientString(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LenientString, E> {
                Ok(LenientString(v.to_string()))
            }
        }

        deserializer.deserialize_any(V)
    }
}

/// `#[serde(deserialize_with = "units::lenient_string")]`: a string, or a number/boolean
/// written as one.
pub fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    LenientString::deserialize(deserializer).map(|s| s.0)
}

/// `#[serde(deserialize_with = "units::optional_string")]`: like [`lenient_string`], and an
/// empty string means "not set" (TOML has no null; `zk_address = ""` or
/// `FERROMQ_REPLICATION__ZK_ADDRESS=` turns replication off).
pub fn optional_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(Option::<LenientString>::deserialize(deserializer)?
        .map(|s| s.0)
        .filter(|s| !s.is_empty()))
}

/// `#[serde(deserialize_with = "units::lenient_string_map")]`: a table whose values are
/// lenient strings (passwords that look like numbers).
pub fn lenient_string_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let map = std::collections::BTreeMap::<String, LenientString>::deserialize(deserializer)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("2s", 2_000),
            ("500ms", 500),
            ("1m", 60_000),
            ("1h", 3_600_000),
            ("2000", 2_000),
            ("0", 0),
            (" 3 S ", 3_000),
            ("10 ms", 10),
        ];
        for (input, millis) in ok {
            assert_eq!(
                parse_duration(input).unwrap(),
                Duration::from_millis(millis),
                "{input}"
            );
        }
        for bad in [
            "",
            "s",
            "2x",
            "-1s",
            "1.5s",
            "2 s s",
            "99999999999999999999",
            "1e3",
        ] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
        assert!(parse_duration(&format!("{}h", u64::MAX / 1000)).is_err());
    }

    #[test]
    fn duration_round_trip() {
        for millis in [
            0, 1, 999, 1_000, 1_500, 60_000, 90_000, 3_600_000, 7_200_000,
        ] {
            let d = Duration::from_millis(millis);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn sizes() {
        let ok = [
            ("1024", 1024),
            ("64MiB", 64 << 20),
            ("100MB", 100 << 20),
            ("100 mb", 100 << 20),
            ("1k", 1024),
            ("2KiB", 2048),
            ("1g", 1 << 30),
            ("7b", 7),
        ];
        for (input, bytes) in ok {
            assert_eq!(parse_size(input).unwrap(), bytes, "{input}");
        }
        for bad in ["", "MB", "1.5MB", "10 TB", "-1", "99999999999G"] {
            let err = parse_size(bad).unwrap_err().to_string();
            assert!(err.contains("invalid size"), "{bad}: {err}");
        }
        for fraction in ["1.5GiB", "2,5 MB"] {
            let err = parse_size(fraction).unwrap_err().to_string();
            assert!(
                err.contains("fractions are not accepted"),
                "{fraction}: {err}"
            );
        }
        let err = parse_duration("1.5s").unwrap_err().to_string();
        assert!(err.contains("fractions are not accepted"), "{err}");
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
    }
}

/// `#[serde(with = "units::redeliveries")]`: a redelivery count, or -1 for ActiveMQ's
/// "unlimited" (`u32::MAX`: never reached).
pub mod redeliveries {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        if *value == u32::MAX {
            serializer.serialize_i64(-1)
        } else {
            serializer.serialize_u32(*value)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        let n = i64::deserialize(deserializer)?;
        match n {
            -1 => Ok(u32::MAX),
            n => u32::try_from(n).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{n} is not a redelivery count: 0 or more, or -1 for unlimited"
                ))
            }),
        }
    }
}
