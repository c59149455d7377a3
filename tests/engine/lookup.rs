//! The shard's client of a lookup service, against `loadgen lookup-service`'s server in this
//! process: requests of at most `batch_max` keys, at most `in_flight_max` in flight, keys
//! queued while the slots are busy and shed past a round's worth, a key never asked twice
//! while asked, answers that fill the cache with the service's rows, failures counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::LocalExecutorBuilder;
use sluice::enrich::remote::{RemoteSpec, RemoteStats};
use sluice::runtime::lookup::LookupClient;
use sluice_loadgen::lookup::{ServiceOpts, Table, start, w1_table};

fn spec(port: u16, batch_max: usize, in_flight_max: usize) -> Arc<RemoteSpec> {
    let mut s = RemoteSpec::from_url(&format!("http://127.0.0.1:{port}/lookup")).unwrap();
    s.batch_max = batch_max;
    s.in_flight_max = in_flight_max;
    s.budget_us = 2_000_000;
    Arc::new(s)
}

fn stats(c: &LookupClient) -> RemoteStats {
    let mut r = RemoteStats::default();
    c.fill(&mut r);
    r
}

#[test]
fn requests_are_bounded_batched_queued_and_shed() {
    let opts = ServiceOpts {
        latency: Duration::from_millis(20),
        fail_rate: 0.0,
        seed: 1,
    };
    let full = w1_table(1);
    let table: Table = (1..=100).map(|k| (k, full[&k].clone())).collect();
    let (addr, served) = start("127.0.0.1:0", table.clone(), opts).unwrap();
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let client = LookupClient::new(spec(addr.port(), 4, 1));
            // Ten keys, four a request, one request at a time: the first four go out, the
            // next four queue behind them, the last two are shed.
            let keys: Vec<u64> = (1..=10).collect();
            let waits = client.ask(&keys, &[]);
            assert_eq!(waits.len(), 2);
            let s = stats(&client);
            assert_eq!((s.requests, s.in_flight, s.shed), (1, 1, 2));
            // Keys already asked for are waited for, not asked again.
            let again = client.ask(&keys[..8], &[]);
            assert_eq!(again.len(), 2);
            assert_eq!(stats(&client).requests, 1);
            let started = Instant::now();
            client.wait(waits).await;
            client.wait(again).await;
            // One round trip each, one after the other.
            assert!(started.elapsed() >= Duration::from_millis(40));
            let s = stats(&client);
            assert_eq!(
                (s.requests, s.in_flight, s.timeouts, s.failures),
                (2, 0, 0, 0)
            );
            let mut answers = Vec::new();
            client.take_answers(|a| {
                answers.push(a.to_owned());
                Ok(0)
            });
            let lines: Vec<String> = answers.concat().lines().map(str::to_owned).collect();
            let want: Vec<String> = (1..=8).map(|k| table[&k].clone()).collect();
            assert_eq!(lines, want);
            // The shed keys are asked for by the next batch that lacks them.
            let waits = client.ask(&keys[8..], &[]);
            client.wait(waits).await;
            assert_eq!(stats(&client).requests, 3);
            // A budget shorter than the service's latency: the wait gives up and counts it;
            // the request lives on and its answer still arrives.
            let short = {
                let mut s = (*spec(addr.port(), 4, 1)).clone();
                s.budget_us = 1_000;
                LookupClient::new(Arc::new(s))
            };
            let waits = short.ask(&[42], &[]);
            short.wait(waits).await;
            assert_eq!(stats(&short).timeouts, 1);
            glommio::timer::sleep(Duration::from_millis(60)).await;
            let mut got = String::new();
            short.take_answers(|a| {
                got.push_str(a);
                Ok(1)
            });
            assert_eq!(got.trim(), table[&42]);
            assert_eq!(stats(&short).in_flight, 0);
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(served.failed.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn failures_and_a_service_that_is_gone_are_counted() {
    let opts = ServiceOpts {
        latency: Duration::ZERO,
        fail_rate: 1.0,
        seed: 1,
    };
    let (addr, _) = start("127.0.0.1:0", Table::new(), opts).unwrap();
    // A port nothing listens on.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_port = gone.local_addr().unwrap().port();
    drop(gone);
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            for port in [addr.port(), gone_port] {
                let client = LookupClient::new(spec(port, 64, 2));
                for round in 1..=3u64 {
                    let waits = client.ask(&[7, 8, 9], &[]);
                    client.wait(waits).await;
                    let s = stats(&client);
                    assert_eq!((s.requests, s.failures, s.in_flight), (round, round, 0));
                }
                client.take_answers(|_| panic!("no answer"));
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
