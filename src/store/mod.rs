//! The durable state of one node.
pub mod record;
