//! A tokio service whose `#[instrument]`ed handler calls an OpenAI-compatible API through retrybudget — once
//! with the client, once through `reqwest-middleware` — and exports its own spans, ours and its logs to a
//! collector in one trace: `ask` → `chat {model}` → one `POST /v1/chat/completions` span per attempt.
//!
//! ```text
//! cargo run -p retrybudget -- fake-upstream                 # terminal 1: the fake upstream on :8788
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
//!   cargo run --example tracing_service                      # terminal 2 (any OTLP collector on 4318)
//! ```
//! `OPENAI_BASE_URL` (default `http://127.0.0.1:8788`), `OPENAI_MODEL` (default `fake-model`) and
//! `OPENAI_API_KEY` (optional) point it elsewhere. Without an OTLP endpoint it still runs; spans stay local.

use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use retrybudget_client::{ChatRequest, Client, ClientConfig};
use retrybudget_middleware::RetryBudgetMiddleware;
use retrybudget_telemetry::{Telemetry, TelemetryConfig};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Clone)]
struct App {
    client: Client,
    http: reqwest_middleware::ClientWithMiddleware,
    model: String,
}

/// The service's handler: its span is the parent of every call it makes, with no context passed by hand.
#[tracing::instrument(name = "ask", skip_all, fields(question.len = question.len()))]
async fn ask(State(app): State<App>, question: String) -> String {
    tracing::info!("question received");
    // 1. The typed client.
    let first = match app
        .client
        .chat(&ChatRequest::user(&app.model, question.clone()))
        .await
    {
        Ok(r) => r.text().unwrap_or_default().to_owned(),
        Err(e) => format!("error: {e}"),
    };
    // 2. Plain reqwest code, given the same policy, budget and evidence by the middleware.
    let url = format!("{}/v1/chat/completions", app.client.base_url());
    let body = serde_json::to_vec(&ChatRequest::user(&app.model, question)).unwrap_or_default();
    let second = match app
        .http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => format!("HTTP {}", r.status().as_u16()),
        Err(e) => format!("error: {e}"),
    };
    format!("client: {first}; middleware: {second}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Our pipeline (OTLP from the standard OTEL_* variables), shared by the app's spans and logs.
    let telemetry = Telemetry::init(&TelemetryConfig::from_env()?)?;
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::EnvFilter::new("info"));
    let spans = tracing_opentelemetry::layer().with_tracer(telemetry.tracer());
    // The log bridge with its own filter: the app's and retrybudget's events only, never the HTTP stack's.
    let logs = telemetry.logger_provider().map(|p| {
        OpenTelemetryTracingBridge::new(&p).with_filter(tracing_subscriber::filter::filter_fn(
            |m| m.target().starts_with("tracing_service") || m.target().starts_with("retrybudget"),
        ))
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(spans)
        .with(logs)
        .init();

    let base = std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "http://127.0.0.1:8788".into());
    let mut config = ClientConfig::new(base);
    config.api_key = std::env::var("OPENAI_API_KEY").ok().map(Into::into);
    let client = Client::new(config, telemetry.clone())?;
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryBudgetMiddleware::new(client.clone()))
        .build();
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "fake-model".into());
    let app = axum::Router::new()
        .route("/ask", post(ask))
        .with_state(App {
            client,
            http,
            model,
        });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    for question in ["What is a retry budget?", "Why not retry forever?"] {
        let answer = reqwest::Client::new()
            .post(format!("http://{addr}/ask"))
            .body(question)
            .send()
            .await?
            .text()
            .await?;
        println!("{question} -> {answer}");
    }
    server.abort();
    let flushed =
        tokio::task::spawn_blocking(move || telemetry.shutdown(Duration::from_secs(5))).await?;
    println!("telemetry flushed: {flushed}");
    Ok(())
}
