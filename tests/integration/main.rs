//! Integration tests: the real `lease` binary against real processes, signals, a real
//! pseudo-terminal and real shells. Each test runs in its own sandbox (see `harness`).
#![allow(clippy::unwrap_used)]

mod bad_input;
mod cli;
mod config;
mod examples;
mod hardening;
mod harness;
mod manage;
mod orphans;
mod output;
mod policy;
mod races;
mod run;
mod scanners;
mod signals;
mod store;
mod stress;
mod terminal;
mod trail;
mod verify;
