//! In-process costs of lease's hot paths: minting, writing a record, authorizing at 10 and at
//! 10,000 leases, and revoking. Run with `cargo bench`; see docs/performance.md.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use lease::authorize::authorize;
use lease::record::Record;
use lease::scope::{Action, Scope};
use lease::store::{Open, Store};
use lease::token::Token;

fn main() {
    divan::main();
}

/// A store holding `size` leases, and the token of one of them.
fn store_with(size: usize) -> (tempfile::TempDir, Store, Token) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state"), Open::CreateIfMissing).unwrap();
    let mut last = None;
    for _ in 0..size {
        let token = Token::mint().unwrap();
        store.insert(&record(&token)).unwrap();
        last = Some(token);
    }
    (dir, store, last.unwrap())
}

fn record(token: &Token) -> Record {
    let now = SystemTime::now();
    let scope = vec![
        Scope::parse("read:articles").unwrap(),
        Scope::parse("write:*").unwrap(),
    ];
    Record::new(
        token.hash(),
        scope,
        now,
        now + Duration::from_secs(3600),
        None,
    )
}

#[divan::bench]
fn mint() -> Token {
    Token::mint().unwrap()
}

#[divan::bench]
fn record_write(bencher: divan::Bencher) {
    let (_dir, store, _) = store_with(1);
    bencher
        .with_inputs(|| record(&Token::mint().unwrap()))
        .bench_local_values(|record| store.insert(&record).unwrap());
}

#[divan::bench(args = [10, 10_000])]
fn authorize_at(bencher: divan::Bencher, leases: usize) {
    let (_dir, store, token) = store_with(leases);
    let action = Action::parse("write:draft").unwrap();
    bencher.bench_local(|| {
        let decision = authorize(&store, &token, &action, SystemTime::now()).unwrap();
        assert!(decision.granted);
        decision
    });
}

#[divan::bench]
fn revoke(bencher: divan::Bencher) {
    let (_dir, store, _) = store_with(1);
    bencher
        .with_inputs(|| {
            let token = Token::mint().unwrap();
            store.insert(&record(&token)).unwrap();
            token.hash().id()
        })
        .bench_local_values(|id| {
            let now = SystemTime::now();
            store
                .update(&id, |record| lease::store::Change::when(record.revoke(now)))
                .unwrap()
        });
}
