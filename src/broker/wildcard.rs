//! ActiveMQ's wildcard destination names, for topic subscriptions.
//!
//! A name is split on `.` into segments (empty segments included, as ActiveMQ's
//! `DestinationPath` splits). A segment that is exactly `*` matches any one segment; a last
//! segment that is exactly `>` matches any number of trailing segments, none included: `logs.>`
//! matches `logs`, `logs.app1` and `logs.app1.error` (ActiveMQ's `PrefixDestinationFilter`
//! matches `A` against `A.>`). Matching is by whole segments only: `logs.app` never matches
//! `logs.app1`. Characters inside a longer segment (`a*b`, `x>`) are literal.
//!
//! A `>` anywhere but last is refused: ActiveMQ itself reads it differently depending on
//! whether the destination already exists (its destination map takes it as "everything below",
//! its filter for later destinations as a literal segment).

/// Whether `name` has a wildcard segment (`*` or `>`): a pattern, not a plain name.
pub fn is_pattern(name: &str) -> bool {
    name.split('.')
        .any(|segment| segment == "*" || segment == ">")
}

/// A parsed wildcard pattern (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// Segments before a trailing `>`; `None` stands for `*`.
    segments: Vec<Option<String>>,
    /// The pattern ended with `>`.
    descendants: bool,
}

impl Pattern {
    /// Parses a destination name with wildcard segments; the error says what is wrong.
    pub fn parse(name: &str) -> Result<Pattern, String> {
        let parts: Vec<&str> = name.split('.').collect();
        let descendants = parts.last() == Some(&">");
        let body = if descendants {
            &parts[..parts.len() - 1]
        } else {
            &parts[..]
        };
        if body.contains(&">") {
            return Err(format!(
                "'{name}': '>' matches the remaining segments and must be the last segment"
            ));
        }
        Ok(Pattern {
            segments: body
                .iter()
                .map(|s| (*s != "*").then(|| s.to_string()))
                .collect(),
            descendants,
        })
    }

    /// Whether the plain destination name `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = name.split('.');
        for segment in &self.segments {
            match (parts.next(), segment) {
                (None, _) => return false,
                (Some(part), Some(literal)) if part != literal => return false,
                _ => {}
            }
        }
        // `>` takes whatever is left, nothing included; otherwise nothing may be left.
        self.descendants || parts.next().is_none()
    }
}
