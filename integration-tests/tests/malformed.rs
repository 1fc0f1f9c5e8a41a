//! Test 7: bad input gets an ERROR frame whose `message` header names the problem, then the
//! connection closes; the broker keeps serving everyone else. In every case a well-behaved
//! connection opened before the bad one keeps working afterwards, and new connections work.
//! A well-formed frame the broker refuses (here a SUBSCRIBE with a bad selector) gets its
//! ERROR and the connection carries on, as with ActiveMQ.

use anyhow::{ensure, Context, Result};
use ferromq_integration_tests::{BrokerProcess, Frame, Incoming, StompClient, FRAME_TIMEOUT};

const MAX_FRAME_SIZE: usize = 4096;

/// Starts a broker with a small `max_frame_size`, opens a well-behaved connection, runs the
/// bad `case`, then checks that the well-behaved connection and a new one still work.
fn with_bystander(case: impl FnOnce(&BrokerProcess) -> Result<()>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(
        dir.path(),
        &format!("[broker]\nmax_frame_size = {MAX_FRAME_SIZE}\n"),
    )?;
    let queue = "/queue/bystander";
    let mut good = broker.client()?;
    good.subscribe("s", queue, &[])?;
    good.send(queue, b"before", &[])?;
    assert_eq!(good.recv_message(FRAME_TIMEOUT)?.text(), "before");

    case(&broker)?;

    good.send(queue, b"after", &[("persistent", "true")])
        .context("the well-behaved connection stopped working after the bad one")?;
    assert_eq!(good.recv_message(FRAME_TIMEOUT)?.text(), "after");
    let mut fresh = broker
        .client()
        .context("a new connection after the bad one")?;
    fresh.send(queue, b"fresh", &[])?;
    assert_eq!(good.recv_message(FRAME_TIMEOUT)?.text(), "fresh");
    good.disconnect()?;
    Ok(())
}

/// Sends `bytes` on a connected STOMP 1.2 connection and expects an ERROR frame whose
/// `message` contains one of `names` (case-insensitive), then the close.
fn expect_error(broker: &BrokerProcess, bytes: &[u8], names: &[&str]) -> Result<Frame> {
    let mut bad = broker.client()?;
    bad.write_raw(bytes)?;
    let error = bad.expect_error_then_close(FRAME_TIMEOUT)?;
    let message = error.get("message").unwrap_or_default().to_lowercase();
    ensure!(
        names.iter().any(|n| message.contains(&n.to_lowercase())),
        "ERROR message {:?} names none of {names:?} (frame: {error:?})",
        error.get("message")
    );
    Ok(error)
}

#[test]
fn garbage_instead_of_connect_is_refused() -> Result<()> {
    with_bystander(|broker| {
        let mut bad = StompClient::open(broker.addr())?;
        bad.write_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        // An ERROR frame is optional here (the client may not speak STOMP), the close is not.
        let mut frames = Vec::new();
        loop {
            match bad.poll(FRAME_TIMEOUT)? {
                Incoming::Frame(f) => frames.push(f),
                Incoming::Closed => break,
                Incoming::TimedOut => anyhow::bail!(
                    "the broker kept a connection that sent HTTP open for {FRAME_TIMEOUT:?}"
                ),
            }
        }
        ensure!(
            frames.iter().all(|f| f.command == "ERROR"),
            "frames other than ERROR for garbage: {frames:?}"
        );
        Ok(())
    })
}

#[test]
fn binary_garbage_after_connect_is_refused() -> Result<()> {
    with_bystander(|broker| {
        let mut bad = broker.client()?;
        bad.write_raw(b"\xff\xfe\x01\x02garbage\x00\n\n\x00")?;
        let error = bad.expect_error_then_close(FRAME_TIMEOUT)?;
        ensure!(
            error.get("message").is_some_and(|m| !m.is_empty()),
            "ERROR without a message header: {error:?}"
        );
        Ok(())
    })
}

#[test]
fn unknown_command_is_named_in_the_error() -> Result<()> {
    with_bystander(|broker| {
        expect_error(broker, b"FROBNICATE\nx:y\n\n\0", &["FROBNICATE"])?;
        Ok(())
    })
}

/// A SEND without a destination, or with an empty one, gets an ERROR naming the header, and
/// its connection closes.
#[test]
fn send_without_destination_names_the_header() -> Result<()> {
    with_bystander(|broker| {
        expect_error(broker, b"SEND\nreceipt:r1\n\nhello\0", &["destination"])?;
        // An empty one is as missing.
        expect_error(broker, b"SEND\ndestination:\n\nhello\0", &["destination"])?;
        Ok(())
    })
}

/// Persistent SENDs pipelined ahead of a bad frame, in the same write, are stored: their
/// RECEIPTs come before the ERROR that closes the connection (a client never told of a stored
/// send sends it again, and the message is then there twice).
#[test]
fn sends_ahead_of_a_bad_frame_get_their_receipts_before_the_error() -> Result<()> {
    with_bystander(|broker| {
        let mut bad = broker.client()?;
        let mut bytes = Vec::new();
        for i in 0..3 {
            bytes.extend_from_slice(
                format!("SEND\ndestination:/queue/ahead\npersistent:true\nreceipt:r{i}\n\nm{i}\0")
                    .as_bytes(),
            );
        }
        bytes.extend_from_slice(b"FROBNICATE\n\n\0");
        bad.write_raw(&bytes)?;
        let mut commands = Vec::new();
        loop {
            match bad.poll(FRAME_TIMEOUT)? {
                Incoming::Frame(f) => {
                    let receipt = f.get("receipt-id").unwrap_or_default().to_string();
                    commands.push(format!("{} {receipt}", f.command).trim().to_string());
                }
                Incoming::Closed => break,
                Incoming::TimedOut => anyhow::bail!("still open after {commands:?}"),
            }
        }
        ensure!(
            commands == ["RECEIPT r0", "RECEIPT r1", "RECEIPT r2", "ERROR"],
            "frames before the close: {commands:?}"
        );
        let mut reader = broker.client()?;
        reader.subscribe("s", "/queue/ahead", &[])?;
        for i in 0..3 {
            ensure!(reader.recv_message(FRAME_TIMEOUT)?.text() == format!("m{i}"));
        }
        reader.disconnect()?;
        Ok(())
    })
}

#[test]
fn non_numeric_content_length_is_refused() -> Result<()> {
    with_bystander(|broker| {
        expect_error(
            broker,
            b"SEND\ndestination:/queue/x\ncontent-length:abc\n\nhi\0",
            &["content-length"],
        )?;
        Ok(())
    })
}

#[test]
fn frame_over_max_frame_size_is_refused() -> Result<()> {
    with_bystander(|broker| {
        // Declared too large: refused before the body is even sent.
        let head = format!(
            "SEND\ndestination:/queue/x\ncontent-length:{}\n\n",
            MAX_FRAME_SIZE * 10
        );
        let error = expect_error(broker, head.as_bytes(), &["too large", "max_frame_size"])?;
        ensure!(
            names_the_limit(&error),
            "the ERROR for a declared oversized frame should name the limit \
             ({MAX_FRAME_SIZE} or max_frame_size): {error:?}"
        );

        // Streamed past the limit without content-length: the broker must not buffer on.
        let mut bad = broker.client()?;
        let mut frame = b"SEND\ndestination:/queue/x\n\n".to_vec();
        frame.extend(std::iter::repeat_n(b'x', MAX_FRAME_SIZE + 1));
        bad.write_raw(&frame)?;
        let error = bad
            .expect_error_then_close(FRAME_TIMEOUT)
            .with_context(|| {
                format!("a frame body streamed past max_frame_size ({MAX_FRAME_SIZE})")
            })?;
        ensure!(
            names_the_limit(&error),
            "the ERROR for a frame streamed past the limit should name it \
             ({MAX_FRAME_SIZE} or max_frame_size): {error:?}"
        );
        Ok(())
    })
}

/// Whether an ERROR's `message` names the size limit: `max_frame_size`, or the number
/// [`MAX_FRAME_SIZE`] as a whole number (not a part of a larger one, such as the frame's own
/// size).
fn names_the_limit(error: &Frame) -> bool {
    let message = error.get("message").unwrap_or_default();
    message.contains("max_frame_size")
        || message
            .split(|c: char| !c.is_ascii_digit())
            .any(|number| number == MAX_FRAME_SIZE.to_string())
}

#[test]
fn malformed_header_line_is_refused() -> Result<()> {
    with_bystander(|broker| {
        expect_error(broker, b"SEND\ndestination/queue/x\n\nhi\0", &["header"])?;
        Ok(())
    })
}

/// More than ActiveMQ's 1000 headers in one frame, each costing the broker far more than its
/// bytes: refused, though the frame is within `max_frame_size`.
#[test]
fn a_frame_with_too_many_headers_is_refused() -> Result<()> {
    with_bystander(|broker| {
        let mut frame = b"SEND\ndestination:/queue/x\n".to_vec();
        frame.extend(b"a:\n".repeat(1000));
        frame.extend_from_slice(b"\nhi\0");
        assert!(frame.len() < MAX_FRAME_SIZE);
        expect_error(broker, &frame, &["more than 1000 headers"])?;
        Ok(())
    })
}

#[test]
fn a_subscription_with_a_bad_selector_is_refused() -> Result<()> {
    with_bystander(|broker| {
        let mut client = broker.client()?;
        client.write_raw(
            b"SUBSCRIBE\nid:1\ndestination:/queue/t\nselector:color = \nreceipt:r9\n\n\0",
        )?;
        let error = client.expect_frame(FRAME_TIMEOUT)?;
        ensure!(error.command == "ERROR", "expected an ERROR: {error:?}");
        let message = error.get("message").unwrap_or_default();
        ensure!(message.contains("selector"), "{message}");
        assert_eq!(
            error.get("receipt-id"),
            Some("r9"),
            "an ERROR for a frame with a receipt names that receipt"
        );
        // The connection carries on.
        client.send("/queue/still-open", b"x", &[("persistent", "true")])?;
        Ok(())
    })
}

#[test]
fn connect_with_no_common_version_is_refused() -> Result<()> {
    with_bystander(|broker| {
        let mut bad = StompClient::open(broker.addr())?;
        bad.write_raw(b"CONNECT\naccept-version:9.9\nhost:localhost\n\n\0")?;
        let error = bad.expect_error_then_close(FRAME_TIMEOUT)?;
        let message = error.get("message").unwrap_or_default();
        ensure!(
            message.contains("1.2"),
            "the ERROR should list the supported versions: {error:?}"
        );
        Ok(())
    })
}

/// A `heart-beat` that is not two numbers is refused as ActiveMQ refuses it, rather than read
/// as no heart-beat (the client would then think its heart-beats were agreed).
#[test]
fn connect_with_a_malformed_heart_beat_is_refused() -> Result<()> {
    with_bystander(|broker| {
        let mut bad = StompClient::open(broker.addr())?;
        bad.write_raw(b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:abc\n\n\0")?;
        let error = bad.expect_error_then_close(FRAME_TIMEOUT)?;
        // Unescaped, as ActiveMQ writes it: the client does not know the version yet.
        ensure!(
            error.get("message") == Some("Invalid heart-beat header:abc"),
            "the ERROR should name the header: {error:?}"
        );
        Ok(())
    })
}

#[test]
fn a_client_silent_after_connecting_does_not_block_others() -> Result<()> {
    // A half-sent frame (no NUL) is just waiting: others are served meanwhile.
    with_bystander(|broker| {
        let mut slow = broker.client()?;
        slow.write_raw(b"SEND\ndestination:/queue/half\n\nno end yet")?;
        let mut other = broker.client()?;
        other.send("/queue/other", b"x", &[])?;
        slow.write_raw(b"\0")?;
        // The completed frame is accepted (no ERROR): a receipted request still works.
        slow.request(Frame::new("SEND").header("destination", "/queue/half"))?;
        Ok(())
    })
}

/// The broker's log going nowhere (the process reading its standard error died: a crashed log
/// shipper, `ferromq broker | head`) does not stop it: it goes on serving, logging into the
/// closed pipe, and a SIGTERM still ends it cleanly (exit 0, not a panic's 101).
#[test]
fn a_closed_log_pipe_does_not_stop_the_broker() -> Result<()> {
    use std::io::BufRead as _;
    use std::process::Stdio;
    use std::time::Duration;

    use ferromq_integration_tests::{accepting_clients_address, ChildGuard, STARTUP_TIMEOUT};

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ferromq.toml");
    std::fs::write(
        &config,
        format!(
            "[transport]\nconnectors = [\"tcp://127.0.0.1:0\"]\n\n[store]\ndirectory = {}\n{}\n",
            ferromq_integration_tests::toml_string(&dir.path().join("data").to_string_lossy()),
            ferromq_integration_tests::TEST_LOG_SIZE
        ),
    )?;
    let mut command = ferromq_integration_tests::ferromq_command();
    command
        .arg("broker")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Killed when dropped: an early return or a panic below leaves no broker behind.
    let mut broker = ChildGuard::spawn("the broker", &mut command)?;
    // Its log up to the line that says where it listens (the OS picked the port); then the
    // reader goes away, closing the pipe, before the address is handed over.
    let stderr = broker.stderr.take().expect("piped");
    let (found, listening) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut addr = None;
        let mut lines = std::io::BufReader::new(stderr).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            addr = accepting_clients_address(&line);
            if addr.is_some() {
                break;
            }
        }
        drop(lines);
        let _ = found.send(addr);
    });
    let addr = match listening.recv_timeout(STARTUP_TIMEOUT) {
        Ok(Some(addr)) => addr,
        Ok(None) => anyhow::bail!(
            "the broker's log ended without an `accepting clients` line (exit: {:?})",
            broker.try_wait()?
        ),
        Err(_) => anyhow::bail!("no `accepting clients` log line within {STARTUP_TIMEOUT:?}"),
    };
    let result = (|| -> Result<()> {
        // Each of these is logged (at INFO) into the closed pipe.
        for _ in 0..3 {
            let mut bad = StompClient::open(addr)?;
            bad.write_raw(b"GARBAGE\n\n\0")?;
            bad.expect_error_then_close(FRAME_TIMEOUT)?;
        }
        let mut client = StompClient::connect(addr)?;
        client.subscribe("s", "/queue/after-the-pipe", &[("ack", "auto")])?;
        client.send_persistent("/queue/after-the-pipe", b"still here")?;
        let got = client.recv_message(FRAME_TIMEOUT)?;
        ensure!(got.body == b"still here", "{got:?}");
        client.disconnect()?;
        Ok(())
    })();
    broker.signal("TERM")?;
    let status = broker
        .wait_timeout(Duration::from_secs(30))
        .context("after SIGTERM")?;
    result?;
    ensure!(
        status.success(),
        "the broker ended with {status} after its log pipe closed"
    );
    Ok(())
}
