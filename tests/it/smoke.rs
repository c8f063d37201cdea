//! The shortest path through the whole system, on both backends: an order
//! placed over HTTP is cooked and reaches `ready`.
use crate::common;

use common::{eventually, spec_orders, Backend, TestEnv};
use restaurant_system::modes::Mode;
use std::time::Duration;

async fn order_reaches_ready(b: Backend) {
    let env = TestEnv::new(b);
    let app = env.start(Mode::All, None).await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/orders", app.order_url()))
        .json(&spec_orders()[0])
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["total_amount"], 40.97);
    let n = body["order_number"]
        .as_str()
        .expect("order_number")
        .to_string();
    let url = format!("{}/orders/{n}/status", app.tracking_url());
    eventually(Duration::from_secs(20), "order to be ready", || {
        let http = http.clone();
        let url = url.clone();
        async move {
            let v: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            (v["current_status"] == "ready").then_some(())
        }
    })
    .await;
    app.stop().await;
}

backend_tests!(order_reaches_ready);
