//! The HTTP control API under `/_control/`, so shell scripts and Python drive the fake the same way
//! Rust tests do through [`crate::Control`].
//!
//! Every answer is JSON. A malformed body gets a 400 whose message says what was wrong; nothing in
//! here panics on input. Control requests are not counted or recorded as attempts.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::body::{FakeBody, ReadError, json_response, read_body};
use crate::state::{RecordedRequest, Shared};
use crate::step::{LoadMode, Step, StepError};

/// Control bodies are small; bound them well below the `/v1/*` limit.
const MAX_CONTROL_BODY: usize = 1024 * 1024;

#[derive(Serialize)]
struct Count {
    count: u64,
}

#[derive(Serialize)]
struct Requests {
    count: u64,
    requests: Vec<RecordedRequest>,
}

#[derive(Serialize)]
struct Queued {
    ok: bool,
    queued: usize,
}

#[derive(Serialize)]
struct Done {
    ok: bool,
}

#[derive(Serialize)]
struct ControlError<'a> {
    error: ControlErrorBody<'a>,
}

#[derive(Serialize)]
struct ControlErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<FakeBody> {
    let body = serde_json::to_vec(value)
        .map(Bytes::from)
        .unwrap_or_default();
    json_response(status, body)
}

fn error(status: StatusCode, message: &str) -> Response<FakeBody> {
    json(
        status,
        &ControlError {
            error: ControlErrorBody {
                message,
                kind: "invalid_control_request",
            },
        },
    )
}

fn ok() -> Response<FakeBody> {
    json(StatusCode::OK, &Done { ok: true })
}

/// Answers one `/_control/*` request.
pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<FakeBody> {
    let (parts, body) = req.into_parts();
    let route = (&parts.method, parts.uri.path());
    let known = matches!(
        route.1,
        "/_control/script"
            | "/_control/default"
            | "/_control/load"
            | "/_control/reset"
            | "/_control/requests"
            | "/_control/count"
            | "/_control/health"
    );
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            "unknown control endpoint; use /_control/{script,default,load,reset,requests,count,health}",
        );
    }
    match apply(shared, route, body).await {
        Ok(resp) => resp,
        Err(BadRequest(message)) => error(StatusCode::BAD_REQUEST, &message),
    }
}

/// A control request that cannot be honoured; the message says what to fix.
struct BadRequest(String);

async fn apply(
    shared: &Shared,
    route: (&Method, &str),
    body: Incoming,
) -> Result<Response<FakeBody>, BadRequest> {
    Ok(match route {
        (&Method::POST, "/_control/script") => {
            let bytes = read_bytes(body).await?;
            // A JSON array of steps or, for convenience, a single step object. Deciding by the
            // first byte keeps serde's precise error message (an untagged enum would lose it).
            let single = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            let steps = if single {
                vec![parse::<Step>(
                    &bytes,
                    "a JSON array of steps or one step object",
                )?]
            } else {
                parse::<Vec<Step>>(&bytes, "a JSON array of steps")?
            };
            validate_all(&steps)?;
            let queued = shared.push(steps);
            json(StatusCode::OK, &Queued { ok: true, queued })
        }
        (&Method::PUT, "/_control/default") => {
            let step = parse::<Step>(&read_bytes(body).await?, "one step object")?;
            validate_all(std::slice::from_ref(&step))?;
            shared.set_default(step);
            ok()
        }
        (&Method::PUT, "/_control/load") => {
            let mode = parse::<LoadMode>(
                &read_bytes(body).await?,
                r#"a load mode such as {"mode":"none"}, {"mode":"fail_percent","percent":5,"status":503,"seed":1} or {"mode":"outage","from_ms":0,"until_ms":5000,"status":503}"#,
            )?;
            mode.validate()
                .map_err(|e| BadRequest(format!("invalid load mode: {e}")))?;
            shared.set_load(mode);
            ok()
        }
        (&Method::POST, "/_control/reset") => {
            shared.reset();
            ok()
        }
        (&Method::GET, "/_control/requests") => {
            // Any local process can read this endpoint: credential values never leave through it.
            let (count, requests) = shared.requests();
            let requests = requests.iter().map(RecordedRequest::redacted).collect();
            json(StatusCode::OK, &Requests { count, requests })
        }
        (&Method::GET, "/_control/count") => json(
            StatusCode::OK,
            &Count {
                count: shared.count(),
            },
        ),
        (&Method::GET, "/_control/health") => ok(),
        (_, path) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!(
                "method not allowed on {path}: script=POST, default=PUT, load=PUT, reset=POST, requests/count/health=GET"
            ),
        ),
    })
}

fn validate_all(steps: &[Step]) -> Result<(), BadRequest> {
    for (i, step) in steps.iter().enumerate() {
        step.validate()
            .map_err(|e: StepError| BadRequest(format!("step {i} is invalid: {e}")))?;
    }
    Ok(())
}

async fn read_bytes(body: Incoming) -> Result<Bytes, BadRequest> {
    match read_body(body, MAX_CONTROL_BODY).await {
        Ok(bytes) => Ok(bytes),
        Err(ReadError::TooLarge(_)) => Err(BadRequest(format!(
            "control body too large (limit {MAX_CONTROL_BODY} bytes)"
        ))),
        Err(ReadError::Broken) => Err(BadRequest("control body could not be read".into())),
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8], expected: &str) -> Result<T, BadRequest> {
    serde_json::from_slice(bytes)
        .map_err(|e| BadRequest(format!("malformed control body ({e}); expected {expected}")))
}
