//! `lodge:platform/convergence`: dual-agent convergence for the calling tenant,
//! metered against its daily token budget.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use super::PlatformError;
use super::bindings::lodge::platform::convergence::{self as wit, Preset, TaskState};
use super::bindings::lodge::platform::types::Error;
use crate::convergence::tasks::{ConvergenceFailure, ConvergenceService, TaskState as State};
use crate::convergence::{self as engine, ConvergeRequest};

/// What one request's guest may do with convergence.
#[derive(Debug, Clone)]
pub struct ConvergenceCtx {
    /// The tenant tokens are metered to.
    pub tenant_id: Arc<str>,
    /// Convergence (provider, budgets, task queue).
    pub service: Arc<ConvergenceService>,
}

impl ConvergenceCtx {
    /// What a request of `tenant` may do.
    pub fn new(host: &super::CapabilityHost, tenant: super::TenantRef<'_>) -> Self {
        Self {
            tenant_id: tenant.id.clone(),
            service: host.convergence.clone(),
        }
    }
}

/// The view host functions run on.
#[derive(Debug)]
pub struct Convergence<'a> {
    ctx: &'a ConvergenceCtx,
}

impl<'a> Convergence<'a> {
    /// A view over `ctx`.
    pub fn new(ctx: &'a ConvergenceCtx) -> Self {
        Self { ctx }
    }

    fn service(&self) -> &ConvergenceService {
        &self.ctx.service
    }
}

struct ConvergenceData;

impl HasData for ConvergenceData {
    type Data<'a> = Convergence<'a>;
}

/// Links `lodge:platform/convergence`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Convergence<'_>,
) -> anyhow::Result<()> {
    wit::add_to_linker::<T, ConvergenceData>(linker, view)?;
    Ok(())
}

pub use crate::convergence::tasks::PROVIDER_UNAVAILABLE;

/// The guest's error for a failure.
pub fn to_error(failure: ConvergenceFailure) -> Error {
    match failure {
        ConvergenceFailure::Invalid(m) => Error::InvalidInput(m),
        e
        @ (ConvergenceFailure::QuotaExceeded { .. } | ConvergenceFailure::TooManyTasks { .. }) => {
            Error::QuotaExceeded(e.to_string())
        }
        ConvergenceFailure::UnknownTask(id) => Error::NotFound(format!("no task {id}")),
        ConvergenceFailure::Provider(e) => {
            // The provider's URL and answer are the operator's business; the
            // request span carries the tenant and request id to match them.
            tracing::warn!(error = %e, "the model provider failed");
            Error::Unavailable(PROVIDER_UNAVAILABLE.into())
        }
        ConvergenceFailure::Storage(e) => {
            tracing::error!(error = ?e, "convergence storage failed");
            Error::Unavailable("convergence is unavailable; retry later".into())
        }
    }
}

fn request(r: wit::Request) -> ConvergeRequest {
    ConvergeRequest {
        prompt: r.prompt,
        agent_a_role: r.agent_a_role,
        agent_b_role: r.agent_b_role,
        context: r.context,
        max_rounds: r.max_rounds,
        threshold: r.threshold,
    }
}

fn outcome(o: engine::Outcome) -> wit::Outcome {
    wit::Outcome {
        answer: o.answer,
        score: o.score,
        rounds: o.rounds,
        converged: o.converged,
        transcript: o
            .transcript
            .into_iter()
            .map(|t| wit::Turn {
                round: t.round,
                agent: t.agent,
                role: t.role,
                content: t.content,
            })
            .collect(),
        usage: wit::Usage {
            prompt_tokens: o.usage.prompt_tokens,
            completion_tokens: o.usage.completion_tokens,
        },
        provider: o.provider,
        model: o.model,
    }
}

fn preset(p: Preset) -> engine::Preset {
    match p {
        Preset::Design => engine::Preset::Design,
        Preset::Review => engine::Preset::Review,
        Preset::Decide => engine::Preset::Decide,
        Preset::Plan => engine::Preset::Plan,
        Preset::Analyze => engine::Preset::Analyze,
        Preset::Generate => engine::Preset::Generate,
    }
}

type Outcome<T> = Result<T, PlatformError>;

impl super::bindings::lodge::platform::types::Host for Convergence<'_> {
    fn convert_error(&mut self, err: PlatformError) -> wasmtime::Result<Error> {
        err.into_guest()
    }
}

impl wit::Host for Convergence<'_> {
    async fn converge(&mut self, req: wit::Request) -> Outcome<wit::Outcome> {
        let done = self
            .service()
            .converge_for(&self.ctx.tenant_id, &request(req))
            .await;
        Ok(outcome(done.map_err(to_error)?))
    }

    async fn converge_preset(
        &mut self,
        p: Preset,
        prompt: String,
        context: Option<String>,
    ) -> Outcome<wit::Outcome> {
        let req = preset(p).request(&prompt, context);
        let done = self.service().converge_for(&self.ctx.tenant_id, &req).await;
        Ok(outcome(done.map_err(to_error)?))
    }

    async fn submit(&mut self, req: wit::Request) -> Outcome<String> {
        let queued = self
            .service()
            .submit_task(&self.ctx.tenant_id, &request(req), None)
            .await;
        Ok(queued.map_err(to_error)?)
    }

    async fn poll(&mut self, task_id: String) -> Outcome<TaskState> {
        let state = self
            .service()
            .task_state(&self.ctx.tenant_id, &task_id)
            .await;
        Ok(match state.map_err(to_error)? {
            State::Pending => TaskState::Pending,
            State::Running => TaskState::Running,
            State::Done(o) => TaskState::Done(outcome(*o)),
            State::Failed(m) => TaskState::Failed(m),
        })
    }
}
