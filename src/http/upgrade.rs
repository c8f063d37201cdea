//! Hands a WebSocket upgrade on to a local server, byte for byte (issue 27).
//!
//! A kitchen screen loaded over `https://` may only open `wss://`, and a
//! browser shows no certificate prompt for a WebSocket: a `wss://` to
//! Mosquitto's own port, with a certificate the screen was never asked about,
//! just fails. So the tracking service, which served the page (and whose
//! certificate the screen already trusts), takes the upgrade on its own origin
//! (`/mqtt`) and passes the connection through to Mosquitto's WebSocket
//! listener on loopback. Mosquitto still checks the screen's account and ACL;
//! this end reads nothing of the MQTT traffic.

use super::{ApiError, Resp};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response head the backend may send.
const MAX_HEAD: usize = 16 * 1024;

/// Whether the request asks for a WebSocket.
pub fn is_websocket(req: &Request<Incoming>) -> bool {
    let has = |name: &str, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has("connection", "upgrade") && has("upgrade", "websocket")
}

/// Sends the upgrade request to `backend`, answers with the backend's answer,
/// and once both sides have switched, copies bytes both ways until either
/// closes.
pub async fn pass_to(
    mut req: Request<Incoming>,
    backend: &str,
    timeout: Duration,
) -> Result<Resp, ApiError> {
    if !is_websocket(&req) {
        let mut e = ApiError::new(StatusCode::UPGRADE_REQUIRED, "expected a WebSocket upgrade");
        e.details = vec![
            serde_json::json!({"field": "Upgrade", "message": "this is the MQTT WebSocket of the kitchen screens: connect with an MQTT client over ws:// or wss://"}),
        ];
        return Err(e);
    }
    let unreachable = |why: String| {
        tracing::warn!(action = "mqtt_ws_unreachable", backend = %backend, error = %why, "The broker's WebSocket listener is unreachable");
        ApiError::unavailable("the MQTT broker's WebSocket listener is not reachable").with_details(
            vec![serde_json::json!({
                "field": "display.mqtt_ws_port",
                "message": format!("{backend}: {why}"),
            })],
        )
    };
    let mut up = tokio::time::timeout(timeout, TcpStream::connect(backend))
        .await
        .map_err(|_| unreachable("connect timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = up.set_nodelay(true);

    let target = req
        .uri()
        .path_and_query()
        .map_or("/mqtt", |p| p.as_str())
        .to_string();
    let mut head = format!("GET {target} HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        // The screen's token is for our APIs, not for the broker.
        if name == hyper::header::AUTHORIZATION || name == hyper::header::COOKIE {
            continue;
        }
        if let Ok(v) = value.to_str() {
            head.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    up.write_all(head.as_bytes())
        .await
        .map_err(|e| unreachable(e.to_string()))?;

    // The backend's answer head, and any bytes that came after it.
    let mut buf = Vec::with_capacity(1024);
    let end = tokio::time::timeout(timeout, async {
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(i + 4);
            }
            if buf.len() > MAX_HEAD {
                return Err("answer head too long".to_string());
            }
            match up.read(&mut chunk).await {
                Ok(0) => return Err("closed before answering".to_string()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| unreachable("no answer".into()))?
    .map_err(unreachable)?;

    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    parsed
        .parse(&buf[..end])
        .map_err(|e| unreachable(format!("unparsable answer: {e}")))?;
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| unreachable("no status in the answer".into()))?;
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    for h in parsed.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // The broker said no (a bad request): pass its answer on, without its body.
        resp.headers_mut().remove(hyper::header::CONTENT_LENGTH);
        return Ok(resp);
    }
    let early = buf.split_off(end);
    let switched = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = switched.await else {
            return;
        };
        let mut screen = TokioIo::new(upgraded);
        if !early.is_empty() && screen.write_all(&early).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut screen, &mut up).await;
    });
    Ok(resp)
}
