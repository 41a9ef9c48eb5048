//! Hostile clients against the target binary (SPEC §6): the cases are
//! shared with the source's tests.

#[path = "../../http_server/tests/hostile/cases.rs"]
mod cases;

use cases::Kind;

/// Nothing listens on port 1: the target waits for its database (and
/// creates none) while its metrics server runs, which is what is tested.
const TARGET: Kind = Kind {
    bin: env!("CARGO_BIN_EXE_target_service"),
    env: &[
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
        ("SOURCE_SERVICE_URL", "http://127.0.0.1:1/users/changes"),
    ],
    addr_var: "METRICS_ADDR",
    addr_marker: "metrics and health on http://",
    big_path: "/metrics",
};

#[test]
fn huge_content_length_kills_nothing() {
    cases::huge_content_length_kills_nothing(&TARGET);
}

#[test]
fn announced_unsent_bodies_park_nothing() {
    cases::announced_unsent_bodies_park_nothing(&TARGET);
}

#[test]
fn a_pipelining_client_that_never_reads_holds_nothing() {
    cases::a_pipelining_client_that_never_reads_holds_nothing(&TARGET);
}

#[test]
fn six_hundred_idle_connections_at_1024_descriptors() {
    cases::six_hundred_idle_connections_at_1024_descriptors(&TARGET);
}

#[test]
fn a_256_mib_header_line_is_cut_off() {
    cases::a_256_mib_header_line_is_cut_off(&TARGET);
}

#[test]
fn a_reconnecting_client_that_never_reads_holds_nothing() {
    cases::a_reconnecting_client_that_never_reads_holds_nothing(&TARGET);
}

#[test]
fn thirty_two_clients_wait_little() {
    cases::thirty_two_clients_wait_little(&TARGET);
}

#[test]
fn a_trickling_client_is_cut_off_after_10_s() {
    cases::a_trickling_client_is_cut_off_after_10_s(&TARGET);
}

#[test]
fn a_missing_or_repeated_host_is_400() {
    cases::a_missing_or_repeated_host_is_400(&TARGET);
}

#[test]
fn a_flood_of_idle_connections_is_held_to_the_cap() {
    cases::a_flood_of_idle_connections_is_held_to_the_cap(&TARGET);
}
