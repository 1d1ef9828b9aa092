//! Dual-agent convergence, run by the host (`lodge:platform/convergence`).
//!
//! ```no_run
//! use lodge_sdk::convergence::{self, Preset};
//!
//! # fn demo() -> Result<(), lodge_sdk::convergence::Error> {
//! let outcome = convergence::design("a rate limiter for our public API", None)?;
//! println!("{} (agreement {}/100 after {} rounds)", outcome.answer, outcome.score, outcome.rounds);
//! let task = convergence::submit(&convergence::request("Pick a database", "DBA", "Developer"))?;
//! let state = convergence::poll(&task)?;
//! # let _ = (state, Preset::Review);
//! # Ok(())
//! # }
//! ```

use crate::bindings::lodge::platform::convergence as host;
pub use crate::bindings::lodge::platform::convergence::{
    Outcome, Preset, Request, TaskState, Turn, Usage,
};
pub use crate::bindings::lodge::platform::types::Error;

/// A request with the given roles and default rounds and threshold.
pub fn request(prompt: &str, agent_a_role: &str, agent_b_role: &str) -> Request {
    Request {
        prompt: prompt.to_owned(),
        agent_a_role: agent_a_role.to_owned(),
        agent_b_role: agent_b_role.to_owned(),
        context: None,
        max_rounds: None,
        threshold: None,
    }
}

/// Runs `request` and waits for the outcome.
pub fn converge(request: &Request) -> Result<Outcome, Error> {
    host::converge(request)
}

/// Runs a preset's roles on `prompt`.
pub fn preset(preset: Preset, prompt: &str, context: Option<&str>) -> Result<Outcome, Error> {
    host::converge_preset(preset, prompt, context)
}

/// Software Architect vs. Pragmatic Engineer.
pub fn design(prompt: &str, context: Option<&str>) -> Result<Outcome, Error> {
    preset(Preset::Design, prompt, context)
}

/// Code Reviewer vs. Author.
pub fn review(prompt: &str, context: Option<&str>) -> Result<Outcome, Error> {
    preset(Preset::Review, prompt, context)
}

/// Advocate vs. Skeptic.
pub fn decide(prompt: &str, context: Option<&str>) -> Result<Outcome, Error> {
    preset(Preset::Decide, prompt, context)
}

/// Queues `request`; returns a task id for [`poll`].
pub fn submit(request: &Request) -> Result<String, Error> {
    host::submit(request)
}

/// The state of a task this tenant submitted.
pub fn poll(task_id: &str) -> Result<TaskState, Error> {
    host::poll(task_id)
}
