//! Issue 26, item 5: a clock that is not yet right. The real binary runs
//! under libfaketime (Debian's `faketime` package) with its clock a day in the
//! past, on a database that already holds an order placed at the right time:
//! the order service refuses orders with 503 and says why, `/health` and the
//! journal say so, and once the clock is set right (the offset file changed
//! while it runs) it takes orders again, numbered after the earlier one.
//! Both backends.
use crate::common;

use common::{place_order, post_json, takeout, Backend, Proc, TestEnv};
use std::path::PathBuf;
use std::time::Duration;

/// libfaketime's preload library (the `faketime` package installs it).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.expect("libfaketime.so.1 under /usr/lib/*/faketime: apt-get install faketime (scripts/test.sh does)")
}

async fn orders_wait_for_the_clock(b: Backend) {
    let env = TestEnv::new(b);
    let http = reqwest::Client::new();
    // An order placed with the right clock: the newest stored change.
    let app = env
        .start(restaurant_system::modes::Mode::OrderService, None)
        .await;
    let first = place_order(&http, &app.order_url(), &takeout("Ann", 1, 5.0)).await;
    app.stop().await;

    // The same box boots a day in the past. The offset file is read at every
    // clock call (FAKETIME_NO_CACHE), so rewriting it sets the clock.
    let offset = env.dir.path().join("faketime.offset");
    std::fs::write(&offset, "-1d\n").expect("offset file");
    let mut cmd = env.command();
    cmd.arg("--mode=order-service")
        .env("RESTAURANT_HTTP__ORDER_PORT", "0")
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME_TIMESTAMP_FILE", &offset)
        .env("FAKETIME_NO_CACHE", "1")
        // Timers and timeouts run on the real monotonic clock.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let mut p = Proc::spawn("order-service (clock a day behind)", cmd);
    let base = format!("http://127.0.0.1:{}", p.port().await);
    p.wait_log("clock_behind", Duration::from_secs(10), |_| true)
        .await;

    let (status, headers, v) =
        post_json(&http, &format!("{base}/orders"), &takeout("Bob", 1, 5.0)).await;
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("clock is not right"),
        "{v}"
    );
    assert!(headers.contains_key("retry-after"));
    let (status, _, health) = common::get_json(&http, &format!("{base}/health")).await;
    assert_eq!(status, 503, "{health}");
    assert!(
        health["checks"]["clock"]
            .as_str()
            .unwrap_or("")
            .contains("clock is not right"),
        "{health}"
    );

    // NTP (or a person) sets the clock: orders flow again, after Ann's.
    std::fs::write(&offset, "+0\n").expect("offset file");
    let second = common::eventually(
        Duration::from_secs(10),
        "an order once the clock is right",
        || {
            let http = http.clone();
            let base = base.clone();
            async move {
                let (status, _, v) =
                    post_json(&http, &format!("{base}/orders"), &takeout("Bob", 1, 5.0)).await;
                (status == 200).then(|| v["order_number"].as_str().unwrap_or("").to_string())
            }
        },
    )
    .await;
    assert!(second > first, "{second} after {first}");
    p.wait_log("clock_right", Duration::from_secs(10), |_| true)
        .await;
    let (status, _, health) = common::get_json(&http, &format!("{base}/health")).await;
    assert_eq!(status, 200, "{health}");
    assert!(p.stop().await.success());
}

backend_tests!(orders_wait_for_the_clock);
