//! EC2 failures, classified by the error code the API returned (never by message text).

/// Why an EC2 call failed. `operation` names the API operation (`CreateRoute`...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ec2Error {
    /// The table holds as many routes as its quota allows.
    #[error("route table {table} is full (RouteLimitExceeded)")]
    RouteLimitExceeded { table: String },
    /// Still throttled after the SDK's retries with backoff.
    #[error("{operation}: throttled by EC2 (RequestLimitExceeded) after retries")]
    Throttled { operation: &'static str },
    #[error("{operation}: not permitted ({code}): {message}")]
    AccessDenied { operation: &'static str, code: String, message: String },
    #[error("{operation}: not found ({code}): {message}")]
    NotFound { operation: &'static str, code: String, message: String },
    /// CreateRoute for a destination the table already has (someone made it since we looked).
    #[error("{operation}: the route already exists")]
    AlreadyExists { operation: &'static str },
    /// No answer: connection refused, timeout, bad response.
    #[error("{operation}: EC2 unreachable: {detail}")]
    Unreachable { operation: &'static str, detail: String },
    #[error("{operation}: {code}: {message}")]
    Other { operation: &'static str, code: String, message: String },
    /// EC2 answered, but without a field weft needs.
    #[error("{operation}: unexpected answer: {detail}")]
    Malformed { operation: &'static str, detail: String },
}

impl Ec2Error {
    /// Builds the error for a service error `code`. `table` names the table of a route call.
    pub fn classify(
        operation: &'static str,
        table: Option<&str>,
        code: Option<&str>,
        message: Option<&str>,
    ) -> Ec2Error {
        let code = code.unwrap_or("Unknown").to_string();
        let message = message.unwrap_or("").to_string();
        match code.as_str() {
            "RouteLimitExceeded" => Ec2Error::RouteLimitExceeded { table: table.unwrap_or("?").to_string() },
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => Ec2Error::Throttled { operation },
            "UnauthorizedOperation" | "AuthFailure" | "AccessDenied" | "OptInRequired" => {
                Ec2Error::AccessDenied { operation, code, message }
            }
            "RouteAlreadyExists" => Ec2Error::AlreadyExists { operation },
            // EC2 spells every missing object `Invalid<Kind>.NotFound` (InvalidRoute.NotFound,
            // InvalidRouteTableID.NotFound, InvalidInstanceID.NotFound...).
            c if c.ends_with(".NotFound") => Ec2Error::NotFound { operation, code, message },
            _ => Ec2Error::Other { operation, code, message },
        }
    }

    /// The metric label for this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            Ec2Error::RouteLimitExceeded { .. } => "route_limit",
            Ec2Error::Throttled { .. } => "throttled",
            Ec2Error::AccessDenied { .. } => "access_denied",
            Ec2Error::NotFound { .. } => "not_found",
            Ec2Error::AlreadyExists { .. } => "already_exists",
            Ec2Error::Unreachable { .. } => "unreachable",
            Ec2Error::Other { .. } | Ec2Error::Malformed { .. } => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_code() {
        let c = |code| Ec2Error::classify("CreateRoute", Some("rtb-1"), Some(code), Some("whatever"));
        assert_eq!(c("RouteLimitExceeded"), Ec2Error::RouteLimitExceeded { table: "rtb-1".into() });
        assert_eq!(c("RequestLimitExceeded"), Ec2Error::Throttled { operation: "CreateRoute" });
        assert_eq!(c("UnauthorizedOperation").outcome(), "access_denied");
        assert_eq!(c("InvalidRoute.NotFound").outcome(), "not_found");
        assert_eq!(c("InvalidRouteTableID.NotFound").outcome(), "not_found");
        assert_eq!(c("RouteAlreadyExists").outcome(), "already_exists");
        assert_eq!(c("InternalError").outcome(), "error");
    }

    #[test]
    fn message_text_does_not_change_the_class() {
        let e = Ec2Error::classify("DeleteRoute", None, Some("InternalError"), Some("RouteLimitExceeded NotFound"));
        assert!(matches!(e, Ec2Error::Other { .. }), "{e:?}");
        let e = Ec2Error::classify("DeleteRoute", None, None, None);
        assert_eq!(e.to_string(), "DeleteRoute: Unknown: ");
    }
}
