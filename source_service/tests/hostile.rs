//! Hostile clients against the source binary (SPEC §6): the cases are
//! shared with the target's tests.

#[path = "../../http_server/tests/hostile/cases.rs"]
mod cases;

use cases::Kind;

const SOURCE: Kind = Kind {
    bin: env!("CARGO_BIN_EXE_source_service"),
    env: &[("SOURCE_PRELOAD", "20000"), ("SOURCE_SEED", "1")],
    addr_var: "SOURCE_ADDR",
    addr_marker: "listening on http://",
    big_path: "/users/changes?since=0&limit=10000",
};

#[test]
fn huge_content_length_kills_nothing() {
    cases::huge_content_length_kills_nothing(&SOURCE);
}

#[test]
fn announced_unsent_bodies_park_nothing() {
    cases::announced_unsent_bodies_park_nothing(&SOURCE);
}

#[test]
fn a_pipelining_client_that_never_reads_holds_nothing() {
    cases::a_pipelining_client_that_never_reads_holds_nothing(&SOURCE);
}

#[test]
fn six_hundred_idle_connections_at_1024_descriptors() {
    cases::six_hundred_idle_connections_at_1024_descriptors(&SOURCE);
}

#[test]
fn a_256_mib_header_line_is_cut_off() {
    cases::a_256_mib_header_line_is_cut_off(&SOURCE);
}

#[test]
fn a_reconnecting_client_that_never_reads_holds_nothing() {
    cases::a_reconnecting_client_that_never_reads_holds_nothing(&SOURCE);
}

#[test]
fn thirty_two_clients_wait_little_with_8_workers() {
    cases::thirty_two_clients_wait_little(&Kind {
        env: &[("SOURCE_THREADS", "8")],
        ..SOURCE
    });
}

#[test]
fn a_trickling_client_is_cut_off_after_10_s() {
    cases::a_trickling_client_is_cut_off_after_10_s(&SOURCE);
}

#[test]
fn a_missing_or_repeated_host_is_400() {
    cases::a_missing_or_repeated_host_is_400(&SOURCE);
}

#[test]
fn a_flood_of_idle_connections_is_held_to_the_cap() {
    cases::a_flood_of_idle_connections_is_held_to_the_cap(&SOURCE);
}
