//! Integration tests: one binary, one module per surface. Every test gets a
//! database of its own: a SQLite file in a temporary directory, or a PostgreSQL
//! database created on `TEST_DATABASE_URL` and dropped afterwards.

mod cli;
mod clickhouse;
mod common;
mod configuration;
mod dashboard;
mod exposure;
mod hardening;
mod history;
mod hostile_input;
mod hours;
mod http;
mod job;
mod memory;
mod operations;
mod percentiles;
mod pool;
mod purge;
mod reliability;
mod report;
mod sketches;
mod store;
mod typescript;
