//! Harness for tests that start the real `ferromq` binary.
