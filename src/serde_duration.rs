//! Durations in humantime notation ("90s", "1h 30m") for serde: every
//! duration in configuration and rule files is written this way.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| D::Error::custom(format!("invalid duration {text:?}: {e}")))
}

pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*value).to_string())
}
