//! Destination names: ActiveMQ style (`queue://orders`, `topic://prices`) or STOMP style
//! (`/queue/orders`, `/topic/prices`), always sent as the STOMP form.

use super::ClientError;

/// The STOMP destination for `name`: `queue://x` and `/queue/x` give `/queue/x`, `topic://x`
/// and `/topic/x` give `/topic/x`, and a bare name `x` is a queue, as ActiveMQ's tools and
/// STOMP read it. Anything else (another scheme or `/` form, an empty name) is an error.
pub fn stomp_destination(name: &str) -> Result<String, ClientError> {
    let invalid = || ClientError::InvalidDestination(name.to_string());
    if !name.is_empty()
        && !name.starts_with('/')
        && !name.contains("://")
        && !name.contains(['\n', '\r', '\0'])
    {
        return Ok(format!("/queue/{name}"));
    }
    for (scheme, prefix) in [("queue://", "/queue/"), ("topic://", "/topic/")] {
        let rest = name
            .get(..scheme.len())
            .filter(|head| head.eq_ignore_ascii_case(scheme))
            .map(|_| &name[scheme.len()..])
            .or_else(|| name.strip_prefix(prefix));
        if let Some(rest) = rest {
            if rest.is_empty() || rest.contains(['\n', '\r', '\0']) {
                return Err(invalid());
            }
            return Ok(format!("{prefix}{rest}"));
        }
    }
    Err(invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activemq_and_stomp_forms() {
        assert_eq!(
            stomp_destination("queue://orders").unwrap(),
            "/queue/orders"
        );
        assert_eq!(stomp_destination("QUEUE://a.b.c").unwrap(), "/queue/a.b.c");
        assert_eq!(
            stomp_destination("topic://prices").unwrap(),
            "/topic/prices"
        );
        assert_eq!(stomp_destination("/queue/orders").unwrap(), "/queue/orders");
        assert_eq!(stomp_destination("/topic/x/y").unwrap(), "/topic/x/y");
        assert_eq!(stomp_destination("orders").unwrap(), "/queue/orders");
    }

    #[test]
    fn other_forms_are_refused_by_name() {
        for bad in ["queue://", "/queue/", "temp-queue://x", "/temp-queue/x", ""] {
            assert_eq!(
                stomp_destination(bad),
                Err(ClientError::InvalidDestination(bad.to_string())),
                "{bad}"
            );
        }
        assert!(stomp_destination("temp-queue://x")
            .unwrap_err()
            .to_string()
            .contains("queue://NAME"));
    }
}
