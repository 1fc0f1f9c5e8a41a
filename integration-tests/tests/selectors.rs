//! JMS selectors on STOMP subscriptions (header `selector`), as ActiveMQ supports them.

use anyhow::{ensure, Result};
use ferromq_integration_tests::{BrokerProcess, Frame, Incoming, FRAME_TIMEOUT};

#[test]
fn a_subscription_receives_only_what_its_selector_accepts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let queue = "/queue/selected";
    let mut consumer = broker.client()?;
    consumer.subscribe("s", queue, &[("selector", "color = 'red' AND weight > 10")])?;
    let mut producer = broker.client()?;
    for (color, weight, body) in [
        ("red", "5", "light red"),
        ("blue", "50", "heavy blue"),
        ("red", "50", "heavy red"),
    ] {
        producer.send(
            queue,
            body.as_bytes(),
            &[("color", color), ("weight", weight), ("persistent", "true")],
        )?;
    }
    ensure!(consumer.recv_message(FRAME_TIMEOUT)?.text() == "heavy red");
    // The two others stay on the queue for a consumer that accepts them.
    let mut rest = broker.client()?;
    rest.subscribe("all", queue, &[])?;
    let mut others = vec![
        rest.recv_message(FRAME_TIMEOUT)?.text(),
        rest.recv_message(FRAME_TIMEOUT)?.text(),
    ];
    others.sort();
    ensure!(others == ["heavy blue", "light red"], "{others:?}");
    Ok(())
}

#[test]
fn a_malformed_selector_is_an_error_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let mut client = broker.client()?;
    client.send_frame(
        &Frame::new("SUBSCRIBE")
            .header("id", "s")
            .header("destination", "/queue/x")
            .header("selector", "color = "),
    )?;
    match client.poll(FRAME_TIMEOUT)? {
        Incoming::Frame(f) => {
            let message = f.get("message").unwrap_or("");
            ensure!(
                f.command == "ERROR" && message.contains("selector"),
                "{f:?}"
            );
        }
        other => anyhow::bail!("expected an ERROR, got {other:?}"),
    }
    Ok(())
}
