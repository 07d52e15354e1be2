//! The one place that maps control-plane errors to gRPC status codes (and
//! the admission webhook's to HTTP statuses). Each mapping is a deliberate
//! choice a client can rely on; see the tests.

use crate::state::Error;
use tonic::{Code, Status};

/// The gRPC code for each error.
pub fn code(e: &Error) -> Code {
    match e {
        Error::Invalid(_) | Error::Registry(_) => Code::InvalidArgument,
        Error::Refused(r) => refusal_code(r),
        Error::Shift(crate::rules::ShiftError::Percent(_)) => Code::InvalidArgument,
        Error::Shift(_) | Error::Index(_) => Code::NotFound,
        Error::Store(_) => Code::Unavailable,
        Error::ClusterRules => Code::FailedPrecondition,
    }
}

/// The gRPC code for each reason a caller may not speak for a node: no
/// certificate is UNAUTHENTICATED (prove who you are), a full quota is
/// RESOURCE_EXHAUSTED, and every other mismatch PERMISSION_DENIED.
pub fn refusal_code(r: &crate::registry::claim::Refusal) -> Code {
    use crate::registry::claim::Refusal;
    match r {
        Refusal::Anonymous { .. } => Code::Unauthenticated,
        Refusal::Cap { .. } => Code::ResourceExhausted,
        Refusal::NotWorkload { .. }
        | Refusal::Namespace { .. }
        | Refusal::Account { .. }
        | Refusal::Claimed { .. }
        | Refusal::Static { .. }
        | Refusal::Owned { .. } => Code::PermissionDenied,
    }
}

/// The gRPC code for each identity error.
pub fn identity_code(e: &crate::identity::ca::Error) -> Code {
    use crate::identity::ca::Error as Ca;
    match e {
        Ca::Csr(_) | Ca::Names(_) => Code::InvalidArgument,
        Ca::Mismatch { .. } => Code::PermissionDenied,
        Ca::Io { .. } | Ca::Invalid { .. } | Ca::Sign(_) => Code::Internal,
    }
}

impl From<crate::identity::ca::Error> for Status {
    fn from(e: crate::identity::ca::Error) -> Status {
        Status::new(identity_code(&e), e.to_string())
    }
}

/// The gRPC code for each telemetry error: a malformed report is the
/// caller's mistake; a pull of the window by anyone but a replica is
/// refused as anonymous (no certificate) or forbidden.
pub fn telemetry_code(e: &crate::telemetry::Error) -> Code {
    use crate::telemetry::Error as T;
    match e {
        T::NotAPeer { caller: None, .. } => Code::Unauthenticated,
        T::NotAPeer { .. } => Code::PermissionDenied,
        T::NoNode | T::Buckets { .. } | T::Direction(_) => Code::InvalidArgument,
    }
}

impl From<crate::telemetry::Error> for Status {
    fn from(e: crate::telemetry::Error) -> Status {
        Status::new(telemetry_code(&e), e.to_string())
    }
}

/// The HTTP status for a body the webhook cannot take as an
/// AdmissionReview: the caller's mistake, never ours.
pub fn admission_status(_: &crate::kubernetes::admission::Error) -> hyper::StatusCode {
    hyper::StatusCode::BAD_REQUEST
}

/// The HTTP status, and why, for a webhook request body that could not be
/// read: too large (413) or cut short (400).
pub fn webhook_body(e: &(dyn std::error::Error + 'static)) -> (hyper::StatusCode, String) {
    if e.is::<http_body_util::LengthLimitError>() {
        (
            hyper::StatusCode::PAYLOAD_TOO_LARGE,
            format!("the AdmissionReview is too large ({e})"),
        )
    } else {
        (
            hyper::StatusCode::BAD_REQUEST,
            format!("the AdmissionReview could not be read: {e}"),
        )
    }
}

/// How Apply and Delete answer an error: a refusal (rules that do not
/// validate) travels in the response body, whole, however long the list;
/// anything else is a status.
pub fn refusal(e: Error) -> Result<Vec<crate::manifest::Error>, Status> {
    match e {
        Error::Invalid(problems) => Ok(problems),
        other => Err(Status::from(other)),
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(code(&e), e.to_string())
    }
}

/// The gRPC code for each reason a release call is refused.
pub fn release_code(e: &crate::release::Error) -> Code {
    use crate::release::Error as R;
    match e {
        R::Invalid(_) | R::Action(_) => Code::InvalidArgument,
        R::Missing(_) | R::Never(_) => Code::NotFound,
        R::UnderWay { .. } | R::Refused(_) | R::Split(_) | R::Webhook(_) => {
            Code::FailedPrecondition
        }
        R::State(e) => code(e),
        R::Cluster(_) | R::NotPassing(_) => Code::FailedPrecondition,
        R::Store(_) | R::Weights(_) | R::Status { .. } => Code::Unavailable,
    }
}

impl From<crate::release::Error> for Status {
    fn from(e: crate::release::Error) -> Status {
        Status::new(release_code(&e), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::Error as Ca;
    use crate::registry::claim::Refusal;
    use crate::registry::local::Error as Registration;
    use crate::rules::ShiftError;

    /// Every row of the table, and that the status carries the message.
    #[test]
    fn each_error_has_a_deliberate_code() {
        let io = || crate::store::Error::Io {
            path: "x".into(),
            source: std::io::Error::other("disk"),
        };
        let corrupt = crate::store::Error::Corrupt {
            path: "rules.json".into(),
            source: serde_json::from_str::<u32>("{").unwrap_err(),
        };
        let rows = vec![
            (Error::Invalid(vec![]), Code::InvalidArgument),
            (
                Error::Registry(Registration::Missing("node.service")),
                Code::InvalidArgument,
            ),
            (
                Error::Registry(Registration::Address("nowhere".into())),
                Code::InvalidArgument,
            ),
            (
                Error::Shift(ShiftError::Percent(120)),
                Code::InvalidArgument,
            ),
            (
                Error::Shift(ShiftError::NoSplit {
                    namespace: "d".into(),
                    service: "s".into(),
                }),
                Code::NotFound,
            ),
            (
                Error::Shift(ShiftError::UnknownBackend {
                    backend: "s-v9".into(),
                    rule: "split d/s".into(),
                    known: "s-v1".into(),
                }),
                Code::NotFound,
            ),
            (
                Error::Index(crate::index::Error::UnknownService {
                    namespace: "d".into(),
                    service: "ghost".into(),
                }),
                Code::NotFound,
            ),
            (Error::Store(io()), Code::Unavailable),
            (Error::ClusterRules, Code::FailedPrecondition),
            (Error::Store(corrupt), Code::Unavailable),
            (
                Error::Refused(Refusal::Anonymous { call: "Heartbeat" }),
                Code::Unauthenticated,
            ),
            (
                Error::Refused(Refusal::Cap {
                    caller: "spiffe://cluster.local/ns/default/sa/echo".into(),
                    max: 3,
                }),
                Code::ResourceExhausted,
            ),
            (
                Error::Refused(Refusal::Owned {
                    namespace: "default".into(),
                    instance: "echo-1".into(),
                    owner: "spiffe://cluster.local/ns/default/sa/echo".into(),
                    caller: "spiffe://cluster.local/ns/default/sa/rogue".into(),
                }),
                Code::PermissionDenied,
            ),
        ];
        for (e, want) in rows {
            assert_eq!(code(&e), want, "{e}");
            let message = e.to_string();
            let status = Status::from(e);
            assert_eq!(status.code(), want);
            assert_eq!(status.message(), message);
        }
        assert!(Status::from(Error::Store(io())).message().contains("disk"));
    }

    #[test]
    fn each_identity_error_has_a_deliberate_code() {
        let rows = vec![
            (Ca::Csr("x".into()), Code::InvalidArgument),
            (Ca::Names("2 URI SANs".into()), Code::InvalidArgument),
            (
                Ca::Mismatch {
                    proven: "spiffe://a".into(),
                    requested: "spiffe://b".into(),
                },
                Code::PermissionDenied,
            ),
            (
                Ca::Io {
                    path: "ca.pem".into(),
                    source: std::io::Error::other("disk"),
                },
                Code::Internal,
            ),
            (
                Ca::Invalid {
                    path: "ca.pem".into(),
                    reason: "no key".into(),
                },
                Code::Internal,
            ),
            (Ca::Sign(rcgen::Error::CouldNotParseKeyPair), Code::Internal),
        ];
        for (e, want) in rows {
            assert_eq!(identity_code(&e), want, "{e}");
            let message = e.to_string();
            let status = Status::from(e);
            assert_eq!((status.code(), status.message()), (want, message.as_str()));
        }
    }

    #[test]
    fn each_release_error_has_a_deliberate_code() {
        use crate::release::Error as R;
        use crate::release::machine::{Command, Refused};
        let rows = vec![
            (R::Invalid(vec![]), Code::InvalidArgument),
            (R::Action("jump".into()), Code::InvalidArgument),
            (R::Missing("default/echo".into()), Code::NotFound),
            (R::Never("default/echo".into()), Code::NotFound),
            (
                R::UnderWay {
                    service: "default/echo".into(),
                    phase: "Progressing",
                },
                Code::FailedPrecondition,
            ),
            (
                R::Refused(Refused {
                    service: "echo".into(),
                    phase: "Promoted",
                    command: Command::Pause,
                }),
                Code::FailedPrecondition,
            ),
            (R::Split("nothing splits".into()), Code::FailedPrecondition),
            (
                R::Webhook("pre-rollout webhook gate: 500".into()),
                Code::FailedPrecondition,
            ),
            (R::State(Error::ClusterRules), Code::FailedPrecondition),
            (R::Cluster("pause"), Code::FailedPrecondition),
            (
                R::NotPassing("success rate 50.0% < 99.0%".into()),
                Code::FailedPrecondition,
            ),
            (
                R::Weights(crate::kubernetes::weights::Error::Busy(
                    "TrafficSplit default/echo".into(),
                )),
                Code::Unavailable,
            ),
        ];
        for (e, want) in rows {
            let message = e.to_string();
            let status = Status::from(e);
            assert_eq!((status.code(), status.message()), (want, message.as_str()));
        }
    }

    #[test]
    fn a_malformed_telemetry_report_is_an_invalid_argument_and_a_stranger_s_pull_refused() {
        use crate::telemetry::Error as T;
        let peer = "spiffe://cluster.local/ns/mesh-system/sa/mesh-control";
        let rows = [
            (T::NoNode, Code::InvalidArgument),
            (
                T::Buckets {
                    instance: "echo-0".into(),
                    problem: "bounds not ascending".into(),
                },
                Code::InvalidArgument,
            ),
            (T::Direction("sideways".into()), Code::InvalidArgument),
            (
                T::NotAPeer {
                    caller: None,
                    expected: peer.into(),
                },
                Code::Unauthenticated,
            ),
            (
                T::NotAPeer {
                    caller: Some("spiffe://cluster.local/ns/default/sa/echo".into()),
                    expected: peer.into(),
                },
                Code::PermissionDenied,
            ),
        ];
        for (e, want) in rows {
            let message = e.to_string();
            let status = Status::from(e);
            assert_eq!((status.code(), status.message()), (want, message.as_str()));
        }
    }
}
