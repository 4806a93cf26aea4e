//! Integration tests: the real `lease` binary against real processes, signals, a real
//! pseudo-terminal and real shells. Each test runs in its own sandbox (see `harness`).
#![allow(clippy::unwrap_used)]

mod audit;
mod bad_input;
mod broker;
mod cli;
mod config;
mod environment;
mod etcd;
mod examples;
mod hardening;
mod harness;
mod manage;
mod orphans;
mod output;
mod pinned;
mod policy;
mod proxy;
mod races;
mod receipt;
mod run;
mod scanners;
mod shell;
mod signals;
mod status;
mod store;
mod stress;
mod suggest;
mod terminal;
mod verify;
