//! A job's driver program: `job.main` runs in a store whose `flint:job/host` imports
//! answer through an [`ActionRunner`] (the driver's). In a task's store the same imports
//! exist but refuse what only the driver program may do.

use crate::bindings::flint::job::host::Host;
use crate::{GuestState, LoadedJob, Sandbox, SandboxError, StoreLimits, convert, unwrap_call, wit};
use flint_protocol::plan::LogicalPlan;
use flint_protocol::wire::AppErrorKind;
use std::sync::Arc;

/// What an action gives back to the driver program.
#[derive(Debug)]
pub enum ActionResult {
    /// Arrow IPC streams of encoded rows (`collect`).
    Rows(Vec<Vec<u8>>),
    Count(u64),
    Saved,
}

/// Why an action failed: what kind of failure, and the chain of messages.
#[derive(Clone, Debug)]
pub struct ActionError {
    pub kind: AppErrorKind,
    pub message: String,
    pub causes: Vec<String>,
}

impl ActionError {
    pub fn new(kind: AppErrorKind, message: impl Into<String>, causes: Vec<String>) -> Self {
        ActionError {
            kind,
            message: message.into(),
            causes,
        }
    }
}

/// What an action answers the driver program, in time.
pub type ActionFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<ActionResult, ActionError>> + Send + 'a>,
>;

/// Runs the actions of a driver program. Only the driver installs one.
pub trait ActionRunner: Send + Sync {
    /// Runs `action` on the plan the program built (converted, not yet validated).
    fn run(&self, plan: LogicalPlan) -> ActionFuture<'_>;
    /// The application's setting `key`, if set.
    fn setting(&self, key: &str) -> Option<String>;
    /// Drops the application's cached dataset `id` everywhere.
    fn unpersist(
        &self,
        id: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
    /// Registers a broadcast value; returns its id.
    fn broadcast(&self, value: Vec<u8>) -> Result<u32, ActionError>;
    fn broadcast_value(&self, id: u32) -> Option<Arc<Vec<u8>>>;
    /// Updates of accumulator `id` committed since the last call.
    fn accumulator_updates(&self, id: u32) -> Vec<Vec<u8>>;
}

/// How a driver program ended, and what it printed.
pub struct ProgramOutcome {
    pub result: Result<(), SandboxError>,
    pub stdout: String,
}

impl Sandbox {
    /// Runs the component's `main` with `args`, its actions answered by `actions`.
    pub async fn run_program(
        &self,
        loaded: &LoadedJob,
        limits: &StoreLimits,
        actions: Arc<dyn ActionRunner>,
        args: &[String],
    ) -> ProgramOutcome {
        let mut store = self.store(limits, Some(actions), None);
        let result = async {
            let instance = loaded.instantiate(&mut store).await?;
            let r = instance.flint_job_job().call_main(&mut store, args).await;
            unwrap_call(r, &store)
        }
        .await;
        ProgramOutcome {
            result,
            stdout: store.data().stdout(),
        }
    }
}

fn only_in_main(what: &str) -> wit::ErrorChain {
    wit::ErrorChain {
        message: format!("{what} can only run in the driver program, not inside a task"),
        causes: Vec::new(),
        kind: None,
    }
}

impl wit::Host for GuestState {}

impl Host for GuestState {
    async fn run_action(
        &mut self,
        plan: wit::Plan,
        action: wit::Action,
    ) -> Result<wit::ActionResult, wit::ErrorChain> {
        let Some(runner) = self.actions.clone() else {
            return Err(only_in_main("actions (collect, count, save_as_text)"));
        };
        let plan = convert::plan_from_wit(plan, action);
        runner
            .run(plan)
            .await
            .map(convert::result_to_wit)
            .map_err(convert::error_to_wit)
    }

    async fn setting(&mut self, key: String) -> Option<String> {
        self.actions.as_ref().and_then(|a| a.setting(&key))
    }

    async fn unpersist(&mut self, id: u32) {
        if let Some(a) = self.actions.clone() {
            a.unpersist(id).await;
        }
    }

    async fn broadcast(&mut self, value: Vec<u8>) -> Result<u32, wit::ErrorChain> {
        match &self.actions {
            Some(a) => a.broadcast(value).map_err(convert::error_to_wit),
            None => Err(only_in_main("broadcast")),
        }
    }

    async fn broadcast_value(&mut self, id: u32) -> Result<Vec<u8>, String> {
        if let Some(a) = &self.actions {
            return a
                .broadcast_value(id)
                .map(|v| v.to_vec())
                .ok_or_else(|| format!("no broadcast {id} in this application"));
        }
        match self.broadcasts.clone() {
            Some(b) => b.get(id).await.map(|v| v.to_vec()),
            None => Err("broadcast values are not available here".into()),
        }
    }

    async fn accumulator_updates(&mut self, id: u32) -> Vec<Vec<u8>> {
        self.actions
            .as_ref()
            .map_or_else(Vec::new, |a| a.accumulator_updates(id))
    }
}
