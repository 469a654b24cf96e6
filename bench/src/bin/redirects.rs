//! `_redirects` and `_headers` at scale, in process: compile time and memory of a
//! 10,000-rule `_redirects` and a 1,000-block `_headers`, and the cost of one rule lookup with
//! 10 rules vs 10,000 (2,000 static, the rest placeholders and splats) on a path that matches
//! no rule, one that matches the last rule, and a plain file (shadowing: only forced rules are
//! looked at). The lookup is the only per-request work the rules add to a request.
//!
//! `target/release/redirects [ITERATIONS]` (default 200,000 lookups per case and round).

use std::hint::black_box;
use std::time::{Duration, Instant};

use statiko_common::headers_file::HeaderRules;
use statiko_common::redirects::Redirects;

/// `n` rules: a fifth static, the rest alternating placeholders and splats; the last rule is a
/// splat under its own prefix.
fn redirects_text(n: usize) -> String {
    let statics = n / 5;
    let mut text = String::new();
    for i in 0..statics {
        text.push_str(&format!("/static/page-{i} /new/page-{i} 301\n"));
    }
    for i in statics..n {
        if i % 2 == 0 {
            text.push_str(&format!("/p{i}/:year/:slug /posts{i}/:year/:slug 302\n"));
        } else {
            text.push_str(&format!("/s{i}/* /splat{i}/:splat 200\n"));
        }
    }
    text
}

fn headers_text(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "/section{i}/*\n  X-Section: {i}\n  Cache-Control: public, max-age=60\n"
        ));
    }
    text
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// The median over 5 rounds of the time per lookup, in nanoseconds.
fn per_lookup(redirects: &Redirects, path: &str, is_file: bool, iterations: u32) -> f64 {
    let mut rounds: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                black_box(redirects.find(black_box(path), None, |_| is_file));
            }
            started.elapsed()
        })
        .collect();
    rounds.sort_unstable();
    rounds[2].as_secs_f64() * 1e9 / f64::from(iterations)
}

#[expect(clippy::print_stdout)]
fn main() {
    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);

    let text = redirects_text(10_000);
    let before = rss_kib();
    let started = Instant::now();
    let big = Redirects::parse(text.as_bytes()).expect("10,000 rules");
    let parse = started.elapsed();
    let grown = rss_kib().saturating_sub(before);
    println!(
        "_redirects: 10,000 rules ({} KiB of text) compiled in {:.1} ms, +{grown} KiB RSS",
        text.len() / 1024,
        parse.as_secs_f64() * 1e3
    );
    let text = headers_text(1_000);
    let before = rss_kib();
    let started = Instant::now();
    let headers = HeaderRules::parse(text.as_bytes()).expect("1,000 blocks");
    let parse = started.elapsed();
    println!(
        "_headers: 1,000 blocks compiled in {:.1} ms, +{} KiB RSS",
        parse.as_secs_f64() * 1e3,
        rss_kib().saturating_sub(before)
    );
    black_box(&headers);

    let small = Redirects::parse(redirects_text(10).as_bytes()).expect("10 rules");
    println!("\nns per lookup (median of 5 rounds of {iterations}):");
    println!(
        "{:<26} {:>10} {:>12} {:>8}",
        "case", "10 rules", "10,000 rules", "ratio"
    );
    for (case, small_path, big_path, is_file) in [
        (
            "no rule matches",
            "/nothing/here/at/all",
            "/nothing/here/at/all",
            false,
        ),
        ("matches the last rule", "/s9/a/b", "/s9999/a/b", false),
        (
            "plain file (shadowed)",
            "/assets/app.js",
            "/assets/app.js",
            true,
        ),
    ] {
        let a = per_lookup(&small, small_path, is_file, iterations);
        let b = per_lookup(&big, big_path, is_file, iterations);
        println!("{case:<26} {a:>10.0} {b:>12.0} {:>8.2}", b / a);
    }
}
