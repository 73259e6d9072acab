//! The saga-worker's command line: no arguments runs the worker; the rest are an
//! operator's tools.

use std::time::Duration;

pub(crate) const USAGE: &str = "usage: saga-worker
       saga-worker sagas pending [--older-than DURATION] [LIMIT]
       saga-worker dlq list [LIMIT]
       saga-worker dlq replay [LIMIT]
       saga-worker dlq replay --id MESSAGE_ID
       saga-worker dlq discard --id MESSAGE_ID";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invocation {
    /// Consume replies and sweep timeouts until stopped.
    Run,
    /// One JSON line per pending order, oldest first.
    PendingSagas { older_than: Duration, limit: i64 },
    /// Counts by kind, then one JSON line per dead letter, all left in the queue.
    DlqList { limit: u16 },
    /// Every dead letter (up to `limit`) back to `CustomerSaga`.
    DlqReplay { limit: u16 },
    /// One dead letter back to `CustomerSaga`.
    DlqReplayOne { message_id: String },
    /// One dead letter removed for good, logged whole first.
    DlqDiscardOne { message_id: String },
}

pub(crate) fn parse(args: &[&str]) -> Result<Invocation, String> {
    let limit = |text: Option<&&str>, max: i64| -> Result<i64, String> {
        text.map_or(Ok(max), |text| {
            text.parse::<i64>()
                .ok()
                .filter(|n| (0..=max).contains(n))
                .ok_or(format!("LIMIT must be a number from 0 to {max}, not {text:?}"))
        })
    };
    let u16_limit = |text: Option<&&str>| limit(text, i64::from(u16::MAX)).map(|n| n as u16);
    match args {
        [] => Ok(Invocation::Run),
        ["sagas", "pending", rest @ ..] => {
            let (older_than, rest) = match rest {
                ["--older-than", duration, rest @ ..] => {
                    let older_than = humantime::parse_duration(duration)
                        .map_err(|e| format!("--older-than must be a duration such as 10m, not {duration:?}: {e}"))?;
                    (older_than, rest)
                }
                rest => (Duration::ZERO, rest),
            };
            match rest {
                [] | [_] => Ok(Invocation::PendingSagas { older_than, limit: limit(rest.first(), 1_000_000)? }),
                _ => Err(USAGE.into()),
            }
        }
        ["dlq", "list", rest @ ..] if rest.len() <= 1 => Ok(Invocation::DlqList { limit: u16_limit(rest.first())? }),
        ["dlq", "replay", "--id", id] => Ok(Invocation::DlqReplayOne { message_id: (*id).to_owned() }),
        ["dlq", "discard", "--id", id] => Ok(Invocation::DlqDiscardOne { message_id: (*id).to_owned() }),
        ["dlq", "replay", rest @ ..] if rest.len() <= 1 && rest.first() != Some(&"--id") => {
            Ok(Invocation::DlqReplay { limit: u16_limit(rest.first())? })
        }
        _ => Err(USAGE.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses() {
        assert_eq!(parse(&[]), Ok(Invocation::Run));
        assert_eq!(
            parse(&["sagas", "pending"]),
            Ok(Invocation::PendingSagas { older_than: Duration::ZERO, limit: 1_000_000 })
        );
        assert_eq!(
            parse(&["sagas", "pending", "--older-than", "15m", "20"]),
            Ok(Invocation::PendingSagas { older_than: Duration::from_secs(900), limit: 20 })
        );
        assert_eq!(parse(&["dlq", "list"]), Ok(Invocation::DlqList { limit: u16::MAX }));
        assert_eq!(parse(&["dlq", "list", "5"]), Ok(Invocation::DlqList { limit: 5 }));
        assert_eq!(parse(&["dlq", "replay"]), Ok(Invocation::DlqReplay { limit: u16::MAX }));
        assert_eq!(parse(&["dlq", "replay", "--id", "m-1"]), Ok(Invocation::DlqReplayOne { message_id: "m-1".into() }));
        assert_eq!(
            parse(&["dlq", "discard", "--id", "m-1"]),
            Ok(Invocation::DlqDiscardOne { message_id: "m-1".into() })
        );
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        for bad in [
            &["dlq"][..],
            &["dlq", "discard"],
            &["dlq", "discard", "m-1"],
            &["dlq", "replay", "--id"],
            &["dlq", "list", "-1"],
            &["dlq", "list", "70000"],
            &["sagas"],
            &["sagas", "pending", "--older-than", "soon"],
            &["sagas", "pending", "1", "2"],
            &["serve"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["sagas", "pending", "--older-than", "soon"]).unwrap_err().contains("--older-than"));
    }
}
