//! Go's `time.ParseDuration` syntax (`1h30m`, `1.5s`, `300ms`, `10us`, `10µs`, `5ns`),
//! which the Jaeger API uses for `minDuration`, `maxDuration` and `lookback`.

/// Parses a Go duration string into nanoseconds. Negative durations are rejected: no
/// query parameter of ours means anything with them.
pub fn parse_go_duration(s: &str) -> Result<u64, String> {
    let err =
        || format!("invalid duration {s:?}: expected a Go duration such as \"1.5s\", \"300ms\" or \"1h30m\"");
    let mut rest = s.trim();
    if rest.is_empty() || rest.starts_with('-') {
        return Err(err());
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    if rest == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        if num_end == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| err())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err()),
        };
        rest = &rest[unit_end..];
        total += value * unit;
    }
    if total > u64::MAX as f64 {
        return Err(err());
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration("300ms"), Ok(300_000_000));
        assert_eq!(parse_go_duration("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("10us"), Ok(10_000));
        assert_eq!(parse_go_duration("10µs"), Ok(10_000));
        assert_eq!(parse_go_duration("7ns"), Ok(7));
        assert_eq!(parse_go_duration("0"), Ok(0));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in ["", "5", "-1s", "1x", "s", "1.2.3s", "ms"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            parse_go_duration("10 sec").unwrap_err(),
            "invalid duration \"10 sec\": expected a Go duration such as \"1.5s\", \"300ms\" or \"1h30m\""
        );
    }
}
