//! Maintenance services that run beside the workers.

pub mod rescue;

pub use rescue::{RescueReport, Rescuer, RescuerConfig, DEFAULT_RESCUE_INTERVAL};
