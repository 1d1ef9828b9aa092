//! A chat bot tenant: `POST /chat {"message", "conversationId"?}`.
//!
//! Each conversation's history lives in key-value storage (the last 20
//! messages). Wallet questions — "what is my balance", "what is my address",
//! "send 5 to lodge1…" — go to the wallet; everything else is answered by the
//! host's convergence engine with the recent history as context.
//! `GET /chat/{conversationId}` returns the history; `GET /health`.

use lodge_sdk::kv::Store;
use lodge_sdk::router::Route;
use lodge_sdk::{Body, Error, Request, Response, convergence, wallet};
use serde::{Deserialize, Serialize};
use serde_json::json;

const HISTORY: usize = 20;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chat {
    message: String,
    conversation_id: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Message {
    role: String,
    content: String,
}

fn history_key(conversation: &str) -> String {
    format!("conversation:{conversation}")
}

/// Answers a wallet question, or `None` if the message is not one.
fn wallet_answer(message: &str, idempotency_key: &str) -> Option<String> {
    let lower = message.to_lowercase();
    if lower.contains("balance") {
        return Some(match (wallet::balance(), wallet::address()) {
            (Ok(balance), Ok(address)) => format!("Your balance is {balance} (wallet {address})."),
            (Err(e), _) | (_, Err(e)) => format!("I could not read the wallet: {e:?}"),
        });
    }
    if lower.contains("address") {
        return Some(match wallet::address() {
            Ok(address) => format!("Your wallet address is {address}."),
            Err(e) => format!("I could not read the wallet: {e:?}"),
        });
    }
    let words: Vec<&str> = message.split_whitespace().collect();
    if let [verb, amount, to_word, address, ..] = words.as_slice()
        && matches!(verb.to_lowercase().as_str(), "send" | "pay" | "transfer")
        && to_word.eq_ignore_ascii_case("to")
    {
        let Ok(amount) = amount.parse::<u64>() else {
            return Some(format!("{amount:?} is not an amount."));
        };
        return Some(
            match wallet::transfer(address, amount, "sent by agent-bot", idempotency_key) {
                Ok(id) => format!("Sent {amount} to {address} (transfer {id})."),
                Err(e) => format!("The transfer did not go through: {e:?}"),
            },
        );
    }
    None
}

async fn handle(mut req: Request<Body>) -> Result<Response<Body>, Error> {
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let route = Route::new(&method, &path);
    let store = Store::open("agent-bot")?;
    if route.matches("GET", "/health").is_some() {
        return Ok(lodge_sdk::json(200, &json!({ "status": "ok" })));
    }
    if let Some(params) = route.matches("GET", "/chat/{conversation}") {
        let conversation = params.get("conversation").unwrap_or_default();
        let history: Vec<Message> = store
            .get_json(&history_key(conversation))?
            .unwrap_or_default();
        return Ok(lodge_sdk::json(200, &history));
    }
    if route.matches("POST", "/chat").is_none() {
        return Ok(lodge_sdk::text(404, "not found\n"));
    }
    let chat = match serde_json::from_slice::<Chat>(req.body_mut().contents().await?) {
        Ok(chat) if !chat.message.trim().is_empty() => chat,
        _ => {
            return Ok(lodge_sdk::json(
                400,
                &json!({ "error": "send {\"message\": \"…\"}" }),
            ));
        }
    };
    let conversation = chat.conversation_id.unwrap_or_else(|| "default".to_owned());
    let key = history_key(&conversation);
    let mut history: Vec<Message> = store.get_json(&key)?.unwrap_or_default();
    // Retries of the same turn reuse the same idempotency key, so a payment happens once.
    let turn = store.increment(&format!("turns:{conversation}"), 1)?;
    let idempotency_key = format!("{conversation}:{turn}");

    let reply = match wallet_answer(&chat.message, &idempotency_key) {
        Some(answer) => answer,
        None => {
            let context: Vec<String> = history
                .iter()
                .map(|m| format!("{}: {}", m.role, m.content))
                .collect();
            let mut request =
                convergence::request(&chat.message, "Helpful Assistant", "Careful Reviewer");
            request.context = (!context.is_empty()).then(|| context.join("\n"));
            request.max_rounds = Some(3);
            match convergence::converge(&request) {
                Ok(outcome) => outcome.answer,
                Err(e) => format!("I cannot think right now: {e:?}"),
            }
        }
    };
    history.push(Message {
        role: "user".into(),
        content: chat.message,
    });
    history.push(Message {
        role: "assistant".into(),
        content: reply.clone(),
    });
    let skip = history.len().saturating_sub(HISTORY);
    let history: Vec<Message> = history.into_iter().skip(skip).collect();
    store.set_json(&key, &history)?;
    Ok(lodge_sdk::json(
        200,
        &json!({ "reply": reply, "conversationId": conversation, "messages": history.len() }),
    ))
}

lodge_sdk::serve!(handle);
