//! The one place that maps control-plane errors to gRPC status codes. Each
//! mapping is a deliberate choice a client can rely on; see the tests.

use crate::state::Error;
use tonic::{Code, Status};

/// The gRPC code for each error.
pub fn code(e: &Error) -> Code {
    match e {
        Error::Invalid(_) | Error::Registry(_) => Code::InvalidArgument,
        Error::Shift(crate::rules::ShiftError::Percent(_)) => Code::InvalidArgument,
        Error::Shift(_) | Error::Index(_) => Code::NotFound,
        Error::Store(_) => Code::Unavailable,
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

impl From<crate::telemetry::Error> for Status {
    fn from(e: crate::telemetry::Error) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(code(&e), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::ShiftError;

    #[test]
    fn each_error_has_a_deliberate_code() {
        assert_eq!(code(&Error::Invalid(vec![])), Code::InvalidArgument);
        assert_eq!(
            code(&Error::Shift(ShiftError::Percent(120))),
            Code::InvalidArgument
        );
        let no_split = ShiftError::NoSplit {
            namespace: "d".into(),
            service: "s".into(),
        };
        assert_eq!(code(&Error::Shift(no_split)), Code::NotFound);
        let io = crate::store::Error::Io {
            path: "x".into(),
            source: std::io::Error::other("disk"),
        };
        let status = Status::from(Error::Store(io));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("disk"));
        let mismatch = crate::identity::ca::Error::Mismatch {
            proven: "spiffe://a".into(),
            requested: "spiffe://b".into(),
        };
        assert_eq!(Status::from(mismatch).code(), Code::PermissionDenied);
        assert_eq!(
            identity_code(&crate::identity::ca::Error::Csr("x".into())),
            Code::InvalidArgument
        );
    }
}
