//! The Windows build (under Wine, see `ferromq_integration_tests::windows`): the store's
//! Windows code paths keep every receipted message.

use std::ffi::OsString;

use anyhow::Result;
use ferromq_integration_tests::windows::wine_launcher;
use ferromq_integration_tests::BrokerProcess;

fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("data"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .count()
        })
        .unwrap_or(0)
}

/// Receipted sends across several segment rotations, part of them consumed, then `kill -9`
/// and a restart: every unconsumed message comes back whole, once, in order. (Before the spare
/// segment was created with `create_new`, a removed name that Windows-style delete semantics
/// keep alive let the next segment's preparation truncate the current one.)
#[test]
fn the_windows_build_keeps_every_receipted_message_across_rotations_and_kill9() -> Result<()> {
    let mut launcher = wine_launcher()?;
    launcher
        .env
        .push(("FERROMQ_STORE__LOG_SIZE".into(), OsString::from("1MiB")));
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start_with_launcher(launcher, dir.path(), "")?;
    let queue = "/queue/windows";
    let body_of = |i: usize| format!("{i:05}-{}", "w".repeat(1018));
    let mut producer = broker.client()?;
    for i in 0..3000 {
        producer.send_persistent(queue, body_of(i).as_bytes())?;
    }
    let first = broker.client()?.consume_acked(queue, 1000)?;
    assert_eq!(first, (0..1000).map(body_of).collect::<Vec<_>>());
    let segments = segment_files(dir.path());
    assert!(
        segments >= 2,
        "3 MB in 1 MiB segments, yet {segments} segment file(s)"
    );

    broker.kill9();
    broker.restart()?;
    let remaining = broker.remaining_bodies(queue)?;
    assert_eq!(
        remaining.len(),
        2000,
        "messages after kill -9 and a restart"
    );
    assert!(
        remaining == (1000..3000).map(body_of).collect::<Vec<_>>(),
        "after kill -9 and a restart: the unconsumed ones, whole, once, in order"
    );
    Ok(())
}
