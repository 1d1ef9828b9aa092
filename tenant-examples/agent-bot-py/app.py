"""The bot platform's chat bot, in Python: a port of ``tenant-examples/agent-bot``.

``POST /chat {"message", "conversationId"?}`` → ``{"reply", "conversationId",
"messages"}``. Each conversation's history lives in key-value storage (the
last 20 messages). Wallet questions — "check my wallet balance", "what is my
address", "send 5 to lodge1…" — go to the wallet; everything else is answered
by the host's convergence engine with the recent history as context.
``GET /chat/{conversationId}`` returns the history; ``GET /health``.

Beyond the Rust bot, every capability has a route of its own:

- ``DELETE /chat/{conversationId}``: forget a conversation (batch delete)
- ``GET /stats``: messages handled (atomic counter), conversations seen
  (compare-and-swap list), the last conversation (batch get)
- ``POST /counter/{name} {"by"?}`` / ``GET /counter/{name}``: an atomic counter
- ``GET /wallet``: address, balance, recent history
- ``POST /wallet/transfer {"to", "amount", "memo"?, "idempotencyKey"}``
- ``POST /wallet/sign {"message"}`` / ``POST /wallet/verify {"address", "message", "signature"}``
- ``POST /ask/{preset} {"prompt", "context"?}``: a convergence preset
- ``POST /tasks {"prompt", "agentARole"?, "agentBRole"?, …}`` / ``GET /tasks/{taskId}``
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional

import lodge
from lodge import convergence, kv, wallet
from lodge.http import BadRequest, Request, Response, Router, handler

HISTORY = 20
BUCKET = "agent-bot"

app = Router()


def history_key(conversation: str) -> str:
    return f"conversation:{conversation}"


def wallet_answer(message: str, idempotency_key: str) -> Optional[str]:
    """Answers a wallet question, or ``None`` if the message is not one."""
    lower = message.lower()
    if "balance" in lower:
        try:
            return f"Your balance is {wallet.balance()} (wallet {wallet.address()})."
        except lodge.LodgeError as e:
            return f"I could not read the wallet: {e}"
    if "address" in lower:
        try:
            return f"Your wallet address is {wallet.address()}."
        except lodge.LodgeError as e:
            return f"I could not read the wallet: {e}"
    words = message.split()
    if len(words) >= 4 and words[0].lower() in ("send", "pay", "transfer") and words[2].lower() == "to":
        amount, address = words[1], words[3]
        if not re.fullmatch(r"\+?[0-9]+", amount) or int(amount) >= 2**64:
            return f"{json.dumps(amount)} is not an amount."
        try:
            tx = wallet.transfer(
                address, int(amount), memo="sent by agent-bot", idempotency_key=idempotency_key
            )
            return f"Sent {int(amount)} to {address} (transfer {tx})."
        except lodge.LodgeError as e:
            return f"The transfer did not go through: {e}"
    return None


def think(message: str, history: List[Dict[str, str]]) -> str:
    context = "\n".join(f"{m['role']}: {m['content']}" for m in history)
    try:
        outcome = convergence.converge(
            message,
            "Helpful Assistant",
            "Careful Reviewer",
            context=context or None,
            max_rounds=3,
        )
        return outcome.answer
    except lodge.LodgeError as e:
        return f"I cannot think right now: {e}"


@app.get("/health")
def health(req: Request) -> Any:
    return {"status": "ok"}


@app.get("/chat/{conversation}")
def history(req: Request) -> Any:
    return kv.open(BUCKET).get_json(history_key(req.params["conversation"]), [])


@app.post("/chat")
def chat(req: Request) -> Any:
    body = req.json(None)
    message = body.get("message") if isinstance(body, dict) else None
    conversation = body.get("conversationId") if isinstance(body, dict) else None
    if (
        not isinstance(message, str)
        or not message.strip()
        or not (conversation is None or isinstance(conversation, str))
    ):
        return Response.json({"error": 'send {"message": "…"}'}, 400)
    conversation = conversation if conversation is not None else "default"
    bucket = kv.open(BUCKET)
    key = history_key(conversation)
    messages: List[Dict[str, str]] = bucket.get_json(key, [])
    # Retries of the same turn reuse the same idempotency key, so a payment happens once.
    turn = bucket.increment(f"turns:{conversation}")
    bucket.increment("stats:messages")
    if turn == 1:
        bucket.update_json(
            "conversations",
            lambda seen: seen if conversation in seen else seen + [conversation],
            default=[],
        )

    reply = wallet_answer(message, f"{conversation}:{turn}")
    if reply is None:
        reply = think(message, messages)

    messages.append({"role": "user", "content": message})
    messages.append({"role": "assistant", "content": reply})
    messages = messages[-HISTORY:]
    bucket.set_many(
        {
            key: json.dumps(messages, ensure_ascii=False),
            "last-conversation": conversation,
        }
    )
    return {"reply": reply, "conversationId": conversation, "messages": len(messages)}


@app.delete("/chat/{conversation}")
def forget(req: Request) -> Any:
    conversation = req.params["conversation"]
    bucket = kv.open(BUCKET)
    bucket.delete_many([history_key(conversation), f"turns:{conversation}"])
    bucket.update_json(
        "conversations", lambda seen: [c for c in seen if c != conversation], default=[]
    )
    return {"forgotten": conversation}


@app.get("/stats")
def stats(req: Request) -> Any:
    messages, conversations, last = kv.open(BUCKET).get_many(
        ["stats:messages", "conversations", "last-conversation"]
    )
    return {
        "messages": int(messages) if messages is not None else 0,
        "conversations": json.loads(conversations) if conversations is not None else [],
        "lastConversation": last.decode() if last is not None else None,
    }


def _name(req: Request) -> str:
    return f"counter:{req.params['name']}"


@app.post("/counter/{name}")
def bump(req: Request) -> Any:
    body = req.json() if req.body else {}
    by = body.get("by", 1) if isinstance(body, dict) else None
    if isinstance(by, bool) or not isinstance(by, int):
        raise BadRequest('"by" must be an integer')
    return {"name": req.params["name"], "value": kv.open(BUCKET).increment(_name(req), by)}


@app.get("/counter/{name}")
def read_counter(req: Request) -> Any:
    value = kv.open(BUCKET).get_text(_name(req))
    return {"name": req.params["name"], "value": int(value) if value is not None else 0}


@app.get("/wallet")
def show_wallet(req: Request) -> Any:
    page = wallet.history(None, 10)
    return {
        "address": wallet.address(),
        "balance": wallet.balance(),
        "history": [e.to_json() for e in page.entries],
    }


def _body(req: Request) -> Dict[str, Any]:
    body = req.json()
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object")
    return body


def _field(body: Any, name: str, kind: type) -> Any:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f'"{name}" ({kind.__name__}) is required')
    return value


@app.post("/wallet/transfer")
def send(req: Request) -> Any:
    body = _body(req)
    tx = wallet.transfer(
        _field(body, "to", str),
        _field(body, "amount", int),
        memo=body.get("memo") or "",  # a non-str memo is a 400 (lodge.InvalidInputError)
        idempotency_key=_field(body, "idempotencyKey", str),
    )
    return {"transferId": tx, "balance": wallet.balance()}


@app.post("/wallet/sign")
def sign(req: Request) -> Any:
    message = _field(_body(req), "message", str)
    signature = wallet.sign(message)
    address = wallet.address()
    return {
        "address": address,
        "message": message,
        "signature": signature.hex(),
        "verified": wallet.verify(address, message, signature),
    }


@app.post("/wallet/verify")
def verify(req: Request) -> Any:
    body = _body(req)
    try:
        signature = bytes.fromhex(_field(body, "signature", str))
    except ValueError:
        raise BadRequest('"signature" must be hex') from None
    valid = wallet.verify(_field(body, "address", str), _field(body, "message", str), signature)
    return {"valid": valid}


@app.post("/ask/{preset}")
def ask(req: Request) -> Any:
    body = _body(req)
    outcome = convergence.preset(
        req.params["preset"], _field(body, "prompt", str), body.get("context")
    )
    return outcome.to_json()


@app.post("/tasks")
def submit(req: Request) -> Any:
    body = _body(req)
    task_id = convergence.submit(
        _field(body, "prompt", str),
        body.get("agentARole") or "Helpful Assistant",
        body.get("agentBRole") or "Careful Reviewer",
        context=body.get("context"),
        max_rounds=body.get("maxRounds"),
        threshold=body.get("threshold"),
    )
    return {"taskId": task_id, "status": "pending"}, 202


@app.get("/tasks/{task_id}")
def task(req: Request) -> Any:
    state = convergence.poll(req.params["task_id"])
    return {"taskId": req.params["task_id"], **state.to_json()}


IncomingHandler = handler(app)
