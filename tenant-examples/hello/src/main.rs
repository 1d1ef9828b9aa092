//! The minimal Lodge tenant app: answers every request with a greeting.

use lodge_sdk::{Body, Error, Request, Response};

async fn hello(req: Request<Body>) -> Result<Response<Body>, Error> {
    let id = lodge_sdk::request_id(&req).unwrap_or("none");
    Ok(lodge_sdk::text(
        200,
        format!(
            "Hello from Lodge! You asked for {} (request {id})\n",
            req.uri().path()
        ),
    ))
}

lodge_sdk::serve!(hello);
