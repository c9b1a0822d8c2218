//! When an export must be over: the server's `export_deadline_secs` from
//! the call's start, or the caller's `grpc-timeout` if that comes first.

use std::time::{Duration, Instant};

/// When an export must be over: the server's `export_deadline_secs` from
/// the call's start, or the caller's `grpc-timeout` if that comes first.
#[derive(Debug, Clone)]
pub(super) struct Deadline {
    /// When the export must be over.
    pub(super) at: Instant,
    secs: u64,
    from_caller: bool,
}

impl Deadline {
    /// The deadline of a call starting now.
    pub(super) fn of_call<T>(request: &tonic::Request<T>, server: Duration) -> Self {
        let caller = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        Self::new(Instant::now(), server, caller)
    }

    fn new(start: Instant, server: Duration, caller: Option<Duration>) -> Self {
        let (limit, from_caller) = match caller {
            Some(c) if c < server => (c, true),
            _ => (server, false),
        };
        Self {
            at: start + limit,
            secs: limit.as_secs(),
            from_caller,
        }
    }

    /// Which limit passed, for the status and the trail.
    pub(super) fn reason(&self) -> String {
        if self.from_caller {
            format!("the call's deadline (grpc-timeout, {} s) passed", self.secs)
        } else {
            format!(
                "the export took longer than its deadline of {} s (export_deadline_secs)",
                self.secs
            )
        }
    }
}

/// A `grpc-timeout` header value: 1 to 8 digits and a unit (H, M, S, m,
/// u, n), as the gRPC HTTP/2 protocol defines it.
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if !(2..=9).contains(&v.len()) || !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S", "5 S", "٥S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_earlier_deadline_wins() {
        let t = Instant::now();
        let server = Duration::from_secs(3600);
        let d = Deadline::new(t, server, None);
        assert_eq!((d.at, d.from_caller), (t + server, false));
        assert!(
            d.reason().contains("export_deadline_secs"),
            "{}",
            d.reason()
        );
        let d = Deadline::new(t, server, Some(Duration::from_secs(5)));
        assert_eq!((d.at, d.from_caller), (t + Duration::from_secs(5), true));
        assert!(d.reason().contains("grpc-timeout"), "{}", d.reason());
        let d = Deadline::new(t, server, Some(Duration::from_secs(7200)));
        assert_eq!((d.at, d.from_caller), (t + server, false));
    }
}
