//! The shipped Mosquitto snippet and ACL (`packaging/mosquitto/`), on a real
//! private Mosquitto (issue 11):
//!
//! 1. the bridge account writes the board; a display account reads it;
//! 2. a display client's publish to a ticket topic never reaches another
//!    subscriber, and its empty retained publish does not clear the ticket;
//! 3. anonymous clients and wrong passwords are refused;
//! 4. with the admin's `allow_anonymous true`, anonymous clients read but
//!    cannot write either.
use crate::common;

use common::mosquitto::{SecureBroker, BRIDGE_USER, DISPLAY_USER};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const P: &str = "restaurant/main";
const TICKET: &str = "restaurant/main/orders/ORD_20261202_001";
const FAKE: &str = "restaurant/main/orders/ORD_20261202_999";
const REAL: &str = r#"{"order_number":"ORD_20261202_001","status":"cooking","version":2}"#;

#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// An MQTT client of the test: records what it receives and counts PUBACKs.
struct Client {
    client: AsyncClient,
    msgs: Arc<Mutex<Vec<Msg>>>,
    pubacks: Arc<Mutex<u32>>,
    stop: CancellationToken,
}

impl Client {
    /// Connects; Err with the broker's refusal when it refuses.
    async fn connect(port: u16, creds: Option<(&str, &str)>) -> Result<Client, ConnectReturnCode> {
        let id = format!("acl-test-{:08x}", rand::random::<u32>());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        if let Some((u, p)) = creds {
            opts.set_credentials(u, p);
        }
        let (client, mut el) = AsyncClient::new(opts, 100);
        // The CONNACK (or the refusal) first, before handing the loop to a task.
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                    Err(e) => panic!("MQTT connection failed: {e}"),
                }
            }
        })
        .await
        .expect("no CONNACK within 10 s")?;
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let pubacks = Arc::new(Mutex::new(0));
        let stop = CancellationToken::new();
        let (m, a, s) = (msgs.clone(), pubacks.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = s.cancelled() => return,
                    ev = el.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => m.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    }),
                    Ok(Event::Incoming(Packet::PubAck(_))) => *a.lock().unwrap() += 1,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Ok(Client {
            client,
            msgs,
            pubacks,
            stop,
        })
    }

    async fn subscribe_all(&self) {
        self.client
            .subscribe(format!("{P}/#"), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK: the broker has
    /// handled the message (delivered it, or dropped it under the ACL).
    async fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        let before = *self.pubacks.lock().unwrap();
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
            .await
            .expect("publish");
        common::eventually(Duration::from_secs(10), "PUBACK", || async {
            (*self.pubacks.lock().unwrap() > before).then_some(())
        })
        .await;
    }

    fn received(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    async fn wait_for(&self, topic: &str, payload: &[u8]) -> Msg {
        common::eventually(
            Duration::from_secs(10),
            &format!("{topic} = {}", String::from_utf8_lossy(payload)),
            || async {
                self.received()
                    .into_iter()
                    .find(|m| m.topic == topic && m.payload == payload)
            },
        )
        .await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a fresh subscriber finds retained under `P/#`.
async fn retained(port: u16, creds: Option<(&str, &str)>) -> Vec<Msg> {
    let c = Client::connect(port, creds).await.expect("reader connects");
    c.subscribe_all().await;
    // Retained messages follow the SUBACK at once; a marker is not possible
    // here (the reader cannot publish), so give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.received().into_iter().filter(|m| m.retain).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_bridge_writes_the_board() {
    let broker = SecureBroker::start(false);
    let bridge = (BRIDGE_USER, broker.bridge_password.as_str());
    let display = (DISPLAY_USER, broker.display_password.as_str());

    let writer = Client::connect(broker.port, Some(bridge))
        .await
        .expect("the bridge account logs in");
    writer.publish(TICKET, REAL.as_bytes(), true).await;

    // A screen subscribed before the attack: it sees the real ticket.
    let screen = Client::connect(broker.port, Some(display))
        .await
        .expect("the display account logs in");
    screen.subscribe_all().await;
    screen.wait_for(TICKET, REAL.as_bytes()).await;

    // Another display client (a phone with the display password) tries to write.
    let attacker = Client::connect(broker.port, Some(display))
        .await
        .expect("a second display client logs in");
    attacker
        .publish(
            FAKE,
            br#"{"order_number":"ORD_20261202_999","status":"ready","version":99}"#,
            true,
        )
        .await;
    attacker.publish(TICKET, b"", true).await;
    attacker
        .publish(
            &format!("{P}/events"),
            br#"{"kind":"order_created"}"#,
            false,
        )
        .await;
    attacker
        .publish(&format!("{P}/bridge/status"), b"offline", true)
        .await;

    // The bridge's next message: everything published before it has been handled.
    writer
        .publish(&format!("{P}/events"), b"marker", false)
        .await;
    screen.wait_for(&format!("{P}/events"), b"marker").await;
    let seen = screen.received();
    assert!(
        seen.iter().all(|m| m.topic != FAKE),
        "a display client's fake ticket reached a screen: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|m| m.topic == TICKET && m.payload.is_empty()),
        "a display client's empty retained publish reached a screen: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|m| m.payload == br#"{"kind":"order_created"}"#),
        "a display client's event reached a screen"
    );
    assert!(!seen.iter().any(|m| m.payload == b"offline"));

    // The board on the broker is untouched: a screen that connects now sees the
    // real ticket and no fake.
    let board = retained(broker.port, Some(display)).await;
    assert!(
        board
            .iter()
            .any(|m| m.topic == TICKET && m.payload == REAL.as_bytes()),
        "the ticket was cleared or replaced: {board:?}"
    );
    assert!(board.iter().all(|m| m.topic != FAKE), "{board:?}");

    // The bridge can still change and clear it.
    writer.publish(TICKET, b"", true).await;
    let board = retained(broker.port, Some(display)).await;
    assert!(board.iter().all(|m| m.topic != TICKET), "{board:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_wrong_passwords_get_nothing() {
    let broker = SecureBroker::start(false);
    for creds in [
        None,
        Some((DISPLAY_USER, "wrong-password")),
        Some((BRIDGE_USER, broker.display_password.as_str())),
        Some(("someone", "anything")),
    ] {
        match Client::connect(broker.port, creds).await {
            Err(code) => assert!(
                matches!(
                    code,
                    ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
                ),
                "{creds:?}: {code:?}"
            ),
            Ok(_) => panic!("{:?} was let in", creds.map(|c| c.0)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_read_only_when_the_admin_allows_it() {
    let broker = SecureBroker::start(true);
    let writer = Client::connect(broker.port, Some((BRIDGE_USER, &broker.bridge_password)))
        .await
        .expect("bridge logs in");
    writer.publish(TICKET, REAL.as_bytes(), true).await;

    let anon = Client::connect(broker.port, None)
        .await
        .expect("anonymous clients may connect when allow_anonymous is true");
    anon.subscribe_all().await;
    anon.wait_for(TICKET, REAL.as_bytes()).await;

    let anon2 = Client::connect(broker.port, None).await.expect("anonymous");
    anon2.publish(TICKET, b"", true).await;
    anon2.publish(FAKE, b"{}", true).await;
    writer
        .publish(&format!("{P}/events"), b"marker", false)
        .await;
    anon.wait_for(&format!("{P}/events"), b"marker").await;
    let seen = anon.received();
    assert!(seen.iter().all(|m| m.topic != FAKE), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|m| m.topic == TICKET && m.payload.is_empty()),
        "{seen:?}"
    );
    let board = retained(broker.port, None).await;
    assert!(
        board
            .iter()
            .any(|m| m.topic == TICKET && m.payload == REAL.as_bytes()),
        "{board:?}"
    );
}
