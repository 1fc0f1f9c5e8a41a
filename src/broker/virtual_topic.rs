//! ActiveMQ's virtual topics (`<virtualTopic name prefix postfix>`, here `[broker]
//! virtual_topic_name`, `virtual_topic_prefix`, `virtual_topic_postfix`): which queue is a
//! consumer queue of which topic. A message sent to a topic the name pattern matches is also
//! copied to each consumer queue of that topic: a queue named prefix + topic + postfix, where a
//! `*` segment of the prefix or postfix stands for any one non-empty segment (the consuming
//! system's name). ActiveMQ's defaults: `VirtualTopic.>` and `Consumer.*.`, so queue
//! `Consumer.A.VirtualTopic.Orders` is fed by topic `VirtualTopic.Orders`.
//!
//! It owns only the naming rule; the core decides when a queue becomes a consumer queue and
//! journals it. It must never accept a rule under which every queue would be a consumer queue
//! of a topic of its own name (prefix and postfix both empty).

use super::wildcard::{self, Pattern};

/// A virtual topic rule, checked when made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualTopics {
    name: Pattern,
    /// The prefix's segments (without its trailing empty one); `None` stands for `*`.
    prefix: Vec<Option<String>>,
    /// The postfix's segments (without its leading empty one).
    postfix: Vec<Option<String>>,
}

/// Which part of a rule is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// `name`, `prefix` or `postfix`.
    pub part: &'static str,
    pub message: String,
}

fn rule_error(part: &'static str, message: impl Into<String>) -> RuleError {
    RuleError {
        part,
        message: message.into(),
    }
}

/// `text`'s segments for a prefix (`trailing`: it must end with `.`) or a postfix (it must
/// start with `.`); empty text has none.
fn affix(part: &'static str, text: &str, trailing: bool) -> Result<Vec<Option<String>>, RuleError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let inner = if trailing {
        text.strip_suffix('.')
    } else {
        text.strip_prefix('.')
    };
    let Some(inner) = inner else {
        let (must, dot) = if trailing {
            ("end", "with '.'")
        } else {
            ("start", "with '.'")
        };
        return Err(rule_error(
            part,
            format!("'{text}' must {must} {dot} (e.g. 'Consumer.*.' or '.Consumer.*')"),
        ));
    };
    inner
        .split('.')
        .map(|segment| match segment {
            "" => Err(rule_error(part, format!("'{text}' has an empty segment"))),
            ">" => Err(rule_error(
                part,
                format!("'{text}': '>' cannot be used here, only '*' for one segment"),
            )),
            s if s.contains(',') => Err(rule_error(part, format!("'{text}' holds a ','"))),
            "*" => Ok(None),
            s => Ok(Some(s.to_string())),
        })
        .collect()
}

/// Whether `parts` are the `affix` segments, `*` taking any one non-empty segment.
fn affix_matches(affix: &[Option<String>], parts: &[&str]) -> bool {
    affix
        .iter()
        .zip(parts)
        .all(|(segment, part)| match segment {
            None => !part.is_empty(),
            Some(literal) => literal == part,
        })
}

impl VirtualTopics {
    /// The rule for topics matching `name`, whose consumer queues are `prefix` + topic +
    /// `postfix`.
    pub fn new(name: &str, prefix: &str, postfix: &str) -> Result<VirtualTopics, RuleError> {
        if name.is_empty() || name.contains(',') {
            return Err(rule_error(
                "name",
                format!("'{name}' is not a topic name or pattern (e.g. 'VirtualTopic.>' or '>')"),
            ));
        }
        let name = Pattern::parse(name).map_err(|m| rule_error("name", m))?;
        let prefix = affix("prefix", prefix, true)?;
        let postfix = affix("postfix", postfix, false)?;
        if prefix.is_empty() && postfix.is_empty() {
            return Err(rule_error(
                "prefix",
                "the prefix and the postfix must not both be empty (every queue would be a \
                 consumer queue of the topic of its own name)",
            ));
        }
        Ok(VirtualTopics {
            name,
            prefix,
            postfix,
        })
    }

    /// ActiveMQ's default rule: `VirtualTopic.>` with consumer queues `Consumer.*.`.
    pub fn activemq_default() -> VirtualTopics {
        VirtualTopics::new("VirtualTopic.>", "Consumer.*.", "").expect("a valid rule")
    }

    /// The topic (`topic://...`) whose consumer queue is queue `name` (without prefix), if it
    /// is one.
    pub fn topic_of(&self, name: &str) -> Option<String> {
        let parts: Vec<&str> = name.split('.').collect();
        let (p, s) = (self.prefix.len(), self.postfix.len());
        if parts.len() <= p + s {
            return None;
        }
        let middle = parts.len() - s;
        if !affix_matches(&self.prefix, &parts[..p])
            || !affix_matches(&self.postfix, &parts[middle..])
        {
            return None;
        }
        let topic = parts[p..middle].join(".");
        if wildcard::is_pattern(&topic) || !self.name.matches(&topic) {
            return None;
        }
        Some(format!("topic://{topic}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_rule_is_activemqs() {
        let v = VirtualTopics::activemq_default();
        assert_eq!(
            v.topic_of("Consumer.A.VirtualTopic.Orders").as_deref(),
            Some("topic://VirtualTopic.Orders")
        );
        assert_eq!(
            v.topic_of("Consumer.A.VirtualTopic.eu.orders").as_deref(),
            Some("topic://VirtualTopic.eu.orders")
        );
        for not in [
            "Consumer.A.Orders",
            "Consumer..VirtualTopic.Orders",
            "Consumer.VirtualTopic.Orders",
            "Consumers.A.VirtualTopic.Orders",
            "Consumer.A.VirtualTopic.*",
            "orders",
        ] {
            assert_eq!(v.topic_of(not), None, "{not}");
        }
    }

    #[test]
    fn a_configured_rule_as_in_activemqs_documentation() {
        // <virtualTopic name=">" prefix="VirtualTopicConsumers.*." selectorAware="false"/>
        let v = VirtualTopics::new(">", "VirtualTopicConsumers.*.", "").unwrap();
        assert_eq!(
            v.topic_of("VirtualTopicConsumers.billing.orders")
                .as_deref(),
            Some("topic://orders")
        );
        assert_eq!(v.topic_of("Consumer.A.VirtualTopic.Orders"), None);
        assert_eq!(v.topic_of("VirtualTopicConsumers.billing"), None);

        let v = VirtualTopics::new("events.>", "", ".fanout.*").unwrap();
        assert_eq!(
            v.topic_of("events.created.fanout.audit").as_deref(),
            Some("topic://events.created")
        );
        assert_eq!(v.topic_of("other.created.fanout.audit"), None);
    }

    #[test]
    fn bad_rules_are_refused_naming_the_part() {
        let part = |name, prefix, postfix| VirtualTopics::new(name, prefix, postfix).unwrap_err();
        assert_eq!(part("", "Consumer.*.", "").part, "name");
        assert_eq!(part("a.>.b", "Consumer.*.", "").part, "name");
        assert_eq!(part(">", "", "").part, "prefix");
        assert_eq!(part(">", "Consumer.*", "").part, "prefix");
        assert_eq!(part(">", "Consumer.>.", "").part, "prefix");
        assert_eq!(part(">", "Consumer..", "").part, "prefix");
        assert_eq!(part(">", "", "fanout").part, "postfix");
        let e = part(">", "Consumer.*", "");
        assert!(e.message.contains("must end with '.'"), "{}", e.message);
    }
}
