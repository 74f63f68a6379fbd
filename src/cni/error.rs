//! CNI errors as the spec prints them: `{"cniVersion", "code", "msg", "details"}` on stdout.

use serde::Serialize;

/// Error codes the CNI spec (1.0) reserves; 100 and up are this plugin's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnvironment,
    Io,
    Decode,
    InvalidConfig,
    TryAgainLater,
    /// The delegate plugin is not on CNI_PATH.
    DelegateNotFound,
    /// The delegate plugin failed without printing a CNI error of its own.
    DelegateFailed,
    /// The delegate's own error, passed on unchanged.
    Delegate(u32),
}

impl Code {
    pub fn number(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnsupportedField => 2,
            Code::UnknownContainer => 3,
            Code::InvalidEnvironment => 4,
            Code::Io => 5,
            Code::Decode => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::DelegateNotFound => 100,
            Code::DelegateFailed => 101,
            Code::Delegate(n) => n,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// The JSON the runtime reads from stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire { cni_version, code: self.code.number(), msg: &self.msg, details: &self.details })
            .expect("a CNI error always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_specs_shape() {
        let e = CniError::new(Code::TryAgainLater, "subnet.env not found", "/run/flannel/subnet.env");
        assert_eq!(
            e.to_json("1.0.0"),
            r#"{"cniVersion":"1.0.0","code":11,"msg":"subnet.env not found","details":"/run/flannel/subnet.env"}"#
        );
        let bare = CniError::new(Code::InvalidConfig, "no name", "");
        assert_eq!(bare.to_json("1.0.0"), r#"{"cniVersion":"1.0.0","code":7,"msg":"no name"}"#);
    }
}
