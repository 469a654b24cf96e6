//! `statiko-edge` (being wired).
fn main() {}
