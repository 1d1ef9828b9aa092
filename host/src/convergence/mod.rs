//! The convergence engine: two agents with roles, rounds, an agreement score.
//!
//! A proposes; B critiques A and proposes; then each revises given the other's
//! latest position. After each round [`agreement`] scores the two latest
//! positions; the dialogue stops at the threshold or after `max_rounds`.
//! Providers ([`provider`]) are behind a trait: the built-in offline one (the
//! default, deterministic, no network) and any OpenAI-compatible endpoint.

pub mod provider;
pub mod tasks;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use provider::{ChatMessage, Provider, ProviderError};

/// What to converge on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConvergeRequest {
    /// The question or task.
    pub prompt: String,
    /// Role of agent A.
    pub agent_a_role: String,
    /// Role of agent B.
    pub agent_b_role: String,
    /// Background both agents see.
    #[serde(default)]
    pub context: Option<String>,
    /// Rounds at most (1-10, default 5).
    #[serde(default)]
    pub max_rounds: Option<u32>,
    /// Agreement (0-100) that ends the dialogue (default 80).
    #[serde(default)]
    pub threshold: Option<u32>,
}

/// One message of the dialogue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Turn {
    /// Round, from 1.
    pub round: u32,
    /// `a` or `b`.
    pub agent: String,
    /// The agent's role.
    pub role: String,
    /// What it said.
    pub content: String,
}

/// Tokens used.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
// Named apart from the host's `storage::Usage` in the OpenAPI document.
#[schema(as = TokenUsage)]
pub struct Usage {
    /// Tokens sent.
    pub prompt_tokens: u32,
    /// Tokens produced.
    pub completion_tokens: u32,
}

impl Usage {
    /// Both together.
    pub fn total(&self) -> u64 {
        u64::from(self.prompt_tokens) + u64::from(self.completion_tokens)
    }
}

/// The result of a convergence.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The final position (B's last).
    pub answer: String,
    /// Agreement of the last two positions, 0-100.
    pub score: u32,
    /// Rounds run.
    pub rounds: u32,
    /// Whether the threshold was reached.
    pub converged: bool,
    /// Every message.
    pub transcript: Vec<Turn>,
    /// Tokens used.
    pub usage: Usage,
    /// `offline` or `openai-compatible`.
    pub provider: String,
    /// The model.
    pub model: String,
}

/// Ready-made roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Architect vs. pragmatic engineer.
    Design,
    /// Reviewer vs. author.
    Review,
    /// Advocate vs. skeptic.
    Decide,
    /// Planner vs. risk analyst.
    Plan,
    /// Analyst vs. domain expert.
    Analyze,
    /// Creator vs. editor.
    Generate,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Self; 6] = [
        Self::Design,
        Self::Review,
        Self::Decide,
        Self::Plan,
        Self::Analyze,
        Self::Generate,
    ];

    /// Its name, as the API and the guest interface spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Design => "design",
            Self::Review => "review",
            Self::Decide => "decide",
            Self::Plan => "plan",
            Self::Analyze => "analyze",
            Self::Generate => "generate",
        }
    }

    /// The preset whose [`Preset::request`] made `request`, and the prompt it
    /// was given (its framing taken off); `None` for roles of the caller's own.
    pub fn made(request: &ConvergeRequest) -> Option<(Self, &str)> {
        Self::ALL.into_iter().find_map(|preset| {
            let (a, b, framing) = preset.roles();
            let prompt = request.prompt.strip_prefix(framing)?.strip_prefix(": ")?;
            (request.agent_a_role == a && request.agent_b_role == b).then_some((preset, prompt))
        })
    }

    /// The roles of A and B, and a framing line prefixed to the prompt.
    pub fn roles(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Design => (
                "Software Architect",
                "Pragmatic Engineer",
                "Design a solution for",
            ),
            Self::Review => ("Code Reviewer", "Author", "Review the following"),
            Self::Decide => ("Advocate", "Skeptic", "Decide on"),
            Self::Plan => ("Planner", "Risk Analyst", "Make a plan for"),
            Self::Analyze => ("Analyst", "Domain Expert", "Analyze"),
            Self::Generate => ("Creator", "Editor", "Write"),
        }
    }

    /// The request this preset makes of `prompt`.
    pub fn request(self, prompt: &str, context: Option<String>) -> ConvergeRequest {
        let (a, b, framing) = self.roles();
        ConvergeRequest {
            prompt: format!("{framing}: {prompt}"),
            agent_a_role: a.to_owned(),
            agent_b_role: b.to_owned(),
            context,
            max_rounds: None,
            threshold: None,
        }
    }
}

/// Why a convergence did not produce an outcome.
#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// Words of three or more letters or digits, lowercased: what [`agreement`] compares.
fn terms(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .map(str::to_lowercase)
        .collect()
}

/// How far two positions agree, 0-100: the Jaccard index of their sets of
/// words (3+ letters or digits, case-folded) × 100, rounded down. Deterministic;
/// 100 for identical vocabularies, 0 for disjoint ones.
pub fn agreement(a: &str, b: &str) -> u32 {
    let (a, b) = (terms(a), terms(b));
    let union = a.union(&b).count();
    if union == 0 {
        return 100;
    }
    (a.intersection(&b).count() * 100 / union) as u32
}

/// Longest agent role accepted: a role is a few words, and every round resends it.
const MAX_ROLE_BYTES: usize = 500;

/// Checks and fills in defaults: (max rounds, threshold).
pub fn validate(request: &ConvergeRequest) -> Result<(u32, u32), ConvergeError> {
    let invalid = |m: &str| Err(ConvergeError::Invalid(m.to_owned()));
    if request.prompt.trim().is_empty() || request.prompt.len() > 20_000 {
        return invalid("prompt must be 1-20000 bytes");
    }
    if request.agent_a_role.trim().is_empty() || request.agent_b_role.trim().is_empty() {
        return invalid("both agents need a role");
    }
    if request.agent_a_role.len() > MAX_ROLE_BYTES || request.agent_b_role.len() > MAX_ROLE_BYTES {
        return invalid("roles must be at most 500 bytes each");
    }
    if request.context.as_ref().is_some_and(|c| c.len() > 50_000) {
        return invalid("context must be at most 50000 bytes");
    }
    let rounds = request.max_rounds.unwrap_or(5);
    if !(1..=10).contains(&rounds) {
        return invalid("max-rounds must be 1-10");
    }
    let threshold = request.threshold.unwrap_or(80);
    if threshold > 100 {
        return invalid("threshold must be 0-100");
    }
    Ok((rounds, threshold))
}

fn system(role: &str) -> ChatMessage {
    ChatMessage::system(format!(
        "You are a {role}. Work with another expert toward one agreed answer. \
         Be concrete and brief; keep what is right in their position and say what you change."
    ))
}

/// Runs the dialogue on `provider`.
pub async fn converge(
    provider: &dyn Provider,
    request: &ConvergeRequest,
) -> Result<Outcome, ConvergeError> {
    converge_metered(provider, request, &|_| {}).await
}

/// Runs the dialogue on `provider`, calling `meter` with the tokens of each
/// provider call as soon as it returns: a dialogue cut short (a deadline, a
/// client gone) has still paid for the calls it made.
pub async fn converge_metered(
    provider: &dyn Provider,
    request: &ConvergeRequest,
    meter: &(dyn Fn(u64) + Send + Sync),
) -> Result<Outcome, ConvergeError> {
    let (max_rounds, threshold) = validate(request)?;
    let task = match &request.context {
        Some(context) => format!("{}\n\nContext:\n{context}", request.prompt),
        None => request.prompt.clone(),
    };
    let (role_a, role_b) = (&request.agent_a_role, &request.agent_b_role);
    let mut transcript = Vec::new();
    let mut usage = Usage::default();
    let mut ask = async |role: &str, user: String| -> Result<String, ConvergeError> {
        let reply = provider
            .chat(&[system(role), ChatMessage::user(user)])
            .await?;
        usage.prompt_tokens += reply.prompt_tokens;
        usage.completion_tokens += reply.completion_tokens;
        meter(u64::from(reply.prompt_tokens) + u64::from(reply.completion_tokens));
        Ok(reply.content)
    };

    let mut a = ask(role_a, format!("Task: {task}\n\nPropose your position.")).await?;
    transcript.push(Turn {
        round: 1,
        agent: "a".into(),
        role: role_a.clone(),
        content: a.clone(),
    });
    let mut b = ask(
        role_b,
        format!(
            "Task: {task}\n\nThe {role_a} proposes:\n{a}\n\nCritique it and propose your position."
        ),
    )
    .await?;
    transcript.push(Turn {
        round: 1,
        agent: "b".into(),
        role: role_b.clone(),
        content: b.clone(),
    });
    let mut score = agreement(&a, &b);
    let mut rounds = 1;
    while score < threshold && rounds < max_rounds {
        rounds += 1;
        a = ask(
            role_a,
            format!("Task: {task}\n\nYour position:\n{a}\n\nThe {role_b} says:\n{b}\n\nRevise your position toward agreement."),
        )
        .await?;
        transcript.push(Turn {
            round: rounds,
            agent: "a".into(),
            role: role_a.clone(),
            content: a.clone(),
        });
        b = ask(
            role_b,
            format!("Task: {task}\n\nYour position:\n{b}\n\nThe {role_a} says:\n{a}\n\nRevise your position toward agreement."),
        )
        .await?;
        transcript.push(Turn {
            round: rounds,
            agent: "b".into(),
            role: role_b.clone(),
            content: b.clone(),
        });
        score = agreement(&a, &b);
    }
    Ok(Outcome {
        answer: b,
        score,
        rounds,
        converged: score >= threshold,
        transcript,
        usage,
        provider: provider.name().to_owned(),
        model: provider.model().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convergence::provider::Offline;

    #[test]
    fn agreement_is_the_jaccard_index_of_words() {
        assert_eq!(
            agreement("Use Postgres with replicas", "use postgres WITH replicas!"),
            100
        );
        assert_eq!(agreement("alpha beta", "gamma delta"), 0);
        assert_eq!(agreement("alpha beta gamma delta", "alpha beta"), 50);
        assert_eq!(agreement("", ""), 100);
        assert_eq!(
            agreement("a an it", "of to"),
            100,
            "short words are ignored"
        );
    }

    #[test]
    fn a_request_tells_the_preset_that_made_it() {
        for preset in Preset::ALL {
            let request = preset.request("a cache for sessions", None);
            assert_eq!(
                Preset::made(&request).map(|(p, prompt)| (p.as_str(), prompt)),
                Some((preset.as_str(), "a cache for sessions"))
            );
            let named = serde_json::to_value(preset).expect("serializes");
            assert_eq!(named, preset.as_str());
        }
        let mut own = Preset::Review.request("fn main() {}", None);
        own.agent_b_role = "Security Expert".into();
        assert!(Preset::made(&own).is_none(), "roles of its own");
    }

    #[tokio::test]
    async fn the_offline_provider_converges_deterministically() {
        let request = Preset::Design.request("a login page for a bank", None);
        let first = converge(&Offline, &request).await.expect("converges");
        let again = converge(&Offline, &request).await.expect("converges");
        assert_eq!(first.answer, again.answer);
        assert_eq!(first.score, again.score);
        assert!(first.converged, "{first:?}");
        assert!(first.score >= 80);
        assert_eq!(first.provider, "offline");
        assert_eq!(first.transcript.len() as u32, first.rounds * 2);
        assert!(first.usage.total() > 0);
        assert!(first.transcript[0].content.contains("Software Architect"));
    }

    #[tokio::test]
    async fn rounds_and_thresholds_are_respected() {
        let mut request = Preset::Decide.request("adopt Rust for the billing service", None);
        request.threshold = Some(100);
        request.max_rounds = Some(2);
        let outcome = converge(&Offline, &request).await.expect("runs");
        assert_eq!(outcome.rounds, 2);
        request.max_rounds = Some(11);
        assert!(matches!(
            converge(&Offline, &request).await,
            Err(ConvergeError::Invalid(_))
        ));
        request.max_rounds = Some(3);
        request.prompt = " ".into();
        assert!(matches!(
            converge(&Offline, &request).await,
            Err(ConvergeError::Invalid(_))
        ));
    }
}
