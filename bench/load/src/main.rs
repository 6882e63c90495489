//! `dovecote-load --server URL [--server URL ...] [--clients 50] [--pushes 200]
//! [--pullers 4] [--page 100] [--timeout 240] [--label NAME]`
//!
//! The load benchmark of issue 15 (see the library's docs for what it
//! checks). Prints the figures, the correctness counts and one `summary`
//! line of `key=value` fields for scripts/load; exit status 1 on any
//! correctness failure, 3 when the run did not finish within `--timeout`.

use std::process::ExitCode;
use std::time::Duration;

use dovecote_load::{run, Options};

const USAGE: &str = "usage: dovecote-load --server URL [--server URL ...] [--clients N] [--pushes N]
                     [--pullers N] [--page N] [--timeout SECS] [--label NAME]

Several --server URLs are instances on one database. The servers need the
DEV-ONLY sign-in (--dev-sign-in) and rate limits above the load: each
client makes about 200 requests in a few seconds, and all sign in from one IP.";

fn main() -> ExitCode {
    let mut options = Options { urls: Vec::new(), clients: 50, pushes: 200, pullers: 4, page: 100 };
    let mut timeout = 240u64;
    let mut label = String::from("server");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let Some(value) = args.next() else { return usage() };
        let number = || value.parse::<u64>().ok().filter(|n| *n > 0);
        match (arg.as_str(), number()) {
            ("--server", _) => options.urls.push(value),
            ("--label", _) => label = value,
            ("--clients", Some(n)) => options.clients = n as usize,
            ("--pushes", Some(n)) => options.pushes = n,
            ("--pullers", Some(n)) => options.pullers = n as usize,
            ("--page", Some(n)) => options.page = n.min(1000) as u32,
            ("--timeout", Some(n)) => timeout = n,
            _ => return usage(),
        }
    }
    if options.urls.is_empty() {
        return usage();
    }
    // The bound: a run that hangs (a stuck lock, a server that stopped
    // answering) fails instead of holding the machine.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(timeout));
        eprintln!("dovecote-load: not finished after {timeout} s; giving up");
        std::process::exit(3);
    });
    println!(
        "{label}: {} clients x {} pushes of one message into one thread, {} pullers, over {}",
        options.clients,
        options.pushes,
        options.pullers,
        options.urls.join(", ")
    );
    let report = match run(&options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("dovecote-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let v = &report.verdict;
    println!(
        "{} of {} pushes acked in {:.2} s: {:.0} pushes/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        report.acked,
        report.planned,
        report.elapsed.as_secs_f64(),
        report.pushes_per_second(),
        ms(report.latency(0.50)),
        ms(report.latency(0.99)),
        ms(report.latency(1.0)),
    );
    println!(
        "lost {}, duplicated {}, out of order {}, skipped {}, mismatched {}, unknown {}, page errors {}, \
         repeats answered differently {}, instances' feeds {}; errors {}, unexpected answers {}; \
         {} pulls, final feed {} changes",
        v.lost,
        v.duplicated,
        v.out_of_order,
        v.skipped,
        v.mismatched,
        v.unknown,
        v.page_errors,
        v.repeats_differ,
        if v.feeds_differ { "DIFFER" } else { "agree" },
        report.errors,
        report.bad_answers,
        report.pulls,
        report.feed_len,
    );
    for sample in &report.error_samples {
        println!("  {sample}");
    }
    println!(
        "summary label={label} instances={} acked={} planned={} seconds={:.2} pushes_per_s={:.0} \
         p50_ms={:.1} p99_ms={:.1} max_ms={:.1} lost={} duplicated={} out_of_order={} skipped={} \
         other={} pulls={} passed={}",
        report.instances,
        report.acked,
        report.planned,
        report.elapsed.as_secs_f64(),
        report.pushes_per_second(),
        ms(report.latency(0.50)),
        ms(report.latency(0.99)),
        ms(report.latency(1.0)),
        v.lost,
        v.duplicated,
        v.out_of_order,
        v.skipped,
        report.errors
            + report.bad_answers
            + v.mismatched
            + v.unknown
            + v.page_errors
            + v.repeats_differ
            + u64::from(v.feeds_differ),
        report.pulls,
        report.passed(),
    );
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        println!("FAIL: see the counts above");
        ExitCode::FAILURE
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}
