//! Member znodes this node left behind: the znode of a session it gave up (expired, or lost
//! while its process was killed and restarted) stays in ZooKeeper until ZooKeeper expires that
//! session, one session timeout later, and a leftover that was the elected master or the
//! coordinator holds the election up until then. After a full ZooKeeper outage the servers
//! even restore such sessions from their snapshot and give them a whole session timeout again.
//!
//! Owns the registration file (the path and session id of this node's current znode, rewritten
//! at each registration) and the removal of leftovers: at each registration the node removes
//! the znodes of its earlier sessions, each only if ZooKeeper still shows it owned by that
//! session (`ephemeralOwner`), so nothing another session made is ever touched, and only if it
//! advertises this node's client address: a data directory copied to seed another node holds
//! the original node's registration, whose live znode the copy must leave alone. It never
//! decides anything about the election; a leftover it cannot remove just expires as before.

use std::path::Path;

use tracing::{info, warn};
use zookeeper_client as zk;

use super::znode::MemberData;

/// One registration: a member znode and the ZooKeeper session that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    /// Full path of the znode, `/activemq/leveldb-stores/00000000004`.
    pub(crate) path: String,
    /// The owning session's id.
    pub(crate) session: i64,
}

impl Registration {
    /// The file's one line: `<path> <session id in hex>`.
    fn to_line(&self) -> String {
        format!("{} {:#x}\n", self.path, self.session)
    }

    fn parse(text: &str) -> Option<Registration> {
        let (path, session) = text.trim().rsplit_once(' ')?;
        // Written as the u64 of its bits: the server's id is in the top byte.
        let session = u64::from_str_radix(session.strip_prefix("0x")?, 16).ok()? as i64;
        path.starts_with('/').then(|| Registration {
            path: path.to_owned(),
            session,
        })
    }
}

/// The registration recorded in `file` by this node's previous process, if any.
pub(crate) fn read(file: &Path) -> Option<Registration> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(
                "cannot read {}: {e}; an earlier znode of this node, if any, is left to expire",
                file.display()
            );
            return None;
        }
    };
    let registration = Registration::parse(&text);
    if registration.is_none() {
        warn!(
            "{} does not hold a znode path and a session id ({:?}); ignored",
            file.display(),
            text.trim()
        );
    }
    registration
}

/// Records `registration` in `file` (best effort: without it, a restarted process only leaves
/// its earlier znode to expire).
pub(crate) fn write(file: &Path, registration: &Registration) {
    let temporary = file.with_extension("tmp");
    let written = std::fs::write(&temporary, registration.to_line())
        .and_then(|()| std::fs::rename(&temporary, file));
    if let Err(e) = written {
        warn!("cannot record this node's znode in {}: {e}", file.display());
    }
}

/// Removes each leftover that still exists, is still owned by the session recorded with it
/// and advertises `client_address` (this node's).
pub(crate) async fn remove(
    client: &zk::Client,
    leftovers: &[Registration],
    client_address: Option<&str>,
) {
    for leftover in leftovers {
        let (data, stat) = match client.get_data(&leftover.path).await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => continue,
            Err(e) => {
                warn!(
                    "cannot look at {} ({e}); it is left to expire",
                    leftover.path
                );
                continue;
            }
        };
        if stat.ephemeral_owner != leftover.session {
            continue;
        }
        let advertised = MemberData::parse(&data)
            .ok()
            .and_then(|member| member.client_address);
        if advertised.as_deref() != client_address {
            warn!(
                "left {} alone: its session is the one recorded in this node's data directory, \
                 but it advertises {} and this node {}: the directory was copied from that \
                 node, which is still registered",
                leftover.path,
                advertised.as_deref().unwrap_or("no client address"),
                client_address.unwrap_or("none"),
            );
            continue;
        }
        match client.delete(&leftover.path, Some(stat.version)).await {
            Ok(()) => {
                info!(
                    "removed {}, left by an earlier ZooKeeper session of this node ({:#x}), \
                     instead of waiting for that session to expire",
                    leftover.path, leftover.session
                );
            }
            Err(zk::Error::NoNode | zk::Error::BadVersion) => {}
            Err(e) => warn!(
                "cannot remove {} ({e}); it is left to expire",
                leftover.path
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_holds_a_path_and_a_session() {
        let registration = Registration {
            path: "/activemq/leveldb-stores/00000000004".into(),
            session: 0x0100_02d9_f34f_0000,
        };
        let line = registration.to_line();
        assert_eq!(
            line,
            "/activemq/leveldb-stores/00000000004 0x10002d9f34f0000\n"
        );
        assert_eq!(Registration::parse(&line), Some(registration));
        // Session ids use the whole 64 bits (the server id is in the top byte).
        let high = Registration {
            path: "/p/00000000001".into(),
            session: -0x7000_0000_0000_0000,
        };
        assert_eq!(Registration::parse(&high.to_line()), Some(high));
        // The session is the last word: a znode path may hold a space.
        assert_eq!(
            Registration::parse("/my path/00000000001 0x2a\n"),
            Some(Registration {
                path: "/my path/00000000001".into(),
                session: 42,
            })
        );
        for bad in ["", "no-session", "relative 0x1", "/p 12", "/p 0xzz"] {
            assert_eq!(Registration::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_file_is_read_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("zk.registration");
        assert_eq!(read(&file), None);
        let registration = Registration {
            path: "/a/00000000007".into(),
            session: 42,
        };
        write(&file, &registration);
        assert_eq!(read(&file), Some(registration));
        std::fs::write(&file, "garbage").unwrap();
        assert_eq!(read(&file), None);
    }
}
