//! The two helpers transformers gives chat templates that minijinja lacks or spells differently:
//! `tojson` as Python's `json.dumps` and `strftime_now` as Python's `datetime.now().strftime`.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// `x|tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, byte for byte
/// Python's `json.dumps` with those arguments (transformers overrides jinja2's HTML-escaping
/// filter with exactly that). minijinja's own filter escapes `<>&'` and uses other spacing.
pub(crate) fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;

    // Python: an int indent is that many spaces, a string is used as is, None means one line.
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (None, Some(s)) => Some(s.to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an int or a string",
                ))
            }
        },
    };
    // Python's defaults: (", ", ": ") on one line, ("," , ": ") when indenting.
    let (item_sep, key_sep) = match separators.as_deref() {
        None => (
            if indent.is_some() { "," } else { ", " }.to_string(),
            ": ".to_string(),
        ),
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be two strings",
            ))
        }
    };
    let dumper = JsonDumper {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    dumper.dump(value, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonDumper {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonDumper {
    fn dump(&self, value: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&python_number(value)),
            ValueKind::String => self.dump_str(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.dump_container(('[', ']'), items.len(), depth, out, |i, out| {
                    self.dump(&items[i], depth + 1, out)
                })?;
            }
            ValueKind::Map => {
                // Python converts None/bool/number keys to their JSON spelling.
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    let key = match key.kind() {
                        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                        ValueKind::None => "null".to_string(),
                        ValueKind::Bool => {
                            (if key.is_true() { "true" } else { "false" }).to_string()
                        }
                        ValueKind::Number => python_number(&key),
                        kind => return Err(not_serializable(kind)),
                    };
                    entries.push((key, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.dump_container(('{', '}'), entries.len(), depth, out, |i, out| {
                    self.dump_str(&entries[i].0, out);
                    out.push_str(&self.key_sep);
                    self.dump(&entries[i].1, depth + 1, out)
                })?;
            }
            kind => return Err(not_serializable(kind)),
        }
        Ok(())
    }

    /// Writes `open item sep item … close`, one item per line when indenting; `[]`/`{}` if empty.
    fn dump_container(
        &self,
        (open, close): (char, char),
        len: usize,
        depth: usize,
        out: &mut String,
        mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if len > 0 {
            let newline = |out: &mut String, level: usize| {
                if let Some(indent) = &self.indent {
                    out.push('\n');
                    (0..level).for_each(|_| out.push_str(indent));
                }
            };
            for i in 0..len {
                if i > 0 {
                    out.push_str(&self.item_sep);
                }
                newline(out, depth + 1);
                item(i, out)?;
            }
            newline(out, depth);
        }
        out.push(close);
        Ok(())
    }

    /// Python's string escaping: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other controls as
    /// `\u00XX`; with `ensure_ascii` everything outside printable ASCII as `\uXXXX`
    /// (UTF-16 surrogate pairs above U+FFFF), lowercase hex.
    fn dump_str(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !(' '..='~').contains(&c)) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

fn not_serializable(kind: ValueKind) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: a {kind} is not JSON serializable"),
    )
}

/// A number as Python's `json.dumps` writes it: integers in full, floats as `repr` (shortest
/// round-trip digits; scientific when the exponent is < -4 or >= 16), `NaN`/`Infinity`.
fn python_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    let x = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    python_float_repr(x)
}

fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits as Python's repr: "-1.5e-7".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always writes an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat(-point as usize))
        } else if digits.len() <= point as usize {
            format!(
                "{sign}{digits}{}.0",
                "0".repeat(point as usize - digits.len())
            )
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

/// `strftime_now(format)`: the current time formatted like Python's `strftime` in the C locale.
/// transformers uses local time; we use UTC (servers run in UTC, and it needs no time-zone
/// database). Templates use it for "Today's date" lines (Llama 3.1: `"%d %b %Y"`).
pub(crate) fn strftime_now(format: String) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    strftime_utc(&format, now.as_secs() as i64, now.subsec_micros())
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// glibc `strftime` for a UTC time: `%Y %m %d %H %M %S %f %y %b %B %a %A %j %p %I %e %w %u %x
/// %X %c %%`, `%-d`-style unpadded variants, `%Z`/`%z` empty (a naive datetime). Other
/// directives are copied literally, as glibc does.
fn strftime_utc(format: &str, unix_secs: i64, micros: u32) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday; 0 = Sunday
    let year_day = days - days_from_civil(year, 1, 1) + 1;
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.next_if_eq(&'-').is_some();
        let num = |n: i64, width: usize| {
            if unpadded {
                n.to_string()
            } else {
                format!("{n:0width$}")
            }
        };
        let Some(directive) = chars.next() else {
            out.push('%');
            break;
        };
        let text = match directive {
            'Y' => year.to_string(),
            'y' => num(year.rem_euclid(100), 2),
            'm' => num(month as i64, 2),
            'd' => num(day as i64, 2),
            'e' => format!("{day:2}"),
            'H' => num(hour, 2),
            'I' => num(hour12, 2),
            'M' => num(minute, 2),
            'S' => num(second, 2),
            'f' => format!("{micros:06}"),
            'j' => num(year_day, 3),
            'p' => (if hour < 12 { "AM" } else { "PM" }).to_string(),
            'B' => MONTHS[month as usize - 1].to_string(),
            'b' | 'h' => MONTHS[month as usize - 1][..3].to_string(),
            'A' => WEEKDAYS[weekday].to_string(),
            'a' => WEEKDAYS[weekday][..3].to_string(),
            'w' => weekday.to_string(),
            'u' => (if weekday == 0 { 7 } else { weekday }).to_string(),
            'x' => format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100)),
            'X' => format!("{hour:02}:{minute:02}:{second:02}"),
            'c' => format!(
                "{} {} {day:2} {hour:02}:{minute:02}:{second:02} {year}",
                &WEEKDAYS[weekday][..3],
                &MONTHS[month as usize - 1][..3]
            ),
            'Z' | 'z' => String::new(),
            '%' => "%".to_string(),
            other => format!("%{}{other}", if unpadded { "-" } else { "" }),
        };
        out.push_str(&text);
    }
    out
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian.
/// Howard Hinnant's `civil_from_days` (<http://howardhinnant.github.io/date_algorithms.html>).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (i64::from(month) + 9) % 12; // month from March, 0..=11
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::Environment;

    /// Renders `source` with only our `tojson` registered.
    fn render(source: &str, ctx: Value) -> String {
        let mut env = Environment::new();
        env.add_filter("tojson", tojson);
        env.render_str(source, ctx).unwrap()
    }

    // Expected strings below were printed by CPython 3.11's json.dumps / repr / strftime.
    #[test]
    fn tojson_matches_python_json_dumps() {
        let value: serde_json::Value = serde_json::from_str(
            r#"{"a": [1, 2.5, 1e16, 1.5e-7, -0.0, true, null, "é\n\"\\\u0001😀<&>'"], "b": {}, "c": []}"#,
        )
        .unwrap();
        let ctx = Value::from(minijinja::value::Serde(&value));
        assert_eq!(
            render("{{ x|tojson }}", minijinja::context! { x => ctx.clone() }),
            r#"{"a": [1, 2.5, 1e+16, 1.5e-07, -0.0, true, null, "é\n\"\\\u0001😀<&>'"], "b": {}, "c": []}"#
        );
        assert_eq!(
            render("{{ x|tojson(indent=2) }}", minijinja::context! { x => ctx.clone() }),
            "{\n  \"a\": [\n    1,\n    2.5,\n    1e+16,\n    1.5e-07,\n    -0.0,\n    true,\n    null,\n    \"é\\n\\\"\\\\\\u0001😀<&>'\"\n  ],\n  \"b\": {},\n  \"c\": []\n}"
        );
        let small: serde_json::Value = serde_json::from_str(r#"{"b": 1, "a": "é😀"}"#).unwrap();
        assert_eq!(
            render(
                "{{ x|tojson(sort_keys=true, ensure_ascii=true, separators=[',', ':']) }}",
                minijinja::context! { x => Value::from(minijinja::value::Serde(&small)) }
            ),
            r#"{"a":"\u00e9\ud83d\ude00","b":1}"#
        );
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1e15, "1000000000000000.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e22, "1e+22"),
            (-2.5e-5, "-2.5e-05"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (f64::INFINITY, "Infinity"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "repr({x})");
        }
    }

    #[test]
    fn strftime_matches_glibc() {
        // datetime(2024, 2, 29, 13, 5, 9, 123456), a leap day, as a UTC timestamp.
        let t = 1_709_211_909;
        assert_eq!(
            strftime_utc(
                "%Y-%m-%d %H:%M:%S %y %b %B %a %A %j %p %I %-d %-m %e %% %f %Z|%z %q",
                t,
                123_456
            ),
            "2024-02-29 13:05:09 24 Feb February Thu Thursday 060 PM 01 29 2 29 % 123456 | %q"
        );
        // datetime(2023, 1, 1, 0, 5, 9): a Sunday, first day of the year, midnight hour.
        assert_eq!(
            strftime_utc("%j %p %I %-I %a %w %u", 1_672_531_509, 0),
            "001 AM 12 12 Sun 0 7"
        );
        assert_eq!(strftime_utc("%d %b %Y", 0, 0), "01 Jan 1970");
        for days in [-800_000, -1, 0, 59, 365, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
