//! Integration tests: one binary, a real Postgres, real servers on random ports.

mod admin;
mod health;
mod process;
mod support;
mod webhooks;
