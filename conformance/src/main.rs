//! `dovecote-conformance --server URL [--server URL ...] [--filter TEXT] [--list]`
//! `dovecote-conformance --fake`: the in-memory FakeServer behind HTTP.
//!
//! Runs the protocol v1 conformance kit (docs/protocol.md) against a
//! server, or against several instances on one database; one line per
//! check; exit status 1 if any failed.

use std::process::ExitCode;

use dovecote_conformance::{checks, fake::FakeHttp, Kit};

const USAGE: &str =
    "usage: dovecote-conformance (--server URL [--server URL ...] | --fake) [--filter TEXT] [--list]

The server must offer the DEV-ONLY sign-in (POST /v1/session; the reference
server's --dev-sign-in) and the default limits of docs/protocol.md §9, with
a rate limit of a few thousand requests per user per minute. Several
--server URLs are instances on one database: the checks spread over them.";

fn main() -> ExitCode {
    let mut urls = Vec::new();
    let mut filter = String::new();
    let mut fake = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--server" => match args.next() {
                Some(url) => urls.push(url),
                None => return usage(),
            },
            "--filter" => match args.next() {
                Some(f) => filter = f,
                None => return usage(),
            },
            "--fake" => fake = true,
            "--list" => {
                for check in checks() {
                    println!("{}", check.name);
                }
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }
    let _fake = if fake {
        match FakeHttp::start() {
            Ok(server) => {
                urls.push(server.url.clone());
                Some(server)
            }
            Err(e) => {
                eprintln!("cannot start the fake: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    if urls.is_empty() {
        return usage();
    }
    let started = std::time::Instant::now();
    let kit = Kit::new(urls.clone());
    let failures = kit.run(&filter, |name, outcome| match outcome {
        Ok(()) => println!("ok   {name}"),
        Err(why) => println!("FAIL {name}\n     {why}"),
    });
    let total = checks().iter().filter(|c| c.name.contains(filter.as_str())).count();
    println!(
        "{} of {total} checks passed against {} in {:.1} s",
        total - failures.len(),
        urls.join(", "),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}
