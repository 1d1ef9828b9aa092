//! Model providers behind one trait: the built-in [`Offline`] provider (the
//! default: deterministic, no network, labelled `offline`) and
//! [`OpenAiCompatible`], any chat-completions endpoint (OpenAI, Ollama, vLLM,
//! llama.cpp).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system` or `user`.
    pub role: String,
    /// Its text.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// A model's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The text.
    pub content: String,
    /// Tokens sent.
    pub prompt_tokens: u32,
    /// Tokens produced.
    pub completion_tokens: u32,
}

/// Why a provider gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// No answer within the timeout, after retries.
    #[error("the model provider timed out")]
    Timeout,
    /// Unreachable or failing (5xx, 429), after retries.
    #[error("the model provider is unavailable: {0}")]
    Unavailable(String),
    /// It refused the request (4xx other than 429); retrying will not help.
    #[error("the model provider refused the request: {0}")]
    Rejected(String),
    /// It answered something that is not a chat completion.
    #[error("the model provider answered something unexpected: {0}")]
    Malformed(String),
}

/// A chat model.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// `offline` or `openai-compatible`.
    fn name(&self) -> &str;
    /// The model's name.
    fn model(&self) -> &str;
    /// One completion.
    async fn chat(&self, messages: &[ChatMessage]) -> Result<Reply, ProviderError>;
}

/// The built-in provider: no model, no network, fully deterministic.
///
/// It answers as the role in the system message, with the distinct words of
/// the user message (the task and the other agent's position), sorted, minus
/// the engine's instruction words. Each agent therefore takes up the other's
/// vocabulary, and the two positions converge within a few rounds. Tokens are
/// counted as whitespace-separated words. It is a stand-in for tests, demos
/// and machines without a model, and every result says `"provider":"offline"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offline;

/// Words of the engine's own instructions, left out of offline answers.
const INSTRUCTION_WORDS: &[&str] = &[
    "task",
    "context",
    "your",
    "position",
    "propose",
    "proposes",
    "critique",
    "revise",
    "toward",
    "agreement",
    "says",
    "the",
    "and",
    "you",
    "are",
    "with",
    "another",
    "expert",
    "one",
    "agreed",
    "answer",
    "concrete",
    "brief",
    "keep",
    "what",
    "right",
    "their",
    "say",
    "change",
    "work",
    "for",
    "this",
    "that",
    "offline",
    "view",
    "my",
];

impl Offline {
    fn answer(role: &str, user: &str) -> String {
        let role_words: Vec<String> = role.split_whitespace().map(str::to_lowercase).collect();
        let mut words: Vec<String> = user
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() >= 3)
            .map(str::to_lowercase)
            .filter(|w| !INSTRUCTION_WORDS.contains(&w.as_str()))
            .collect();
        words.extend(role_words);
        words.sort();
        words.dedup();
        words.truncate(60);
        format!("As {role} (offline view): {}.", words.join(", "))
    }
}

#[async_trait::async_trait]
impl Provider for Offline {
    fn name(&self) -> &str {
        "offline"
    }

    fn model(&self) -> &str {
        "offline-v1"
    }

    async fn chat(&self, messages: &[ChatMessage]) -> Result<Reply, ProviderError> {
        let role = messages
            .iter()
            .find(|m| m.role == "system")
            .and_then(|m| m.content.strip_prefix("You are a "))
            .and_then(|rest| rest.split('.').next())
            .unwrap_or("Agent");
        let user = messages
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let content = Self::answer(role, &user);
        let words = |s: &str| s.split_whitespace().count() as u32;
        Ok(Reply {
            prompt_tokens: messages.iter().map(|m| words(&m.content)).sum(),
            completion_tokens: words(&content),
            content,
        })
    }
}

pub use crate::config::OpenAiConfig;

/// A chat-completions endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    config: OpenAiConfig,
    client: reqwest::Client,
}

impl OpenAiCompatible {
    /// A client for `config`.
    pub fn new(config: OpenAiConfig) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self { config, client }
    }

    async fn attempt(&self, messages: &[ChatMessage]) -> Result<Reply, (ProviderError, bool)> {
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let body = serde_json::json!({ "model": self.config.model, "messages": messages, "temperature": 0.2 });
        let mut request = self
            .client
            .post(url)
            .json(&body)
            .timeout(self.config.timeout);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return Err((ProviderError::Timeout, true)),
            Err(e) => return Err((ProviderError::Unavailable(describe(&e)), true)),
        };
        let status = response.status();
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) if e.is_timeout() => return Err((ProviderError::Timeout, true)),
            Err(e) => return Err((ProviderError::Unavailable(describe(&e)), true)),
        };
        let excerpt: String = text.chars().take(300).collect();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err((
                ProviderError::Unavailable(format!("{status}: {excerpt}")),
                true,
            ));
        }
        if !status.is_success() {
            return Err((
                ProviderError::Rejected(format!("{status}: {excerpt}")),
                false,
            ));
        }
        let parsed: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| (ProviderError::Malformed(format!("not JSON: {e}")), false))?;
        let content = parsed["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| {
                (
                    ProviderError::Malformed("no choices[0].message.content".into()),
                    false,
                )
            })?;
        let count = |field: &str| parsed["usage"][field].as_u64().unwrap_or(0) as u32;
        Ok(Reply {
            content: content.to_owned(),
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
        })
    }
}

/// A reqwest error with its causes (reqwest's own text stops at "error sending
/// request"; the cause says why: refused, certificate, DNS…).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[async_trait::async_trait]
impl Provider for OpenAiCompatible {
    fn name(&self) -> &str {
        "openai-compatible"
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    async fn chat(&self, messages: &[ChatMessage]) -> Result<Reply, ProviderError> {
        use backon::Retryable as _;
        // Timeouts, 429 and 5xx are retried `retries` times, the delay
        // doubling from `backoff`; anything else fails at once.
        let policy = backon::ExponentialBuilder::default()
            .with_min_delay(self.config.backoff)
            .with_factor(2.0)
            .with_max_times(self.config.retries as usize);
        (|| self.attempt(messages))
            .retry(policy)
            .sleep(tokio::time::sleep)
            .when(|(_, retry)| *retry)
            .notify(|(error, _), after| {
                tracing::warn!(%error, ?after, "model provider failed; retrying");
            })
            .await
            .map_err(|(error, _)| error)
    }
}
