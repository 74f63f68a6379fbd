//! Waiting for a global operation: poll `globalOperations.get` with a growing pause until the
//! operation is DONE or the deadline passes, and report the operation's own error.

use std::time::Duration;

use tokio::time::Instant;

use crate::api::ComputeApi;
use crate::error::GceError;
use crate::types::{OpStatus, Operation};

#[derive(Debug, Clone, Copy)]
pub struct WaitPolicy {
    pub first_pause: Duration,
    pub max_pause: Duration,
    pub deadline: Duration,
}

impl Default for WaitPolicy {
    /// Route operations usually finish in 5–20 s on GCE.
    fn default() -> Self {
        WaitPolicy {
            first_pause: Duration::from_millis(250),
            max_pause: Duration::from_secs(5),
            deadline: Duration::from_secs(120),
        }
    }
}

/// Waits for `op` (as returned by an insert or delete) to finish successfully.
pub async fn wait_for_operation(api: &dyn ComputeApi, op: Operation, policy: WaitPolicy) -> Result<(), GceError> {
    let started = Instant::now();
    let mut pause = policy.first_pause;
    let mut current = op;
    loop {
        let status_name = match current.status {
            OpStatus::Done(None) => return Ok(()),
            OpStatus::Done(Some(error)) => return Err(error.into_error(&current.name)),
            OpStatus::Pending => "PENDING",
            OpStatus::Running => "RUNNING",
        };
        let waited = started.elapsed();
        if waited >= policy.deadline {
            return Err(GceError::Timeout { operation: current.name, waited, status: status_name.into() });
        }
        tokio::time::sleep(pause.min(policy.deadline - waited)).await;
        pause = (pause * 2).min(policy.max_pause);
        current = api.get_operation(&current.name).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::error::{OperationError, OperationErrorItem};
    use crate::types::{Instance, Network, Route, RouteQuota, RouteSpec};

    /// Answers `get_operation` from a script, one status per poll.
    struct Script(Mutex<Vec<OpStatus>>);

    #[async_trait]
    impl ComputeApi for Script {
        async fn insert_route(&self, _: &RouteSpec) -> Result<Operation, GceError> {
            unimplemented!()
        }
        async fn get_route(&self, _: &str) -> Result<Route, GceError> {
            unimplemented!()
        }
        async fn list_routes(&self, _: &str) -> Result<Vec<Route>, GceError> {
            unimplemented!()
        }
        async fn delete_route(&self, _: &str) -> Result<Operation, GceError> {
            unimplemented!()
        }
        async fn get_operation(&self, name: &str) -> Result<Operation, GceError> {
            let mut script = self.0.lock().unwrap();
            let status = if script.len() > 1 { script.remove(0) } else { script[0].clone() };
            Ok(Operation { name: name.into(), status })
        }
        async fn get_instance(&self, _: &str, _: &str) -> Result<Instance, GceError> {
            unimplemented!()
        }
        async fn get_network(&self, _: &str) -> Result<Network, GceError> {
            unimplemented!()
        }
        async fn route_quota(&self) -> Result<Option<RouteQuota>, GceError> {
            unimplemented!()
        }
    }

    fn pending(name: &str) -> Operation {
        Operation { name: name.into(), status: OpStatus::Pending }
    }

    /// Real time, kept short (tokio's paused clock would need its `test-util` feature, which
    /// would rebuild the whole SDK for this crate's tests).
    fn quick() -> WaitPolicy {
        WaitPolicy {
            first_pause: Duration::from_millis(5),
            max_pause: Duration::from_millis(20),
            deadline: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn polls_until_done() {
        let api = Script(Mutex::new(vec![OpStatus::Running, OpStatus::Done(None)]));
        wait_for_operation(&api, pending("op"), quick()).await.unwrap();
        assert!(api.0.lock().unwrap().len() == 1);
    }

    #[tokio::test]
    async fn reports_the_operation_error() {
        let error = OperationError {
            items: vec![OperationErrorItem { code: "RESOURCE_IN_USE".into(), message: "x".into(), quota: None }],
        };
        let api = Script(Mutex::new(vec![OpStatus::Done(Some(error))]));
        let e = wait_for_operation(&api, pending("op"), quick()).await.unwrap_err();
        assert!(matches!(e, GceError::Operation { ref operation, .. } if operation == "op"), "{e}");
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let api = Script(Mutex::new(vec![OpStatus::Running]));
        let policy = WaitPolicy { deadline: Duration::from_millis(200), ..quick() };
        let started = Instant::now();
        let e = wait_for_operation(&api, pending("op"), policy).await.unwrap_err();
        assert!(matches!(e, GceError::Timeout { ref status, .. } if status == "RUNNING"), "{e}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2), "{waited:?}");
    }
}
