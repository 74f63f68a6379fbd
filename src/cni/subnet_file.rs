//! Reads `subnet.env` as written by the agent (or by flanneld), with the CNI error codes.

use std::io::ErrorKind;
use std::path::Path;

use super::error::{CniError, Code};
use crate::subnet_env::SubnetEnv;

/// Parses the file's text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<SubnetEnv, CniError> {
    SubnetEnv::parse(text).map_err(|e| CniError::new(Code::Decode, format!("{source}: {e}"), text.trim().to_string()))
}

/// Reads the file. Missing means the agent has not taken up its lease yet: the runtime should
/// try again later rather than give up on the pod.
pub fn read(path: &Path) -> Result<SubnetEnv, CniError> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &source),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(CniError::new(
            Code::TryAgainLater,
            format!("{source} does not exist yet: is the weft agent running on this host?"),
            e.to_string(),
        )),
        Err(e) => Err(CniError::new(Code::Io, format!("reading {source}"), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agents_format() {
        let text =
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        assert_eq!(parse(text, "subnet.env").unwrap(), SubnetEnv::parse(text).unwrap());
    }

    #[test]
    fn bad_or_missing_keys_are_decode_errors() {
        let missing = parse("FLANNEL_NETWORK=10.244.0.0/16\n", "f").unwrap_err();
        assert_eq!(missing.code, Code::Decode);
        assert!(missing.msg.contains("FLANNEL_SUBNET"), "{}", missing.msg);
        let bad =
            parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=x\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n", "f")
                .unwrap_err();
        assert_eq!(bad.code, Code::Decode);
        assert!(bad.msg.starts_with("f: line 2: FLANNEL_SUBNET: "), "{}", bad.msg);
    }

    #[test]
    fn an_absent_file_means_try_again_later() {
        let err = read(Path::new("/nonexistent/weft/subnet.env")).unwrap_err();
        assert_eq!(err.code, Code::TryAgainLater);
    }
}
