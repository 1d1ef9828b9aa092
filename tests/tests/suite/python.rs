//! A tenant written in Python: `tenant-examples/agent-bot-py`, built with
//! componentize-py against world `lodge:platform/tenant` by
//! `scripts/build-py-guests.sh`, on the SDK in `sdk/python`. It is the Rust
//! agent bot's port, so it must pass the same assertions
//! (`convergence::the_agent_bot_remembers_converses_and_pays`); beyond them,
//! key-value atomics (increment, compare-and-swap, batches) through Python,
//! isolation of two tenants running the same component, and 200 requests 50 at
//! a time, all answered.

use std::time::Duration;

use lodge_tests::{TestHost, polyglot};
use serde_json::json;

use crate::convergence::{get_app, post_app};

/// A host serving the Python bot as `bot` and as `shop`, `bot` funded with 100.
async fn two_bots() -> TestHost {
    crate::convergence::two_bots(polyglot::py_example()).await
}

#[tokio::test]
async fn the_python_agent_bot_remembers_converses_and_pays() {
    let (host, shop_address) = crate::convergence::agent_bot(polyglot::py_example()).await;
    let history = get_app(&host, "bot", "/chat/c1").await;
    assert_eq!(history[0]["role"], "user");
    assert_eq!(history[1]["role"], "assistant");

    // The same refusal as the Rust bot for a message-less body.
    let (status, refused) = post_app(&host, "bot", "/chat", json!({ "text": "hi" })).await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused["error"].is_string(), "{refused}");

    // The wallet's own routes: history, sign/verify across tenants, typed errors.
    let wallet = get_app(&host, "bot", "/wallet").await;
    assert_eq!(wallet["balance"], 95, "{wallet}");
    assert_eq!(wallet["history"][0]["kind"], "sent", "{wallet}");
    assert_eq!(wallet["history"][0]["amount"], -5, "{wallet}");
    assert_eq!(wallet["history"][1]["kind"], "funding", "{wallet}");
    let (status, signed) =
        post_app(&host, "bot", "/wallet/sign", json!({ "message": "hello" })).await;
    assert_eq!(status, 200, "{signed}");
    assert_eq!(signed["verified"], true, "{signed}");
    assert_eq!(signed["signature"].as_str().map(str::len), Some(128));
    let (_, verified) = post_app(
        &host,
        "shop",
        "/wallet/verify",
        json!({ "address": signed["address"], "message": "hello", "signature": signed["signature"] }),
    )
    .await;
    assert_eq!(verified, json!({ "valid": true }));
    let transfer =
        json!({ "to": shop_address, "amount": 3, "memo": "tip", "idempotencyKey": "k1" });
    let (status, sent) = post_app(&host, "bot", "/wallet/transfer", transfer.clone()).await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["balance"], 92, "{sent}");
    let (_, again) = post_app(&host, "bot", "/wallet/transfer", transfer).await;
    assert_eq!(again, sent, "the same idempotency key moves nothing");
    let (status, broke) = post_app(
        &host,
        "shop",
        "/wallet/transfer",
        json!({ "to": signed["address"], "amount": 1000, "idempotencyKey": "k2" }),
    )
    .await;
    assert_eq!(status, 402, "{broke}");
    assert_eq!(broke["error"]["kind"], "quota-exceeded", "{broke}");

    // Convergence presets and async tasks.
    let (status, designed) = post_app(
        &host,
        "bot",
        "/ask/design",
        json!({ "prompt": "a rate limiter for our API" }),
    )
    .await;
    assert_eq!(status, 200, "{designed}");
    assert_eq!(designed["provider"], "offline", "{designed}");
    assert_eq!(designed["transcript"][0]["role"], "Software Architect");
    let (status, task) = post_app(
        &host,
        "bot",
        "/tasks",
        json!({ "prompt": "plan the launch" }),
    )
    .await;
    assert_eq!(status, 202, "{task}");
    let task_id = task["taskId"].as_str().expect("taskId").to_owned();
    let done = lodge_tests::eventually(Duration::from_secs(30), "the task is done", || async {
        let state = get_app(&host, "bot", &format!("/tasks/{task_id}")).await;
        (state["status"] == "done").then_some(state)
    })
    .await;
    assert!(done["outcome"]["answer"].is_string(), "{done}");
    let foreign = host
        .client
        .get(host.path_url("shop", &format!("/tasks/{task_id}")))
        .send()
        .await
        .expect("sent");
    assert_eq!(foreign.status(), 404, "another tenant's task is not found");
}

#[tokio::test]
async fn the_python_bot_counts_atomically_and_keeps_tenants_apart() {
    let host = two_bots().await;

    crate::javascript::counter_checks(&host, "bot", "shop", "/counter/visits").await;

    // 100 increments, 50 at a time (the plan's concurrency is 64): 100 distinct results.
    let values = lodge_tests::concurrent_increments(
        &host.client,
        &host.path_url("bot", "/counter/race"),
        100,
        50,
    )
    .await;
    assert_eq!(
        values,
        (1..=100).collect::<Vec<_>>(),
        "every increment seen once"
    );

    // Chats feed /stats: an atomic message count, a compare-and-swap list of
    // conversations and a batch read; none of it leaks to the other tenant.
    for (message, conversation) in [("hello there", "a"), ("and again", "a"), ("hi", "b")] {
        let (status, reply) = post_app(
            &host,
            "bot",
            "/chat",
            json!({ "message": message, "conversationId": conversation }),
        )
        .await;
        assert_eq!(status, 200, "{reply}");
    }
    assert_eq!(
        get_app(&host, "bot", "/stats").await,
        json!({ "messages": 3, "conversations": ["a", "b"], "lastConversation": "b" })
    );
    assert_eq!(
        get_app(&host, "shop", "/stats").await,
        json!({ "messages": 0, "conversations": [], "lastConversation": null })
    );
    assert_eq!(get_app(&host, "shop", "/chat/a").await, json!([]));
    // Forgetting a conversation (a batch delete) in one tenant only.
    let forgot = host
        .client
        .delete(host.path_url("bot", "/chat/a"))
        .send()
        .await
        .expect("sent");
    assert_eq!(forgot.status(), 200);
    assert_eq!(get_app(&host, "bot", "/chat/a").await, json!([]));
    assert_eq!(
        get_app(&host, "bot", "/stats").await["conversations"],
        json!(["b"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_bot_answers_200_requests_50_at_a_time() {
    let host = two_bots().await;
    let (status, _) = post_app(
        &host,
        "bot",
        "/chat",
        json!({ "message": "warm up", "conversationId": "load" }),
    )
    .await;
    assert_eq!(status, 200);

    let (chat, history) = (
        host.path_url("bot", "/chat"),
        host.path_url("bot", "/chat/load"),
    );
    let results = lodge_tests::fan_out(200, 50, |i| {
        if i % 2 == 0 {
            host.client.post(&chat).json(
                &json!({ "message": format!("question {i}"), "conversationId": format!("c{}", i % 10) }),
            )
        } else {
            host.client.get(&history)
        }
    })
    .await;
    for (i, status, body) in results {
        assert_eq!(status, 200, "request {i}: {body}");
        if i % 2 == 0 {
            assert!(body["reply"].is_string(), "request {i}: {body}");
        } else {
            assert_eq!(
                body.as_array().map(Vec::len),
                Some(2),
                "request {i}: {body}"
            );
        }
    }
    // 1 warm-up + 100 chats, each counted once.
    assert_eq!(get_app(&host, "bot", "/stats").await["messages"], 101);
}
