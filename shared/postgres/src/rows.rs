//! Result values as JSON, from Postgres's text output format.
//!
//! The dev database runs statements with the simple query protocol, in which the server sends
//! every value as text. That text is mapped by the column's type: integers and floats become
//! JSON numbers, `bool` a boolean, `json`/`jsonb` the JSON itself, `timestamptz` an RFC 3339
//! string, `numeric` a string (no precision lost), NULL `null`, and everything else (`uuid`,
//! `text`, dates, arrays, enums, ...) its text form as a string.

use serde_json::{Number, Value};

/// Type OIDs from Postgres's built-in catalog (stable across versions).
mod oid {
    pub const BOOL: u32 = 16;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const JSONB: u32 = 3802;
}

/// The JSON value of one non-NULL value of type `type_oid`, given in text format.
pub(crate) fn text_to_json(type_oid: Option<u32>, text: &str) -> Value {
    let as_string = || Value::String(text.to_string());
    match type_oid {
        Some(oid::BOOL) => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => as_string(),
        },
        Some(oid::INT2 | oid::INT4 | oid::INT8 | oid::OID) => text
            .parse::<i64>()
            .map(|n| Value::Number(n.into()))
            .unwrap_or_else(|_| as_string()),
        Some(oid::FLOAT4 | oid::FLOAT8) => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            // NaN and ±Infinity have no JSON number
            .unwrap_or_else(as_string),
        Some(oid::JSON | oid::JSONB) => serde_json::from_str(text).unwrap_or_else(|_| as_string()),
        Some(oid::TIMESTAMPTZ) => {
            Value::String(timestamptz_to_rfc3339(text).unwrap_or_else(|| text.to_string()))
        }
        _ => as_string(),
    }
}

/// Postgres's ISO output of a `timestamptz` (`2024-05-06 07:08:09.123+00`) as RFC 3339
/// (`2024-05-06T07:08:09.123Z`). `None` for what RFC 3339 cannot express: `infinity`, BC
/// dates, years past 9999 and offsets with seconds.
pub(crate) fn timestamptz_to_rfc3339(text: &str) -> Option<String> {
    let (date, rest) = text.split_once(' ')?;
    let date_ok = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !date_ok || rest.contains(' ') {
        return None;
    }
    let sign_at = rest.rfind(['+', '-'])?;
    let (time, offset) = rest.split_at(sign_at);
    let time_ok = time.len() >= 8
        && time.bytes().enumerate().all(|(i, b)| match i {
            2 | 5 => b == b':',
            8 => b == b'.',
            _ => b.is_ascii_digit(),
        });
    if !time_ok {
        return None;
    }
    let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    let (hours, minutes) = match offset[1..].split_once(':') {
        None => (&offset[1..], "00"),
        Some((h, m)) => (h, m),
    };
    if !digits(hours) || !digits(minutes) {
        return None;
    }
    let offset = if hours == "00" && minutes == "00" {
        "Z".to_string()
    } else {
        format!("{}{hours}:{minutes}", &offset[..1])
    };
    Some(format!("{date}T{time}{offset}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_map_by_type() {
        assert_eq!(text_to_json(Some(oid::INT4), "42"), json!(42));
        assert_eq!(
            text_to_json(Some(oid::INT8), "-9000000000"),
            json!(-9_000_000_000i64)
        );
        assert_eq!(text_to_json(Some(oid::FLOAT8), "1.5"), json!(1.5));
        assert_eq!(text_to_json(Some(oid::FLOAT8), "NaN"), json!("NaN"));
        assert_eq!(text_to_json(Some(oid::BOOL), "t"), json!(true));
        assert_eq!(
            text_to_json(Some(oid::JSONB), r#"{"a": [1]}"#),
            json!({"a": [1]})
        );
        assert_eq!(text_to_json(Some(1700), "3.140"), json!("3.140"));
        assert_eq!(text_to_json(None, "x"), json!("x"));
    }

    #[test]
    fn timestamps_become_rfc_3339() {
        let c = timestamptz_to_rfc3339;
        assert_eq!(
            c("2024-05-06 07:08:09+00").as_deref(),
            Some("2024-05-06T07:08:09Z")
        );
        assert_eq!(
            c("2024-05-06 07:08:09.123456+00").as_deref(),
            Some("2024-05-06T07:08:09.123456Z")
        );
        assert_eq!(
            c("2024-05-06 07:08:09+05:30").as_deref(),
            Some("2024-05-06T07:08:09+05:30")
        );
        assert_eq!(
            c("2024-05-06 07:08:09-03").as_deref(),
            Some("2024-05-06T07:08:09-03:00")
        );
        assert_eq!(c("infinity"), None);
        assert_eq!(c("0044-03-15 12:00:00+00 BC"), None);
        assert_eq!(c("12024-05-06 07:08:09+00"), None);
        assert_eq!(c("1900-01-01 00:00:00+00:09:21"), None);
    }
}
