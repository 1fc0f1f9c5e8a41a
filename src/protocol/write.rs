//! Writing to a client that may have stopped reading, shared by the protocols.
//!
//! A connection task that awaits a plain `write_all` reads nothing meanwhile, so a client that
//! vanished (a dead machine, a cut network) with a full socket would never be found silent by
//! the heart-beat or inactivity check. [`flush`] writes and reads at once: what the
//! client sends counts as a sign of life and is kept for the caller to handle.
//!
//! It must never interpret what it reads, nor read without bound.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// How much a client may send while a write to it waits before reading it stops (past that it
/// is plainly alive).
const READ_WHILE_WRITING: usize = 1 << 20;

/// Why [`write_watching`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unwritten {
    /// The connection failed or the client closed it.
    Failed,
    /// The client sent nothing for the grace period while the write waited.
    Silent,
}

/// Writes all of `output` to `stream`: with a `grace` (heart-beats or an inactivity monitor in
/// force, the client's reading not paused by flow control) through [`write_watching`], else
/// plainly. `Ok(true)`: the client sent bytes meanwhile, appended to `input`, to handle next.
pub(crate) async fn flush<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    output: &mut BytesMut,
    input: &mut BytesMut,
    grace: Option<Duration>,
    last_read: &mut Instant,
) -> Result<bool, Unwritten> {
    let Some(grace) = grace else {
        stream
            .write_all(output)
            .await
            .map_err(|_| Unwritten::Failed)?;
        output.clear();
        return Ok(false);
    };
    let before = input.len();
    write_watching(stream, output, input, grace, last_read).await?;
    Ok(input.len() > before)
}

/// Writes all of `output` to `stream`. Meanwhile, what the client sends is appended to
/// `input` (unhandled; the caller handles it next) and moves `last_read`; a client that
/// sends nothing until `last_read + grace` is given up as [`Unwritten::Silent`].
async fn write_watching<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    output: &mut BytesMut,
    input: &mut BytesMut,
    grace: Duration,
    last_read: &mut Instant,
) -> Result<(), Unwritten> {
    // Nearly every write completes at once: the timer below is made only for one that waits.
    if std::future::poll_fn(|cx| Poll::Ready(write_some(stream, output, cx))).await? {
        return Ok(());
    }
    let silence = tokio::time::sleep_until(*last_read + grace);
    tokio::pin!(silence);
    let mut chunk = [0u8; 4096];
    std::future::poll_fn(|cx| loop {
        match write_some(stream, output, cx) {
            Ok(true) => return Poll::Ready(Ok(())),
            Ok(false) => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
        if input.len() >= READ_WHILE_WRITING {
            *last_read = Instant::now();
            silence.as_mut().reset(*last_read + grace);
        } else {
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Poll::Ready(Err(Unwritten::Failed))
                }
                Poll::Ready(Ok(())) => {
                    input.extend_from_slice(buf.filled());
                    *last_read = Instant::now();
                    silence.as_mut().reset(*last_read + grace);
                    continue;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Unwritten::Failed)),
                Poll::Pending => {}
            }
        }
        return match silence.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Unwritten::Silent)),
            Poll::Pending => Poll::Pending,
        };
    })
    .await
}

/// Writes what the stream takes now: `Ok(true)` once `output` is all written, `Ok(false)` when
/// the stream would block (the waker is registered).
fn write_some<S: AsyncWrite + Unpin>(
    stream: &mut S,
    output: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> Result<bool, Unwritten> {
    while !output.is_empty() {
        match Pin::new(&mut *stream).poll_write(cx, output) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(Unwritten::Failed),
            Poll::Ready(Ok(n)) => output.advance(n),
            Poll::Pending => return Ok(false),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that neither reads nor writes is given up after the grace; one that keeps
    /// sending (heart-beats) while not reading is not, and what it sent is kept. In paused
    /// time: the talker's 40 ms against the 100 ms grace do not depend on the machine's load.
    #[tokio::test(start_paused = true)]
    async fn a_silent_reader_is_given_up_a_talking_one_is_not() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut output = BytesMut::from(&[b'x'; 8192][..]);
        let mut input = BytesMut::new();
        let mut last_read = Instant::now();
        let grace = Duration::from_millis(100);
        let silent =
            write_watching(&mut server, &mut output, &mut input, grace, &mut last_read).await;
        assert_eq!(silent, Err(Unwritten::Silent));

        let talker = tokio::spawn(async move {
            for _ in 0..10 {
                client.write_all(b"\n").await.unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            let mut sink = Vec::new();
            client.read_to_end(&mut sink).await.unwrap();
            sink.len()
        });
        let mut last_read = Instant::now();
        let written =
            write_watching(&mut server, &mut output, &mut input, grace, &mut last_read).await;
        assert_eq!(written, Ok(()));
        assert!(input.iter().all(|b| *b == b'\n') && !input.is_empty());
        drop(server);
        assert!(talker.await.unwrap() > 0);
    }
}
